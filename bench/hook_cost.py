"""Claim: the per-step hot path of track() costs a few tens of µs (under 1% of a 5 ms step).

Times N iterations of a loop doing no training work -- only the hooks:
loader wrapper, three phases, ``run.step(loss=...)`` -- against the same loop
without hooks (baseline measured in the same run), with the samplers off so
only the training-thread cost is counted.  With ``--device cuda`` the loss is a
CUDA tensor (async copy + event) and GPU phase timing is active.

Two figures: the hot path alone (profiler windows and FLOP counting off), and
the same loop at default settings, where the per-window cost of torch.profiler
(start, stop, export -- on steps flagged as profiled) is amortised over every
500 steps.
"""
from __future__ import annotations

import argparse
import contextlib
import statistics
import tempfile
import time

import torch

import gpulens
from gpulens.profiler.record.recorder import SamplingConfig


def loop(run, n: int, loss) -> float:
    items = list(range(n))
    t0 = time.perf_counter()
    if run is None:
        null = contextlib.nullcontext()
        for _ in items:
            with null:
                pass
            with null:
                pass
            with null:
                pass
    else:
        fwd, bwd, opt = run.phase("forward"), run.phase("backward"), run.phase("optimizer")
        for _ in run.loader(items):
            with fwd:
                pass
            with bwd:
                pass
            with opt:
                pass
            run.step(loss=loss)
    return (time.perf_counter() - t0) / n


def auto_loop(n: int, runs_dir: str | None, quiet) -> float:
    """An unmodified tiny training loop; with ``runs_dir`` under gpulens run's step detection."""
    model = torch.nn.Linear(4, 4)
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    loader = torch.utils.data.DataLoader([torch.ones(2, 4)] * n, batch_size=None)
    run = None
    if runs_dir is not None:
        run = gpulens.track("hook-cost-auto", runs_dir=runs_dir, quiet=True, sampling=quiet, auto=True,
                            profile=False, count_flops=False, advise=False)
    try:
        t0 = time.perf_counter()
        for i, x in enumerate(loader):
            if i == 10:  # after the one-off root-module scans (gc walk) of the first steps
                t0 = time.perf_counter()
            opt.zero_grad()
            model(x).sum().backward()
            opt.step()
        return (time.perf_counter() - t0) / (n - 10)
    finally:
        if run is not None:
            run.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--steps", type=int, default=5000)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    if args.device == "cuda":
        torch.zeros(1, device="cuda")  # initialise CUDA so track() attaches its GPU timer
    loss = torch.tensor(1.2345, device=args.device)
    quiet = SamplingConfig(devices=False, host=False)
    base, hooked, defaults = [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(args.repeats):
            base.append(loop(None, args.steps, loss))
            for arm, extra in ((hooked, {"profile": False, "count_flops": False}), (defaults, {})):
                with gpulens.track("hook-cost", runs_dir=tmp, quiet=True, sampling=quiet, **extra) as run:
                    run.step()  # attach the CUDA timer (checked on step) before timing
                    time.sleep(1.1)
                    run.step()
                    arm.append(loop(run, args.steps, loss))
    auto_base, auto = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(args.repeats):
            auto_base.append(auto_loop(args.steps // 5, None, quiet))
            auto.append(auto_loop(args.steps // 5, tmp, quiet))
    b, h, d = statistics.median(base), statistics.median(hooked), statistics.median(defaults)
    ab, aa = statistics.median(auto_base), statistics.median(auto)
    print(f"device {args.device}: baseline loop {b * 1e6:.2f} µs/step, hot path {h * 1e6:.2f} µs/step, "
          f"defaults (profiler windows every 500 steps) {d * 1e6:.2f} µs/step")
    print(f"hook cost: {(h - b) * 1e6:.1f} µs per step = {(h - b) / 5e-3 * 100:.2f}% of a 5 ms step; "
          f"with profiler windows amortised {(d - b) * 1e6:.1f} µs per step")
    print(f"gpulens run (automatic steps), tiny real loop: plain {ab * 1e6:.1f} µs/step, detected "
          f"{aa * 1e6:.1f} µs/step: {(aa - ab) * 1e6:.1f} µs per step = {(aa - ab) / 5e-3 * 100:.2f}% of a 5 ms step")


if __name__ == "__main__":
    main()
