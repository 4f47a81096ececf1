"""Claim: the advisor's verdict on a run does not depend on what else the machine was doing.

Runs tests/scripts/char_gpt.py (a nanoGPT-like CPU loop: Python-heavy,
AdamW, evaluation every N iterations) under ``gpulens run`` ``--runs`` times
on a quiet machine and ``--runs`` times while CPU burners (one per core,
started outside the training process) load the host, alternating the two
arms, and prints each run's verdict: the suggestions of medium or high
severity about the run itself.  ``host_contention`` -- a true statement about
the loaded machine -- is shown apart and is expected in the loaded arm only.

    python bench/advice_stability.py --runs 10
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "tests" / "scripts" / "char_gpt.py"
GPULENS = str(Path(sys.executable).with_name("gpulens"))
BURN = "import time, sys\nend = time.time() + float(sys.argv[1])\nwhile time.time() < end:\n    pass\n"


def burners(tmp: Path, seconds: float) -> list[int]:
    script = tmp / "cpu_burner.py"
    script.write_text(BURN)
    out = []
    for _ in range(os.cpu_count() or 1):
        r = subprocess.run(["bash", "-c", f"'{sys.executable}' '{script}' {seconds} >/dev/null 2>&1 & echo $!"],
                           capture_output=True, text=True, check=True)
        out.append(int(r.stdout))
    return out


def one_run(tmp: Path, name: str, iters: int) -> tuple[list[str], list[str], list[str]]:
    runs = tmp / "runs"
    subprocess.run([GPULENS, "run", "--runs-dir", str(runs), "--run-id", name, "--quiet", "--no-advise",
                    str(SCRIPT), "--max-iters", str(iters)], check=True, capture_output=True)
    out = subprocess.run([GPULENS, "advise", str(runs / name), "--json"], check=True, capture_output=True, text=True)
    advice = json.loads(out.stdout)
    own = [s["id"] for s in advice["suggestions"] if s["severity"] != "low" and s["id"] != "host_contention"]
    machine = [s["id"] for s in advice["suggestions"] if s["id"] == "host_contention"]
    low = [s["id"] for s in advice["suggestions"] if s["severity"] == "low" and s["id"] != "host_contention"]
    return sorted(own), machine, sorted(low)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=10, help="runs per arm")
    ap.add_argument("--iters", type=int, default=150)
    args = ap.parse_args()
    verdicts: dict[str, list[tuple[str, ...]]] = {"quiet": [], "loaded": []}
    contention: Counter[str] = Counter()
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        for i in range(2 * args.runs):
            arm = "quiet" if i % 2 == 0 else "loaded"
            pids = burners(tmp, 600) if arm == "loaded" else []
            try:
                time.sleep(0.5 if pids else 0)
                own, machine, low = one_run(tmp, f"{arm}-{i}", args.iters)
            finally:
                for pid in pids:
                    try:
                        os.kill(pid, 9)
                    except ProcessLookupError:
                        pass
            verdicts[arm].append(tuple(own))
            contention[arm] += bool(machine)
            print(f"{arm:>6} run {i // 2 + 1:>2}: {', '.join(own) or '(nothing medium or high)'}"
                  f"{'   low: ' + ', '.join(low) if low else ''}"
                  f"{'   [+ host_contention]' if machine else ''}", flush=True)
    every = Counter(v for arm in verdicts.values() for v in arm)
    print()
    for arm, vs in verdicts.items():
        print(f"{arm}: {len(set(vs))} distinct verdict(s) in {len(vs)} runs; host_contention in {contention[arm]}")
    common, n = every.most_common(1)[0]
    print(f"the same verdict in {n} of {2 * args.runs} runs: {', '.join(common) or '(nothing medium or high)'}")


if __name__ == "__main__":
    main()
