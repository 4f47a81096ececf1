"""Record a run whose GPU activity is known to the millisecond, to check how GPM readings line up in time.

Each step waits a random 10-120 ms with the GPU idle (data wait), then runs a random number of bf16
matmuls and synchronises inside ``forward``: the SMs are busy exactly while the host is in forward.
Comparing each GPM reading with the busy share of the interval it claims to cover shows whether the
readings lag, lead or smear (tests/test_gpu_real.py::test_sm_activity_by_phase_follows_where_the_kernels_ran
asserts the split; this keeps the raw run for analysis).

    python tools/gpm_timing_probe.py --out $OUT/runs --seconds 20
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

import gpulens


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--gpm-interval", type=float, default=None, help="GPM sampling interval (s)")
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    a = torch.randn(4096, 4096, device="cuda", dtype=torch.bfloat16)

    def batches():
        while True:
            time.sleep(float(rng.uniform(0.01, 0.12)))
            yield a

    sampling = gpulens.SamplingConfig(gpm_interval=args.gpm_interval) if args.gpm_interval else None
    name = f"gpm-timing-{args.gpm_interval or 'default'}"
    deadline = time.monotonic() + args.seconds
    with gpulens.track(name, run_id=name, runs_dir=args.out, quiet=True, advise=False, profile=False,
                       sampling=sampling) as run:
        for x in run.loader(batches()):
            with run.phase("forward"):
                for _ in range(int(rng.integers(20, 120))):
                    x = x @ a
                torch.cuda.synchronize()
            run.step(samples=4096)
            if time.monotonic() > deadline:
                break


if __name__ == "__main__":
    main()
