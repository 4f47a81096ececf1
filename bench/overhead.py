"""Claim: track() at default settings costs <= 1% of step time (target ratio <= 1.01);
``gpulens run``'s automatic mode <= 2% (target ratio <= 1.02).

The same small CPU training loop (a 120-module MLP, 5-20 ms steps) runs
with and without ``gpulens.track()`` -- samplers, phases, loader wrapper and
per-step loss all on -- in interleaved A/B trials, so that drift of the
machine hits both arms alike.  Prints the median step time of each arm and
the ratio tracked / plain.  ``--mode auto`` runs an unmodified loop over a
DataLoader in both arms, the tracked one under the step detector ``gpulens
run`` installs (optimizer hooks, backward and DataLoader wrappers, root
module hooks: ``track(auto=True)``, the same code without the exec).
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch
import torch.nn as nn

import gpulens
from gpulens.profiler.record.recorder import SamplingConfig


#: wall time by default; --clock thread: CPU time of the training thread, which neighbours on a
#: shared VM do not inflate (the samplers' own threads are counted by bench/sampler_cost.py)
CLOCK = time.perf_counter


def make_model(width: int, blocks: int) -> nn.Module:
    layers = []
    for _ in range(blocks):
        layers += [nn.Linear(width, width), nn.LayerNorm(width), nn.ReLU()]
    return nn.Sequential(*layers, nn.Linear(width, 10))


def plain_trial(model, opt, batches) -> list[float]:
    times = []
    for x, y in batches:
        t0 = CLOCK()
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        times.append(CLOCK() - t0)
    return times


def tracked_trial(model, opt, batches, runs_dir: str, sampling=None) -> list[float]:
    times = []
    with gpulens.track("overhead-bench", runs_dir=runs_dir, quiet=True, sampling=sampling) as run:
        t0 = CLOCK()
        for x, y in run.loader(batches):
            with run.phase("forward"):
                loss = nn.functional.cross_entropy(model(x), y)
            with run.phase("backward"):
                loss.backward()
            with run.phase("optimizer"):
                opt.step()
                opt.zero_grad(set_to_none=True)
            run.step(loss=loss)
            t1 = CLOCK()
            times.append(t1 - t0)
            t0 = t1
    return times


def plain_loader_trial(model, opt, loader) -> list[float]:
    times = []
    t0 = CLOCK()
    for x, y in loader:
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        t1 = CLOCK()
        times.append(t1 - t0)
        t0 = t1
    return times


def auto_trial(model, opt, loader, runs_dir: str, sampling=None) -> list[float]:
    run = gpulens.track("overhead-bench-auto", runs_dir=runs_dir, quiet=True, sampling=sampling, auto=True,
                        advise=False)
    try:
        return plain_loader_trial(model, opt, loader)  # the loop knows nothing of gpulens
    finally:
        run.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=10, help="A/B pairs")
    ap.add_argument("--steps", type=int, default=200, help="steps per trial")
    ap.add_argument("--width", type=int, default=256)
    ap.add_argument("--blocks", type=int, default=40)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--device", default="cpu", help="cpu (the claim) or cuda (the GPU hot path)")
    ap.add_argument("--mode", choices=("track", "auto"), default="track",
                    help="track: track() with phases and run.step(); auto: an unmodified loop under gpulens run's "
                         "step detection")
    ap.add_argument("--clock", choices=("wall", "thread"), default="wall",
                    help="wall time (default) or the training thread's CPU time (steadier on a noisy VM)")
    ap.add_argument("--no-samplers", action="store_true",
                    help="tracked arm without device/host samplers: isolates the training-thread hooks")
    args = ap.parse_args()
    sampling = SamplingConfig(devices=False, host=False) if args.no_samplers else None
    global CLOCK
    CLOCK = time.thread_time if args.clock == "thread" else time.perf_counter

    torch.manual_seed(0)
    model = make_model(args.width, args.blocks).to(args.device)
    n_modules = sum(1 for _ in model.modules())
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    batches = [(torch.randn(args.batch, args.width, device=args.device),
                torch.randint(0, 10, (args.batch,), device=args.device)) for _ in range(args.steps)]
    loader = torch.utils.data.DataLoader(batches, batch_size=None)  # the list's batches, through a DataLoader
    plain_trial(model, opt, batches[:20])  # warm-up
    plain_medians, tracked_medians = [], []
    with tempfile.TemporaryDirectory() as runs_dir:
        for i in range(args.trials):
            arms = [("plain", None), ("tracked", runs_dir)]
            if i % 2:
                arms.reverse()
            for arm, rd in arms:
                if arm == "plain" and args.mode == "auto":
                    plain_medians.append(statistics.median(plain_loader_trial(model, opt, loader)[5:]))
                elif arm == "plain":
                    plain_medians.append(statistics.median(plain_trial(model, opt, batches)))
                elif args.mode == "auto":
                    tracked_medians.append(statistics.median(auto_trial(model, opt, loader, rd, sampling)[5:]))
                else:
                    # skip the first steps of each tracked trial: samplers' start-up
                    tracked_medians.append(statistics.median(tracked_trial(model, opt, batches, rd, sampling)[5:]))
                if args.device.startswith("cuda"):
                    torch.cuda.synchronize()  # no queued work bleeds into the other arm
    a = statistics.median(plain_medians)
    b = statistics.median(tracked_medians)
    pair_ratios = sorted(t / p for t, p in zip(tracked_medians, plain_medians))
    q1, q3 = pair_ratios[len(pair_ratios) // 4], pair_ratios[(3 * len(pair_ratios)) // 4]
    print(f"model: {n_modules} modules, batch {args.batch}, device {args.device}; "
          f"{args.trials} A/B trials x {args.steps} steps"
          f"{'; samplers off' if args.no_samplers else '; default settings'}; mode {args.mode}; clock {args.clock}")
    print(f"plain   median step {a * 1e3:.3f} ms")
    print(f"tracked median step {b * 1e3:.3f} ms")
    target = 1.02 if args.mode == "auto" else 1.01
    print(f"overhead ratio (tracked / plain): {b / a:.4f}  (target <= {target})")
    print(f"per A/B pair: median {statistics.median(pair_ratios):.4f}, interquartile {q1:.4f}-{q3:.4f} "
          "(the machine's own noise)")


if __name__ == "__main__":
    main()
