"""Claim: ``gpulens run`` costs unmodified scripts <= 2 % of their iteration time (ratio <= 1.02).

Two scripts written the way public examples are (tests/scripts/): a
Python-heavy nanoGPT-like character GPT (no DataLoader, many small ops) and
a residual conv net fed by DataLoader workers.  Each pair runs the script
plainly and under ``gpulens run`` at default settings (samplers, automatic
steps, profiler window, FLOP count), in alternating order; a pair's ratio
is the median iteration time under gpulens over the plain one (the first
iterations are left out of both: start-up).  Printed: the median ratio over
pairs with a 95 % bootstrap interval, per workload and thread count.
"""
from __future__ import annotations

import argparse
import statistics

from foreign_scripts import WORKLOADS, arms, clean_env, iteration_times, runs_dir
from stats import fmt_ci

SKIP = 15  # start-up iterations left out of both arms


def pair(workload: str, iters: int, root: str, threads: int | None, flip: bool) -> tuple[float, float]:
    plain, recorded = arms(workload, iters, root)
    env = clean_env(threads)
    out = {}
    for name, argv in ((("gpulens", recorded), ("plain", plain)) if flip else (("plain", plain), ("gpulens", recorded))):
        out[name] = statistics.median(iteration_times(argv, env)[SKIP:])
    return out["plain"], out["gpulens"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", type=int, default=12)
    ap.add_argument("--iters", type=int, default=120, help="iterations per process")
    ap.add_argument("--workloads", default=",".join(WORKLOADS))
    ap.add_argument("--threads", default="1,0", help="torch/OpenMP threads per arm, 0 = the default (all cores)")
    args = ap.parse_args()
    with runs_dir() as root:
        for workload in args.workloads.split(","):
            for threads in (int(t) for t in args.threads.split(",")):
                ratios, plain_ms = [], []
                for i in range(args.pairs):
                    p, g = pair(workload, args.iters, root, threads or None, flip=bool(i % 2))
                    ratios.append(g / p)
                    plain_ms.append(p * 1e3)
                label = f"{workload}, {'default' if not threads else threads} thread(s), " \
                        f"plain median iteration {statistics.median(plain_ms):.1f} ms"
                print(fmt_ci(f"{label}; gpulens run / plain", ratios, target=1.02), flush=True)


if __name__ == "__main__":
    main()
