"""Claim: the samplers cost well under 1% of a core at default rates.

Runs the real Recorder (NVML where present, psutil) idle for a few seconds at
the default 10 Hz and at 100 Hz and prints each task's wall and CPU time per
tick and the share of one core its CPU time takes (NVML calls spend most of
their wall time waiting in the driver with the GIL released).  Baseline in the same run: an empty task on
the same scheduler (the scheduler's own cost).
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from gpulens.profiler.record.recorder import Recorder, SamplingConfig
from gpulens.profiler.record.sampling import SamplerThread, Task


def measure(interval: float, seconds: float) -> dict[str, dict[str, float]]:
    with tempfile.TemporaryDirectory() as tmp:
        cfg = SamplingConfig(device_interval=interval, host_interval=interval)
        rec = Recorder(Path(tmp) / "rank-0.db", {"name": "bench"}, cfg)
        time.sleep(seconds)
        rec.close()
        return rec.sampler_cost()


def empty_task(interval: float, seconds: float) -> float:
    task = Task("empty", interval, lambda t: None)
    thread = SamplerThread("bench", [task])
    thread.start()
    time.sleep(seconds)
    thread.stop()
    return task.busy_s / max(task.ticks, 1)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=5.0)
    args = ap.parse_args()
    print(f"{'rate':>6} {'task':<10} {'ticks':>6} {'wall µs/tick':>13} {'CPU µs/tick':>12} {'% of a core':>12}")
    for interval in (0.1, 0.01):
        base = empty_task(interval, 1.0)
        cost = measure(interval, args.seconds)
        total = 0.0
        for name, c in cost.items():
            share = c["cpu_s_per_tick"] * c["ticks"] / args.seconds * 100
            total += share
            print(f"{1 / interval:>4.0f}Hz {name:<10} {c['ticks']:>6} {c['wall_s_per_tick'] * 1e6:>13.1f} "
                  f"{c['cpu_s_per_tick'] * 1e6:>12.1f} {share:>11.3f}%")
        print(f"{1 / interval:>4.0f}Hz {'all':<10} {'':>6} {'':>13} {'':>12} {total:>11.3f}%   "
              f"(empty-task baseline {base * 1e6:.1f} µs/tick)")


if __name__ == "__main__":
    main()
