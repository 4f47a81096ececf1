"""Claim: the advisor's predicted gain for a change is what the change really does (issue: within 15 % of the
measured gain, relative, in most scenarios, and the measured gain inside the predicted [low, high] in all).

Each scenario is a real CPU training loop written the way users write one.  The loading ones read through a
Dataset and a DataLoader into an MLP with SGD, and the change is ``num_workers``; the small-batch one slices
tensors in memory after a batch-size probe, and the change is ``batch_size``; the slow-optimizer one steps
AdamW over a wide MLP, and the change is ``gradient_accumulation_steps``; the small-ops one steps AdamW's
default (for-loop) implementation over many small parameters, its baseline measures ``--what-if
optimizer=fused`` (no model predicts a fused step), and the change is ``fused``; the too-many-workers one starts 8
DataLoader workers on 2 cores every epoch, and the change is ``persistent_workers``.  The baseline runs under
``gpulens.track()``; the advisor proposes a ``change`` with its ``prediction``; the bench applies the change
for real and times both arms in pairs in one process (each arm a run of its own: the baseline, then the
change).  The measured gain is 1 - changed / baseline over the pairs' runs -- of the mean step for the loading
scenarios (workers started together deliver in rounds, so their median step is the rounds' short steps), of
the median time per sample where the change makes each step longer, of the wall time per step (gaps between
steps included) for persistent workers -- with a 95 % bootstrap interval over pairs.  Run it on a quiet machine: a busy one changes what the change does (the loading model reads the CPU
the host left), and the prediction of each pair is made from that pair's baseline.

With ``--what-if`` the loading scenarios' baselines run ``what_if="num-workers=N"`` (N: the count the loading
model proposed for the scenario in earlier runs, ``Scenario.try_workers``): the advisor then proposes the
measured count with a "what-if measured" prediction, which the applied change checks the same way.

    python bench/predictions.py [--pairs 3] [--steps 80] [--scenario io-reads ...] [--what-if]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset

import gpulens
from gpulens.profiler import open_run
from gpulens.profiler.analysis.run_analysis import RunAnalysis
from stats import bootstrap_ci


def _spin(seconds: float) -> None:
    """CPU work of a transform (decode, augment): this thread runs for ``seconds``."""
    end = time.thread_time() + seconds
    x = 0
    while time.thread_time() < end:
        x += 1


class Samples(Dataset):
    """A sample costs ``cpu_s`` of CPU and ``io_s`` of blocked time (a read from slow storage)."""

    def __init__(self, n: int, cpu_s: float, io_s: float, dim: int) -> None:
        self.n, self.cpu_s, self.io_s, self.dim = n, cpu_s, io_s, dim

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        if self.io_s:
            time.sleep(self.io_s)
        if self.cpu_s:
            _spin(self.cpu_s)
        g = torch.Generator().manual_seed(i)
        return torch.randn(self.dim, generator=g), i % 10


@dataclass(frozen=True)
class Scenario:
    name: str
    what: str
    cpu_s: float  # per sample
    io_s: float  # per sample
    workers: int  # the baseline's num_workers
    try_workers: int  # what --what-if measures: the count the loading model proposed here in earlier runs
    batch: int = 32
    dim: int = 512
    hidden: int = 1024


SCENARIOS = {s.name: s for s in (
    Scenario("io-reads", "reads that wait on storage, in the training process", cpu_s=0.0, io_s=0.0015, workers=0,
             try_workers=4),
    Scenario("cpu-transforms", "CPU-heavy transforms in the training process", cpu_s=0.0006, io_s=0.0, workers=0,
             try_workers=2),
    Scenario("mixed", "half CPU, half waiting on reads, in the training process", cpu_s=0.0004, io_s=0.0008,
             workers=0, try_workers=3),
    Scenario("io-one-worker", "reads that wait on storage, one worker", cpu_s=0.0, io_s=0.0015, workers=1,
             try_workers=3),
    Scenario("slow-storage-big-model", "slow reads (3 ms a sample) feeding a wider model, in the training process",
             cpu_s=0.0, io_s=0.003, workers=0, batch=16, hidden=2048, try_workers=2),
    Scenario("light-transforms", "light CPU transforms in the training process", cpu_s=0.0002, io_s=0.0,
             workers=0, try_workers=1),
)}


#: Where the --what-if stretch runs in a baseline, and how long (its first try_workers + 1 steps are not measured).
WHAT_IF_AT, WHAT_IF_STEPS = 20, 30


def train(scenario: Scenario, workers: int, steps: int, runs_dir: str, name: str, what_if: str | None = None) -> Path:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(scenario.dim, scenario.hidden), torch.nn.ReLU(),
                                torch.nn.Linear(scenario.hidden, scenario.hidden), torch.nn.ReLU(),
                                torch.nn.Linear(scenario.hidden, 10))
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    data = Samples(scenario.batch * steps, scenario.cpu_s, scenario.io_s, scenario.dim)
    loader = DataLoader(data, batch_size=scenario.batch, shuffle=True, num_workers=workers,
                        persistent_workers=workers > 0)
    with gpulens.track(name, runs_dir=runs_dir, quiet=True, advise=False, profile_every=0, what_if=what_if) as run:
        epoch(run, loader, model, opt)
    assert run.path is not None
    return Path(run.path)


def epoch(run: gpulens.TrackedRun, loader: DataLoader, model: torch.nn.Module, opt: torch.optim.Optimizer) -> None:
    """One pass over ``loader`` as tutorials write it, each batch a step of ``run``."""
    for x, y in run.loader(loader):
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        run.step(loss=loss)


def mean_step(path: Path) -> float:
    """The run's mean step over its counted steps (a rate: what loading with workers predicts, and what
    ``gpulens compare`` checks a ``mean_step`` prediction on)."""
    with open_run(path) as run:
        steps = run.steps()
        return float(steps.duration[steps.counted()].mean())


def median_step(path: Path, per_sample: bool = False) -> float:
    """The run's median step (``per_sample``: of each step's time over its samples)."""
    with open_run(path) as run:
        steps = run.steps()
        keep = steps.counted()
        times = steps.duration[keep] / steps.samples[keep] if per_sample else steps.duration[keep]
        return float(statistics.median(times))


@dataclass
class Pairs:
    """The pairs of one scenario: each pair's measured ratio (changed over baseline), its prediction, the value
    its change set."""

    ratios: list[float] = field(default_factory=list)
    predicted: list[float] = field(default_factory=list)
    lows: list[float] = field(default_factory=list)
    highs: list[float] = field(default_factory=list)
    values: list[int] = field(default_factory=list)

    def add(self, ratio: float, prediction: dict, value: int) -> None:
        self.ratios.append(ratio)
        self.predicted.append(prediction["gain_fraction"])
        self.lows.append(prediction["low"])
        self.highs.append(prediction["high"])
        self.values.append(value)

    def summary(self, out: dict) -> dict:
        """``out`` with the measured gain (95 % bootstrap interval over pairs) beside the median prediction."""
        if not self.ratios:
            return out
        mid, lo, hi = bootstrap_ci(self.ratios)
        gain = 1 - mid
        pred = statistics.median(self.predicted)
        low, high = statistics.median(self.lows), statistics.median(self.highs)
        return {**out, "value": statistics.mode(self.values), "pairs": len(self.ratios), "measured": gain,
                "measured_ci": (1 - hi, 1 - lo), "predicted": pred, "low": low, "high": high,
                "within_15pct": abs(pred - gain) <= 0.15 * abs(gain), "inside": low <= gain <= high}


#: A decline ("more workers are not predicted to help") holds when one more worker gains less than this.
DECLINE_HOLDS = 0.05


def advice_of(path: Path, rule: str) -> tuple[dict | None, list[str]]:
    """A run's suggestion from ``rule`` (with its change and prediction, if any), and every suggestion's id."""
    with open_run(path) as run:
        suggestions = RunAnalysis(run).advice.as_dict()["suggestions"]
    return next((s for s in suggestions if s["id"] == rule), None), [s["id"] for s in suggestions]


def run_scenario(scenario: Scenario, pairs: int, steps: int, runs_dir: str, say: Callable[[str], None],
                 what_if: bool = False) -> dict:
    """Each pair: a baseline (``what_if``: with a num-workers stretch), its advice, the change applied.  Where the
    advice declines more workers, one more worker is tried: the decline holds if it gains under DECLINE_HOLDS."""
    measured, declined = Pairs(), []
    stretch = (f"num-workers={scenario.try_workers}:at={WHAT_IF_AT},steps={WHAT_IF_STEPS}" if what_if else None)
    for i in range(pairs):
        base = train(scenario, scenario.workers, steps, runs_dir, f"{scenario.name}-base-{i}", stretch)
        s, _ = advice_of(base, "dataloader_bound")
        if s is None:
            say(f"  pair {i}: no data-loading suggestion")
            continue
        p = s.get("prediction")
        n = int(s["change"]["num_workers"]) if s.get("change") and p else scenario.workers + 1
        changed = train(scenario, n, steps, runs_dir, f"{scenario.name}-changed-{i}")
        b, c = mean_step(base), mean_step(changed)
        if not p:
            declined.append(1 - c / b)
            say(f"  pair {i}: base {b * 1e3:.1f} ms; more workers declined; num_workers={n} anyway: "
                f"{c * 1e3:.1f} ms, measured {1 - c / b:+.0%}")
            continue
        measured.add(c / b, p, n)
        say(f"  pair {i}: base {b * 1e3:.1f} ms, num_workers={n} {c * 1e3:.1f} ms: measured {1 - c / b:+.0%}, "
            f"predicted {p['gain_fraction']:+.0%} [{p['low']:+.0%}, {p['high']:+.0%}] ({p['basis'].split(':')[0]})")
    return measured.summary({"scenario": scenario.name, "what": scenario.what, "declined": declined,
                             "change": "num_workers" + (" (what-if measured)" if what_if else "")})


# ---------------------------------------------------------------------------------------------- a small batch
@dataclass(frozen=True)
class BatchScenario:
    name: str
    what: str
    batch: int  # the baseline's
    target: int  # the memory budget is the one this batch fits (by the probe's own fit)
    probe_sizes: tuple[int, ...]
    dim: int = 256
    hidden: int = 1024


BATCH_SCENARIOS = {s.name: s for s in (
    BatchScenario("small-batch", "batches of 16 from tensors in memory (a small MLP: per-step costs dominate)",
                  batch=16, target=128, probe_sizes=(16, 256, 1024)),
)}


def _batch_model(s: BatchScenario) -> torch.nn.Module:
    torch.manual_seed(0)
    block = lambda n_in: [torch.nn.Linear(n_in, s.hidden), torch.nn.LayerNorm(s.hidden), torch.nn.GELU(),  # noqa: E731
                          torch.nn.Dropout(0.1)]
    return torch.nn.Sequential(*block(s.dim), *block(s.hidden), torch.nn.Linear(s.hidden, 10))


def train_batch(s: BatchScenario, batch: int, samples: int, runs_dir: str, name: str, probe: bool) -> Path:
    """A loop over slices of tensors in memory (no DataLoader), as small examples write one; the baseline
    probes its batch sizes first (``gpulens.probe_batch_sizes``) with a memory budget that fits ``target``."""
    model = _batch_model(s)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    gen = torch.Generator().manual_seed(1)
    x_all, y_all = torch.randn(samples, s.dim, generator=gen), torch.randint(0, 10, (samples,), generator=gen)
    loss_fn = torch.nn.functional.cross_entropy
    with gpulens.track(name, runs_dir=runs_dir, quiet=True, advise=False, profile_every=0) as run:
        if probe:
            make = lambda b: (torch.randn(b, s.dim), torch.randint(0, 10, (b,)))  # noqa: E731
            result = gpulens.probe_batch_sizes(model, make, s.probe_sizes, optimizer=opt, loss_fn=loss_fn, steps=5,
                                               capacity_bytes=1e12)
            if result.fit is not None and result.fit.m_act > 0:  # the budget: what ``target`` needs, by this fit
                budget = (result.fit.m_static + (s.target + 0.5) * result.fit.m_act) / (1 - result.margin)
                run.set_meta(batch_probe={**result.as_meta(), "capacity_bytes": budget, "b_max": s.target})
        for i in range(0, samples - batch + 1, batch):
            loss = loss_fn(model(x_all[i:i + batch]), y_all[i:i + batch])
            opt.zero_grad()
            loss.backward()
            opt.step()
            run.step(loss=loss)
    assert run.path is not None
    return Path(run.path)


def run_batch_scenario(s: BatchScenario, pairs: int, steps: int, runs_dir: str, say: Callable[[str], None]) -> dict:
    """Each pair: a baseline with its probe, its advice, the proposed batch applied for as many samples.  The
    gain is in time per sample (the step itself gets longer)."""
    measured = Pairs()
    for i in range(pairs):
        base = train_batch(s, s.batch, s.batch * steps, runs_dir, f"{s.name}-base-{i}", probe=True)
        sug, ids = advice_of(base, "batch_headroom")
        if sug is None or not sug.get("change"):
            say(f"  pair {i}: no batch change proposed ({ids})")
            continue
        p, n = sug["prediction"], int(sug["change"]["batch_size"])
        changed = train_batch(s, n, s.batch * steps, runs_dir, f"{s.name}-changed-{i}", probe=False)
        b, c = median_step(base) / s.batch, median_step(changed) / n
        measured.add(c / b, p, n)
        say(f"  pair {i}: base {b * 1e6:.0f} µs/sample, batch_size={n} {c * 1e6:.0f} µs/sample: measured "
            f"{1 - c / b:+.0%}, predicted {p['gain_fraction']:+.0%} [{p['low']:+.0%}, {p['high']:+.0%}]")
    return measured.summary({"scenario": s.name, "what": s.what, "declined": [], "change": "batch_size"})


# ---------------------------------------------------------------------------------------------- a slow optimizer
@dataclass(frozen=True)
class OptimizerScenario:
    name: str
    what: str
    batch: int
    width: int  # a wide MLP: many parameters for the optimizer, little compute at this batch
    blocks: int = 0  # > 0: a deep narrow stack instead (blocks of Linear + LayerNorm: many small parameters)
    what_if: str | None = None  # the baseline's what-if (the change it measures is the one proposed)


OPTIMIZER_SCENARIOS = {s.name: s for s in (
    OptimizerScenario("slow-optimizer", "AdamW over a wide MLP (1.3 M parameters) at batch 4: the optimizer "
                      "step outweighs forward and backward", batch=4, width=1024),
    OptimizerScenario("small-ops-optimizer", "AdamW's default (for-loop) step over 96 small parameters (24 blocks "
                      "of Linear(64, 64) + LayerNorm) at batch 8: a dozen small ops per parameter, each costing "
                      "its dispatch", batch=8, width=64, blocks=24, what_if="optimizer=fused:at=20,steps=30"),
)}


def _optimizer_model(s: OptimizerScenario) -> torch.nn.Module:
    torch.manual_seed(0)
    if s.blocks:
        blocks = [torch.nn.Sequential(torch.nn.Linear(s.width, s.width), torch.nn.LayerNorm(s.width), torch.nn.ReLU())
                  for _ in range(s.blocks)]
        return torch.nn.Sequential(torch.nn.Linear(256, s.width), *blocks, torch.nn.Linear(s.width, 10))
    return torch.nn.Sequential(torch.nn.Linear(256, s.width), torch.nn.ReLU(), torch.nn.Linear(s.width, s.width),
                               torch.nn.ReLU(), torch.nn.Linear(s.width, 10))


def train_accumulating(s: OptimizerScenario, micro_batches: int, steps: int, runs_dir: str, name: str,
                       fused: bool = False, what_if: str | None = None) -> Path:
    """A DataLoader over tensors in memory, the phases marked, the optimizer stepped once per ``micro_batches``
    batches (gradient accumulation as users write it: the loss divided by k); ``fused``: AdamW(fused=True)."""
    model = _optimizer_model(s)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, **({"fused": True} if fused else {}))
    gen = torch.Generator().manual_seed(1)
    n = s.batch * micro_batches * steps
    data = torch.utils.data.TensorDataset(torch.randn(n, 256, generator=gen), torch.randint(0, 10, (n,), generator=gen))
    loader = DataLoader(data, batch_size=s.batch, shuffle=True)
    with gpulens.track(name, runs_dir=runs_dir, quiet=True, advise=False, profile_every=0, what_if=what_if) as run:
        for i, (x, y) in enumerate(run.loader(loader)):
            with run.phase("forward"):
                loss = torch.nn.functional.cross_entropy(model(x), y) / micro_batches
            with run.phase("backward"):
                loss.backward()
            if (i + 1) % micro_batches == 0:
                with run.phase("optimizer"):
                    opt.step()
                    opt.zero_grad()
                run.step(loss=loss)
    assert run.path is not None
    return Path(run.path)


def run_optimizer_scenario(s: OptimizerScenario, pairs: int, steps: int, runs_dir: str,
                           say: Callable[[str], None]) -> dict:
    """Each pair: a baseline, its advice, the proposed accumulation applied.  The gain is in time per sample.
    Twice the steps of the other scenarios: its steps are short (~10 ms) and memory-bound, and 150 of them
    scattered a pair's gain over 12-41 % where 300 kept it within 28-34 %."""
    measured = Pairs()
    steps *= 2
    key = "fused" if s.what_if else "gradient_accumulation_steps"
    for i in range(pairs):
        base = train_accumulating(s, 1, steps, runs_dir, f"{s.name}-base-{i}", what_if=s.what_if)
        sug, ids = advice_of(base, "slow_optimizer")
        if sug is None or key not in (sug.get("change") or {}):
            say(f"  pair {i}: no {key} change proposed ({ids}; {sug and sug.get('change')})")
            continue
        p = sug["prediction"]
        if key == "fused":  # the same steps with AdamW(fused=True): the median step
            changed = train_accumulating(s, 1, steps, runs_dir, f"{s.name}-changed-{i}", fused=True)
            b, c, value, unit = median_step(base), median_step(changed), 1, "ms/step"
            shown = (b * 1e3, c * 1e3)
        else:
            k = value = int(sug["change"][key])
            changed = train_accumulating(s, k, max(20, steps // k), runs_dir, f"{s.name}-changed-{i}")
            b, c, unit = median_step(base, per_sample=True), median_step(changed, per_sample=True), "µs/sample"
            shown = (b * 1e6, c * 1e6)
        measured.add(c / b, p, value)
        say(f"  pair {i}: base {shown[0]:.1f} {unit}, {key}={sug['change'][key]} {shown[1]:.1f} {unit}: measured "
            f"{1 - c / b:+.0%}, predicted {p['gain_fraction']:+.0%} [{p['low']:+.0%}, {p['high']:+.0%}] "
            f"({p['basis'].split(':')[0]})")
    return measured.summary({"scenario": s.name, "what": s.what, "declined": [], "change": key})


# ---------------------------------------------------------------------------------------------- workers restarted
@dataclass(frozen=True)
class RestartScenario:
    name: str
    what: str
    workers: int  # more than the cores
    epochs: int
    steps_per_epoch: int
    cpu_s: float = 0.0003  # per sample: the workers keep up, so no step waits long for data
    batch: int = 32


RESTART_SCENARIOS = {s.name: s for s in (
    RestartScenario("too-many-workers", "8 DataLoader workers on 2 cores, started again every epoch (epochs of 40 "
                    "steps), CPU transforms of 0.3 ms a sample", workers=8, epochs=6, steps_per_epoch=40),
)}


def train_epochs(s: RestartScenario, persistent: bool, runs_dir: str, name: str) -> Path:
    """Epochs over a Dataset through a DataLoader with ``s.workers`` workers, as tutorials write them."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(512, 1024), torch.nn.ReLU(), torch.nn.Linear(1024, 10))
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    data = Samples(s.batch * s.steps_per_epoch, s.cpu_s, 0.0, 512)
    loader = DataLoader(data, batch_size=s.batch, shuffle=True, num_workers=s.workers, persistent_workers=persistent)
    with gpulens.track(name, runs_dir=runs_dir, quiet=True, advise=False, profile_every=0) as run:
        for _ in range(s.epochs):
            epoch(run, loader, model, opt)
        del loader  # persistent workers stop inside the run, as at the end of a script
    assert run.path is not None
    return Path(run.path)


def wall_per_step(path: Path) -> float:
    """The first step's start to the last one's end, over the steps (what ``gpulens compare`` checks a
    ``wall_per_step`` prediction on)."""
    with open_run(path) as run:
        steps = run.steps()
        return float((steps.t_end.max() - steps.t_start.min()) / len(steps))


def run_restart_scenario(s: RestartScenario, pairs: int, runs_dir: str, say: Callable[[str], None]) -> dict:
    """Each pair: a baseline whose workers start every epoch, its advice, the same loop with persistent workers.
    The gain is in wall time per step (the restarts lie between steps)."""
    measured = Pairs()
    for i in range(pairs):
        base = train_epochs(s, False, runs_dir, f"{s.name}-base-{i}")
        sug, ids = advice_of(base, "worker_restarts")
        if sug is None or not sug.get("change"):
            say(f"  pair {i}: no persistent_workers change proposed ({ids})")
            continue
        p = sug["prediction"]
        changed = train_epochs(s, True, runs_dir, f"{s.name}-changed-{i}")
        b, c = wall_per_step(base), wall_per_step(changed)
        measured.add(c / b, p, 1)
        say(f"  pair {i}: base {b * 1e3:.1f} ms/step (gaps included), persistent_workers=True {c * 1e3:.1f}: "
            f"measured {1 - c / b:+.0%}, predicted {p['gain_fraction']:+.0%} [{p['low']:+.0%}, {p['high']:+.0%}]")
    return measured.summary({"scenario": s.name, "what": s.what, "declined": [], "change": "persistent_workers"})


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pairs", type=int, default=3)
    ap.add_argument("--steps", type=int, default=80)
    every = [*SCENARIOS, *BATCH_SCENARIOS, *OPTIMIZER_SCENARIOS, *RESTART_SCENARIOS]
    ap.add_argument("--scenario", nargs="*", choices=sorted(every), default=every)
    ap.add_argument("--what-if", action="store_true",
                    help="the loading scenarios' baselines measure num-workers=N in a stretch (the prediction is "
                         "then the measured gain)")
    args = ap.parse_args(argv)
    if not 1 <= args.pairs <= 50 or not 20 <= args.steps <= 10000:
        print("predictions: --pairs 1-50, --steps 20-10000", file=sys.stderr)
        return 2
    results = []
    with tempfile.TemporaryDirectory() as runs_dir:
        for name in args.scenario:
            say = lambda line: print(line, flush=True)  # noqa: E731
            if name in RESTART_SCENARIOS:
                restart_scenario = RESTART_SCENARIOS[name]
                print(f"{name}: {restart_scenario.what} (baseline persistent_workers=False)", flush=True)
                results.append(run_restart_scenario(restart_scenario, args.pairs, runs_dir, say))
                continue
            if name in OPTIMIZER_SCENARIOS:
                optimizer_scenario = OPTIMIZER_SCENARIOS[name]
                print(f"{name}: {optimizer_scenario.what} (baseline: one batch per optimizer step)", flush=True)
                results.append(run_optimizer_scenario(optimizer_scenario, args.pairs, args.steps, runs_dir, say))
                continue
            if name in BATCH_SCENARIOS:
                batch_scenario = BATCH_SCENARIOS[name]
                print(f"{name}: {batch_scenario.what} (baseline batch_size={batch_scenario.batch})", flush=True)
                results.append(run_batch_scenario(batch_scenario, args.pairs, args.steps, runs_dir, say))
                continue
            scenario = SCENARIOS[name]
            print(f"{name}: {scenario.what} (baseline num_workers={scenario.workers})", flush=True)
            results.append(run_scenario(scenario, args.pairs, args.steps, runs_dir, say, args.what_if))
    print()
    within = inside = counted = held = declines = 0
    for r in results:
        if r["declined"]:
            ok = sum(g < DECLINE_HOLDS for g in r["declined"])
            declines += len(r["declined"])
            held += ok
            print(f"{r['scenario']}: more workers declined in {len(r['declined'])} pair(s); one more worker "
                  f"measured {', '.join(f'{g:+.1%}' for g in r['declined'])}: the decline held in {ok}")
        if "measured" not in r:
            continue
        counted += 1
        within += r["within_15pct"]
        inside += r["inside"]
        lo, hi = r["measured_ci"]
        print(f"{r['scenario']}: {r['change']}={r['value']} ({r['pairs']} pairs): predicted {r['predicted']:+.1%} "
              f"[{r['low']:+.1%}, {r['high']:+.1%}], measured {r['measured']:+.1%} (95% CI {lo:+.1%} to {hi:+.1%}); "
              f"within 15%: {'yes' if r['within_15pct'] else 'no'}, inside: {'yes' if r['inside'] else 'no'}")
    print(f"predictions within 15 % of the measured gain: {within}/{counted}; measured inside [low, high]: "
          f"{inside}/{counted}; declines that held: {held}/{declines}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
