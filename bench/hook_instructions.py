"""Claim: gpulens run's automatic step detection costs the training process N instructions per step (and
track()'s hand-placed hooks M), counted, not timed.

bench/hook_cost.py times the same loops, and on a shared 2-core VM its 95 % intervals can span more than the
whole cost (2026-12-06: automatic steps 93 µs [24-119] one run, 146 µs [81-206] the next, on the same code).
Counting instructions under valgrind (callgrind) gives the same number on a quiet machine and a busy one.

Each arm runs the tiny real loop of bench/hook_cost.py (Linear(4, 4), SGD, a DataLoader) -- or, for track()'s
hot path, hook_cost.py's empty loop with and without the hooks -- in a process of its own under callgrind,
at two loop lengths; the difference over the difference in steps is the loop's count per
step, whatever importing torch and starting a run cost.  Every thread counts (the writer's SQLite work too).
The writer flushes once, at close, and does not compact: under valgrind a run is ~50x slower, so its timed
work (a flush every 0.5 s) would come ~50x as often per step as in a real run.  Loop lengths are multiples of
512 rows so both lengths prepare the same INSERT statements.

Needs valgrind (``apt-get install valgrind``); a few minutes per arm.
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ARMS = ("plain", "detected", "tracked", "empty", "hot")
#: The issue's line for automatic steps: 15 µs where track()'s hot path took 5.2 µs (bench/hook_cost.py).
TARGET_RATIO = 15 / 5.2


def child(arm: str, n: int) -> None:
    """One arm, one length: the loop of hook_cost.py (runs under callgrind)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import torch
    from hook_cost import auto_loop, loop, tracked_loop

    import gpulens

    from gpulens.profiler.record.recorder import SamplingConfig
    from gpulens.profiler.store import writer

    writer.COMPACT_EVERY_S = float("inf")
    init = writer.RunWriter.__init__

    def one_flush(self, path, meta, flush_interval=0.5):  # type: ignore[no-untyped-def]
        init(self, path, meta, flush_interval=1e9)

    writer.RunWriter.__init__ = one_flush  # type: ignore[method-assign]
    quiet = SamplingConfig(devices=False, host=False)
    with tempfile.TemporaryDirectory() as tmp:
        if arm == "tracked":
            tracked_loop(n, tmp, quiet)
        elif arm in ("empty", "hot"):  # hook_cost.py's hot path: track()'s hooks around an empty loop
            loss = torch.tensor(1.2345)
            if arm == "empty":
                loop(None, n, loss)
            else:
                with gpulens.track("hook-cost", runs_dir=tmp, quiet=True, sampling=quiet, profile=False,
                                   count_flops=False, advise=False) as run:
                    loop(run, n, loss)
        else:
            auto_loop(n, tmp if arm == "detected" else None, quiet)


def count(arm: str, n: int, out: Path) -> int:
    """Instructions callgrind counted for one arm at one length."""
    log = out / f"{arm}-{n}.log"
    subprocess.run(["valgrind", "--tool=callgrind", f"--callgrind-out-file={out / f'{arm}-{n}.cg'}",
                    sys.executable, __file__, "--child", arm, str(n)], stdout=subprocess.DEVNULL,
                   stderr=log.open("w"), check=True, env={**os.environ, "PYTHONHASHSEED": "0"})
    found = re.search(r"Collected : (\d+)", log.read_text())
    if not found:
        raise SystemExit(f"callgrind gave no count for {arm} {n}: see {log}")
    return int(found.group(1))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, nargs=2, default=[1024, 2048], metavar=("SHORT", "LONG"))
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 2)
    ap.add_argument("--arms", nargs="+", choices=ARMS, default=list(ARMS),
                    help="measure only these (each figure needs its arm and its baseline)")
    ap.add_argument("--child", nargs=2, metavar=("ARM", "N"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.child[0], int(args.child[1]))
        return
    if shutil.which("valgrind") is None:
        raise SystemExit("bench/hook_instructions.py needs valgrind (apt-get install valgrind)")
    short, long = args.steps
    with tempfile.TemporaryDirectory() as tmp, ThreadPoolExecutor(args.jobs) as pool:
        jobs = {(arm, n): pool.submit(count, arm, n, Path(tmp)) for arm in args.arms for n in (short, long)}
        per_step = {arm: (jobs[arm, long].result() - jobs[arm, short].result()) / (long - short) for arm in args.arms}
    extra = {arm: per_step[arm] - per_step[base] for arm, base in
             (("tracked", "plain"), ("detected", "plain"), ("hot", "empty")) if arm in per_step and base in per_step}
    if "plain" in per_step:
        print(f"the loop alone: {per_step['plain'] / 1e3:.0f} k instructions per step")
    for arm, label in (("tracked", "track() with hand-placed phases"), ("detected", "gpulens run's automatic steps"),
                       ("hot", "track()'s hot path (hook_cost.py's empty loop with its phases and step)")):
        if arm in extra:
            share = f" ({extra[arm] / per_step['plain'] * 100:.0f} % of the loop's)" if arm != "hot" else ""
            print(f"{label}: +{extra[arm] / 1e3:.0f} k instructions per step{share}")
    if "detected" in extra and "tracked" in extra:
        print(f"automatic steps cost {extra['detected'] / extra['tracked']:.2f}x track()'s hand-placed hooks in the "
              f"same loop, counted")
    if "detected" in extra and "hot" in extra:
        print(f"automatic steps cost {extra['detected'] / extra['hot']:.2f}x track()'s hot path, counted (the issue's "
              f"line: <= {TARGET_RATIO:.1f}x)")

if __name__ == "__main__":
    main()
