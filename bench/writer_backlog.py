"""Claim: at any step rate a SIGKILL loses under a second of steps, and memory stays bounded.

A loop does nothing but a little Python work and ``run.step()`` -- the
fastest steps there can be -- for ``--seconds``, then is killed with
SIGKILL.  Printed per work level: the loop's own step rate without gpulens
(baseline, same run) and with it, how many steps per second reached the
database, the seconds between the last recorded step and the kill, the
steps dropped from the full backlog (counted in the run's ``records_lost``),
and the recorded process' peak RSS (the same at every rate: the backlog is bounded).
"""
from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
import tempfile
import time

from gpulens.profiler import open_run

CHILD = """
import json, sys, time
work, seconds, root = int(sys.argv[1]), float(sys.argv[2]), sys.argv[3]
def hwm():  # this process' peak RSS (ru_maxrss would carry the parent's over from before exec)
    return next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM"))
run = None
if root != "-":
    import gpulens
    run = gpulens.track("backlog", runs_dir=root, quiet=True, advise=False, profile=False)
n, t0 = 0, time.perf_counter()
end = t0 + seconds
while True:
    for _ in range(work):
        pass
    if run is not None:
        run.step()
    n += 1
    if n % 1000 == 0 and time.perf_counter() > end:
        if run is None:
            break
        print(json.dumps({"path": str(run.path), "rate": n / (time.perf_counter() - t0),
                          "rss_kib": hwm()}), flush=True)
        end = float("inf")
print(json.dumps({"rate": n / (time.perf_counter() - t0), "rss_kib": hwm()}), flush=True)
"""


def plain(work: int, seconds: float) -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD, str(work), str(seconds), "-"], capture_output=True, text=True,
                         check=True).stdout
    return json.loads(out)


def recorded(work: int, seconds: float, root: str) -> dict:
    proc = subprocess.Popen([sys.executable, "-c", CHILD, str(work), str(seconds), root], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)
    line = json.loads(proc.stdout.readline())  # the loop has run `seconds` and goes on
    t_kill = time.time()
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    run = open_run(line["path"])
    steps = run.steps()
    line.update(kept=len(steps) / max(1e-9, steps.t_end[-1] - steps.t_start[0]) if len(steps) else 0.0,
                loss_s=t_kill - float(steps.t_end[-1]) if len(steps) else float("inf"),
                dropped=(run.meta().get("records_lost") or {}).get("steps", 0))
    run.close()
    return line


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=12.0)
    ap.add_argument("--work", default="0,200,2000,20000", help="Python loop iterations per step (sets the rate)")
    args = ap.parse_args()
    print(f"{'work':>6} {'plain steps/s':>14} {'gpulens steps/s':>16} {'recorded/s':>11} {'loss at SIGKILL':>16} "
          f"{'dropped':>10} {'peak RSS':>10}")
    with tempfile.TemporaryDirectory() as root:
        for work in (int(w) for w in args.work.split(",")):
            base = plain(work, args.seconds)
            rec = recorded(work, args.seconds, root)
            print(f"{work:>6} {base['rate']:>14,.0f} {rec['rate']:>16,.0f} {rec['kept']:>11,.0f} "
                  f"{rec['loss_s']:>14.2f} s {rec['dropped']:>10,} {rec['rss_kib'] / 1024:>6.0f} MiB",
                  flush=True)


if __name__ == "__main__":
    main()
