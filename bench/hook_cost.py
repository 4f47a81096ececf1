"""Claim: the per-step hot path of track() costs a few µs (well under 1% of a 5 ms step); gpulens run's
automatic step detection costs more (torch's hooks on the model, backward, optimizer and DataLoader).

Times N iterations of a loop doing no training work -- only the hooks:
loader wrapper, three phases, ``run.step(loss=...)`` -- against the same loop
without hooks, with the samplers off so only the training-thread cost is
counted; and a tiny real training loop (Linear(4, 4), SGD, a DataLoader) with
and without automatic step detection.  Every arm is measured in interleaved
pairs (order shuffled per pair) and reported as the median difference with a
95 % bootstrap interval.  With ``--device cuda`` the loss is a CUDA tensor
(async copy + event) and GPU phase timing is active.

Two figures for track(): the hot path alone (profiler windows and FLOP
counting off), and the same loop at default settings, where the per-window
cost of torch.profiler (start, stop, export -- on steps flagged as profiled) is
amortised over every 500 steps.
"""
from __future__ import annotations

import argparse
import contextlib
import random
import statistics
import tempfile
import time

import torch

import gpulens
from gpulens.profiler.record.recorder import SamplingConfig
from stats import bootstrap_ci


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


def tracked_loop(n: int, runs_dir: str, quiet) -> float:
    """The same tiny real loop with the phases and the step marked by hand (``track()``)."""
    model = torch.nn.Linear(4, 4)
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    loader = torch.utils.data.DataLoader([torch.ones(2, 4)] * n, batch_size=None)
    with gpulens.track("hook-cost-track", runs_dir=runs_dir, quiet=True, sampling=quiet, profile=False,
                       count_flops=False, advise=False) as run:
        fwd, bwd, step = run.phase("forward"), run.phase("backward"), run.phase("optimizer")
        t0 = time.perf_counter()
        for i, x in enumerate(run.loader(loader)):
            if i == 10:
                t0 = time.perf_counter()
            opt.zero_grad()
            with fwd:
                loss = model(x).sum()
            with bwd:
                loss.backward()
            with step:
                opt.step()
            run.step(loss=loss.detach())
        return (time.perf_counter() - t0) / (n - 10)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--pairs", type=int, default=15, help="interleaved (baseline, hooked) pairs per claim")
    args = ap.parse_args()
    if args.device == "cuda":
        torch.zeros(1, device="cuda")  # initialise CUDA so track() attaches its GPU timer
    loss = torch.tensor(1.2345, device=args.device)
    quiet = SamplingConfig(devices=False, host=False)
    rng = random.Random(0)
    hot, defaults, auto, tracked = [], [], [], []  # per pair: hooked minus baseline, seconds per step
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(args.pairs):
            arms = ["base", "hot", "defaults"]
            rng.shuffle(arms)
            got = {}
            for arm in arms:
                if arm == "base":
                    got[arm] = loop(None, args.steps, loss)
                    continue
                extra = {"profile": False, "count_flops": False} if arm == "hot" else {}
                with gpulens.track("hook-cost", runs_dir=tmp, quiet=True, sampling=quiet, **extra) as run:
                    run.step()  # attach the CUDA timer (checked on step) before timing
                    time.sleep(1.1)
                    run.step()
                    got[arm] = loop(run, args.steps, loss)
            hot.append(got["hot"] - got["base"])
            defaults.append(got["defaults"] - got["base"])
            loops = ["plain", "detected", "tracked"]
            rng.shuffle(loops)
            times = {name: tracked_loop(args.steps // 5, tmp, quiet) if name == "tracked" else
                     auto_loop(args.steps // 5, tmp if name == "detected" else None, quiet) for name in loops}
            auto.append(times["detected"] - times["plain"])
            tracked.append(times["tracked"] - times["plain"])
    for label, values in (("track() hot path", hot), ("track() at defaults (windows every 500 steps)", defaults),
                          ("track() with hand-placed phases, tiny real loop", tracked),
                          ("gpulens run's automatic steps, the same loop", auto)):
        mid, lo, hi = bootstrap_ci([v * 1e6 for v in values])
        print(f"{label}: {mid:.1f} µs per step [95% CI {lo:.1f}-{hi:.1f}, {len(values)} pairs] = "
              f"{mid / 5e3 * 100:.2f}% of a 5 ms step")
    a, t = statistics.median(auto), statistics.median(tracked)
    print(f"automatic steps cost {a / t:.1f}x track()'s hand-placed hooks in the same loop (same machine, same run)")


if __name__ == "__main__":
    main()
