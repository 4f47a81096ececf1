"""Claim: a profiler window and the FLOP count cost the user's loop a bounded, visible-once stall.

``gpulens run`` at default settings counts one step's FLOPs and records a
torch.profiler window (warm-up step 10, steps 11-13).  On the nanoGPT-like
script (tests/scripts/char_gpt.py) this prints, per iteration class, the
time under gpulens over the plain run's median iteration time (same pair,
interleaved): the FLOP-counted warm-up step, the recorded window steps, the
step that stops the profiler (the worst step), the 30 steps after it (the
trace export runs meanwhile), and the steady state.  The plain run's own
worst iteration is the baseline for "worst step".
"""
from __future__ import annotations

import argparse
import statistics

from foreign_scripts import arms, clean_env, iteration_times, runs_dir
from stats import fmt_ci

FLOPS_STEP, WINDOW = 10, (11, 12, 13)
STOP = 14  # the iteration whose start ends step 13: the profiler stops there


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", type=int, default=10)
    ap.add_argument("--iters", type=int, default=80)
    ap.add_argument("--threads", type=int, default=0, help="0: torch's default")
    args = ap.parse_args()
    rows: dict[str, list[float]] = {k: [] for k in ("flop-counted warm-up step", "recorded window steps (mean)",
                                                     "profiler stop (worst step)", "30 steps after the window (mean)",
                                                     "steady state (median)", "plain run's own worst step")}
    with runs_dir() as root:
        plain_cmd, recorded_cmd = arms("char-gpt", args.iters, root)
        env = clean_env(args.threads or None)
        for i in range(args.pairs):
            order = [plain_cmd, recorded_cmd] if i % 2 == 0 else [recorded_cmd, plain_cmd]
            times = {id(c): iteration_times(c, env) for c in order}
            plain, rec = times[id(plain_cmd)], times[id(recorded_cmd)]
            ref = statistics.median(plain[5:])
            rows["flop-counted warm-up step"].append(rec[FLOPS_STEP] / ref)
            rows["recorded window steps (mean)"].append(statistics.mean(rec[s] for s in WINDOW) / ref)
            rows["profiler stop (worst step)"].append(max(rec[5:]) / ref)
            rows["30 steps after the window (mean)"].append(statistics.mean(rec[STOP + 1:STOP + 31]) / ref)
            rows["steady state (median)"].append(statistics.median(rec[STOP + 31:]) / ref)
            rows["plain run's own worst step"].append(max(plain[5:]) / ref)
            print(f"pair {i + 1}: plain median {ref * 1e3:.1f} ms, worst under gpulens {max(rec[5:]) * 1e3:.1f} ms "
                  f"at iteration {rec.index(max(rec[5:]))}", flush=True)
    print(f"char-gpt, {args.iters} iterations, {'default' if not args.threads else args.threads} thread(s); "
          "time / plain median iteration:")
    for name, values in rows.items():
        print("  " + fmt_ci(name, values))


if __name__ == "__main__":
    main()
