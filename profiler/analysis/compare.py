"""Two runs side by side with noise-aware verdicts, and the regression gate ``gpulens compare --fail-on``.

The figures are the report's own -- step time as the steady steps' total
over their count (1 / steps/s: the one definition of speed of the report,
the dashboard, MFU and the gate), the median step beside it as the typical
step; samples/s, phase shares and energy per sample as ratios of totals over
the steady steps; means of NVML / GPM readings -- so a comparison never
contradicts either report, nor itself: with the same samples per step,
samples/s takes step time's interval mirrored, so the two rows always carry
the same verdict.  Each change gets a 95 % interval from resampling blocks of
consecutive steps (or readings) (:mod:`noise`).  A difference whose interval
includes zero gets no verdict ("in noise"); one that is significant but
under 1 % (1 pp) is called the same.  Figures a run has one of (peak memory,
exact for CUDA; the tensor-core share of the profiled kernels) are judged on
their size alone; MFU moves with step time at a fixed FLOP count, so it
takes step time's interval.  Per-step figures are not judged when the batch
sizes differ (a bigger batch makes every step slower and every sample
faster).

The gate: ``step_time>+5%`` fails when step time rose by more than 5 % *and*
its interval leaves out zero -- a run-to-run wobble inside the noise never
fails a build, a real 20 % slowdown always does.
"""
from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from gpulens import fmt
from gpulens.profiler.analysis.advisor.measure import worker_load
from gpulens.profiler.analysis.energy import EnergyCurve, energy_curves, per_step
from gpulens.profiler.analysis.gpus import mean_over_gpus
from gpulens.profiler.analysis.noise import Change, median_change, ratio_change, ratio_difference, thin
from gpulens.profiler.analysis.report import Memory, Mfu, Report
from gpulens.profiler.errors import GpulensError
from gpulens.profiler.store import loader_workers
from gpulens.profiler.store.reader import RunReader, StepTable
from gpulens.profiler.store.schema import PHASES

SCHEMA = "gpulens.compare/1"
#: Figures a run has one of (no per-step distribution): judged by the size of their change alone.
ONE_FIGURE = frozenset({"peak_memory", "tensor_core_share"})
#: Smallest change that earns better/worse: 1 % of the base, or 1 percentage point for shares.
MIN_RELATIVE = 0.01
MIN_POINTS = 1.0


@dataclass
class Side:
    """One run's distributions and figures, read once (I/O happens in :func:`side_of`)."""

    id: str
    path: str
    batch_size: int | None
    durations: np.ndarray  # steady steps, in recorded order
    samples: np.ndarray
    tokens: np.ndarray
    phases: dict[str, np.ndarray]  # per-step seconds of each phase (steady steps)
    readings: dict[str, np.ndarray]  # every GPU's readings of gpu.util, gpm.sm_active, ..., thinned for resampling
    reading_means: dict[str, float]  # their exact means (mean of the GPUs' means, as the report)
    step_energy: np.ndarray  # joules per steady step (NaN without energy readings)
    memory: Memory | None  # the report's sections compare reads: peak memory, MFU, tensor-core share
    mfu: Mfu | None
    tensor_core_share: float | None
    status: str = "finished"  # the run's, as ls and the report say it (crashed, interrupted, running, ...)
    status_reason: str | None = None
    workers: float | None = None  # DataLoader workers, mean while they were alive (None: no workers recorded)
    optimizer_impl: str | None = None  # fused | foreach | for-loop, where the run recorded its optimizer
    persistent_workers: bool | None = None  # its DataLoaders' workers persisted (None: no workers recorded)
    #: every step's start to the next one's (the last: its own duration), warm-up, profiled and what-if steps
    #: too: each step with the gap after it, summing to the first step's start to the last one's end
    walls: np.ndarray = field(default_factory=lambda: np.zeros(0))


@dataclass
class Metric:
    """One row: both values, the change (relative, or in points for shares) and its 95 % interval."""

    name: str
    label: str
    unit: str  # "%" (relative change) or "pp" (percentage points)
    better: str | None  # "higher" | "lower" | None (no direction: a change is only a change)
    base: float | None = None
    candidate: float | None = None
    change: float | None = None  # relative (0.05 = +5 %) or points (+3.0 pp)
    low: float | None = None
    high: float | None = None
    verdict: str = "n/a"  # better | worse | changed | same | in noise | n/a
    note: str | None = None
    exact: bool = False  # no distribution, and none needed (the allocator's peak)

    @property
    def significant(self) -> bool:
        if self.change is None:
            return False
        if self.low is None or self.high is None:
            return self.name in ONE_FIGURE  # a figure without a distribution is judged by its size alone
        return self.low > 0 or self.high < 0


@dataclass
class FixCheck:
    """A change the base run's advice proposed, which the candidate applied: what it predicted for the median
    step against what the candidate got (gains: 0.3 = 30 % shorter; ``got_low``/``got_high`` its 95 % CI)."""

    suggestion: str
    change: dict[str, Any]
    applied: dict[str, Any]  # the change's settings the candidate measurably has
    unchecked: list[str]  # the change's settings no recording shows (pin_memory, persistent_workers, ...)
    predicted: float
    low: float
    high: float
    basis: str
    measure: str = "median_step"  # what the prediction shortens: median_step | mean_step | time_per_sample
    got: float | None = None
    got_low: float | None = None
    got_high: float | None = None

    @property
    def inside(self) -> bool | None:
        """The measured gain falls in the predicted interval (None: not measured)."""
        return None if self.got is None else self.low <= self.got <= self.high


@dataclass
class Comparison:
    base: dict[str, Any]
    candidate: dict[str, Any]
    metrics: list[Metric] = field(default_factory=list)
    fixes: list[FixCheck] = field(default_factory=list)

    def metric(self, name: str) -> Metric | None:
        return next((m for m in self.metrics if m.name == name), None)

    def as_dict(self) -> dict[str, Any]:
        return {"schema": SCHEMA, "base": self.base, "candidate": self.candidate,
                "metrics": [asdict(m) for m in self.metrics],
                "fixes": [{**asdict(f), "inside": f.inside} for f in self.fixes]}


def _settings(side: Side) -> dict[str, Any]:
    """What a run's recording shows of the settings a change names."""
    out: dict[str, Any] = {"num_workers": round(side.workers) if side.workers else 0}
    per_step = _per_step_samples(side)
    batch = side.batch_size or (round(per_step) if per_step > 0 else None)  # as the advisor reads it
    if batch:
        out["batch_size"] = batch
    if side.persistent_workers is not None:
        out["persistent_workers"] = side.persistent_workers
    if side.optimizer_impl:  # a change {"fused": true} is applied where the optimizer ran fused
        out["fused"] = side.optimizer_impl == "fused"
        out["foreach"] = side.optimizer_impl == "foreach"
    return out


def _per_step_samples(side: Side) -> float:
    """The median samples per step (0: not recorded)."""
    samples = side.samples[np.isfinite(side.samples)] if side.samples.size else side.samples
    return float(np.median(samples)) if samples.size else 0.0


def check_fixes(comparison: Comparison, suggestions: list[dict[str, Any]], base: Side, cand: Side) -> None:
    """Each of the base's suggestions with a change and a prediction whose settings the candidate has (and the
    base had not): its prediction beside what the candidate got -- its median step against the base's, or, for a
    prediction of the time per sample (a larger batch, accumulated gradients), its samples/s against the
    base's."""
    before, after = _settings(base), _settings(cand)
    # gradients accumulated over k micro-batches: k times the samples per optimizer step (a batch k times as
    # large reads the same: the optimizer runs once per k times the samples either way)
    per_step = _per_step_samples(base)
    ratio = _per_step_samples(cand) / per_step if per_step > 0 else 0.0
    before["gradient_accumulation_steps"] = 1
    after["gradient_accumulation_steps"] = round(ratio) if ratio >= 1.5 and abs(ratio - round(ratio)) < 0.05 else 1
    for s in suggestions:
        change, p = s.get("change"), s.get("prediction")
        if not isinstance(change, dict) or not isinstance(p, dict):
            continue
        checkable = {k: v for k, v in change.items() if k in after}
        if not checkable or any(after[k] != v for k, v in checkable.items()) \
                or all(before.get(k) == v for k, v in checkable.items()):
            continue
        fix = FixCheck(suggestion=str(s.get("id")), change=change, applied=checkable,
                       unchecked=[k for k in change if k not in checkable], predicted=float(p["gain_fraction"]),
                       low=float(p["low"]), high=float(p["high"]), basis=str(p.get("basis")),
                       measure=str(p.get("measure") or "median_step"))
        if fix.measure == "time_per_sample":
            # samples/s up by c: the time per sample is 1 / (1 + c) of the base's, shorter by c / (1 + c)
            tp = comparison.metric("throughput")
            if tp is not None and tp.change is not None and tp.name == "throughput" and tp.label == "Samples/s":
                fix.got = tp.change / (1.0 + tp.change)
                if tp.low is not None and tp.high is not None:
                    fix.got_low, fix.got_high = tp.low / (1.0 + tp.low), tp.high / (1.0 + tp.high)
        else:
            # the median step; a rate (loading with N workers: the mean step, which the rounds of workers
            # started together leave where it is while their median falls to the rounds' short steps); or time
            # outside steps (workers started every epoch: each step with the gap after it)
            row = comparison.metric(SHORTENED.get(fix.measure, "median_step"))
            if row is not None and row.change is not None:
                fix.got = -row.change
                if row.low is not None and row.high is not None:
                    fix.got_low, fix.got_high = -row.high, -row.low
        comparison.fixes.append(fix)


#: The comparison row a prediction's ``measure`` is checked on, where the gain is that row's fall.
SHORTENED = {"median_step": "median_step", "mean_step": "step_time", "wall_per_step": "wall_per_step"}


def side_of(run: RunReader, report: Report, curves: list[EnergyCurve] | None = None) -> Side:
    """Read what a comparison needs from one run and its report (``gpulens report --json``); ``curves``:
    its energy curves when already read (:attr:`RunData.energy_curves`), else read here."""
    steps = run.steps()
    steady = steps.counted()
    readings: dict[str, np.ndarray] = {}
    means: dict[str, float] = {}
    for metric in READINGS:  # one GPU's series in memory at a time: a day at 10 Hz is 864,000 readings
        kept = []
        for gpu in run.gpus_recorded():
            s = run.series(metric, gpu)
            v = s.v[np.isfinite(s.v)] if s is not None else np.zeros(0)
            if v.size:
                kept.append(thin(v)[0])
        mean = mean_over_gpus(report.gpus, metric)  # the report's cards' figure, not a second one
        if kept and mean is not None:
            readings[metric] = np.concatenate(kept)
            means[metric] = mean
    curves = energy_curves(run) if curves is None else curves
    energy = per_step(curves, steps)[steady] if curves else np.full(int(steady.sum()), np.nan)
    return Side(id=run.info.id, path=str(run.info.path), batch_size=report.run.batch_size,
                durations=steps.duration[steady] if len(steps) else np.zeros(0),
                samples=steps.samples[steady] if len(steps) else np.zeros(0),
                tokens=steps.tokens[steady] if len(steps) else np.zeros(0),
                phases={p: getattr(steps, p)[steady] for p in PHASES} if len(steps) else {},
                readings=readings, reading_means=means, step_energy=energy, memory=report.memory,
                mfu=report.mfu, tensor_core_share=report.tensor_core_share,
                status=run.info.status, status_reason=run.info.status_reason, workers=worker_load(run)[0],
                optimizer_impl=optimizer_impl(run.info.meta), persistent_workers=persistent(run.info.meta),
                walls=walls(steps))


def walls(steps: StepTable) -> np.ndarray:
    """Each step's start to the next one's, the last step its own duration: the steps with the gaps between
    them (in step order; a step table from a clock that stepped back gives no negative gap)."""
    if not len(steps):
        return np.zeros(0)
    order = np.argsort(steps.step, kind="stable")
    start, end = steps.t_start[order], steps.t_end[order]
    return np.asarray(np.maximum(np.append(np.diff(start), end[-1] - start[-1]), 0.0), dtype=float)


def persistent(meta: dict[str, Any]) -> bool | None:
    """Whether the run's DataLoader workers persisted between epochs (None: it recorded no worker starts)."""
    starts = loader_workers.read(meta)
    return starts.persistent if starts is not None else None


def optimizer_impl(meta: dict[str, Any]) -> str | None:
    """The implementation the run's optimizer used: track(optimizer=...)'s, or the first one ``gpulens run`` saw
    step."""
    model = meta.get("model")
    impl = model.get("optimizer_impl") if isinstance(model, dict) else None
    seen = meta.get("optimizers")
    if not impl and isinstance(seen, list) and seen and isinstance(seen[0], dict):
        impl = seen[0].get("impl")
    return impl if isinstance(impl, str) else None


def _fill(m: Metric, got: Change | None) -> Metric:
    if got is not None:
        m.base, m.candidate, m.change, m.low, m.high = got.base, got.candidate, got.change, got.low, got.high
    return m


def _judge(m: Metric) -> Metric:
    if m.change is None:
        m.verdict = "n/a"
        return m
    if not m.significant:
        m.verdict = "in noise"
        return m
    floor = MIN_POINTS if m.unit == "pp" else MIN_RELATIVE
    if abs(m.change) < floor:
        m.verdict = "same"
    elif m.better is None:
        m.verdict = "changed"
    else:
        m.verdict = "better" if (m.change > 0) == (m.better == "higher") else "worse"
    return m


def _identity(side: Side) -> dict[str, Any]:
    return {"id": side.id, "path": side.path, "steps": int(side.durations.size), "status": side.status,
            "status_reason": side.status_reason}


def compare(base: Side, cand: Side) -> Comparison:
    """Every figure of ``cand`` against ``base``.

    The values are the report's (step time as total over count, the median step; samples/s, phase shares and
    energy per sample as ratios of totals over the steady steps; means of readings), so the comparison never
    contradicts either report;
    the intervals come from resampling blocks of those steps or readings.
    """
    out = Comparison(_identity(base), _identity(cand))
    batches_differ = bool(base.batch_size and cand.batch_size and base.batch_size != cand.batch_size)
    b_dur, c_dur = base.durations, cand.durations
    st = _fill(Metric("step_time", "Step time", "%", "lower"),
               ratio_change((b_dur, np.ones_like(b_dur)), (c_dur, np.ones_like(c_dur))))
    if batches_differ:
        st.note = "batch sizes differ: compare samples/s"
    out.metrics.append(st)
    if np.isfinite(base.samples).any() and np.isfinite(cand.samples).any():
        tp = _fill(Metric("throughput", "Samples/s", "%", "higher"),
                   ratio_change((base.samples, b_dur), (cand.samples, c_dur)))
        if _same_work(base.samples, cand.samples):
            _mirror(tp, st)
        elif not batches_differ:
            tp.note = "samples per step vary: samples/s weighs each step by its samples, step time does not"
    else:
        tp = _mirror(_fill(Metric("throughput", "Steps/s", "%", "higher"),
                           ratio_change((np.ones_like(b_dur), b_dur), (np.ones_like(c_dur), c_dur))), st)
        if batches_differ:
            tp.note = st.note
    out.metrics.append(tp)
    median = _fill(Metric("median_step", "Median step", "%", "lower"), median_change(b_dur, c_dur))
    median.note = ("the typical step: slow steps (evaluation stalls, checkpoints, spikes) move step time and "
                   "samples/s, not it")
    out.metrics.append(median)
    out.metrics.append(_wall_per_step(base, cand))
    if np.isfinite(base.tokens).any() and np.isfinite(cand.tokens).any():
        out.metrics.append(_fill(Metric("tokens_per_s", "Tokens/s", "%", "higher"),
                                 ratio_change((base.tokens, b_dur), (cand.tokens, c_dur))))
    for phase in PHASES:
        if phase in base.phases and phase in cand.phases:
            better = "lower" if phase == "data_wait" else None
            out.metrics.append(_fill(Metric(phase, f"{fmt.phase(phase).capitalize()} share", "pp", better),
                                     ratio_difference((base.phases[phase], b_dur), (cand.phases[phase], c_dur),
                                                      scale=100.0)))
    for metric, (name, label) in READINGS.items():
        a, b = base.readings.get(metric, np.zeros(0)), cand.readings.get(metric, np.zeros(0))
        unit = "%" if metric == "gpu.power" else "pp"
        m = Metric(name, label, unit, "higher" if unit == "pp" else None)
        if metric == "gpu.power":
            _fill(m, ratio_change((a, np.ones_like(a)), (b, np.ones_like(b))))
        else:
            _fill(m, ratio_difference((a, np.ones_like(a)), (b, np.ones_like(b))))
        _recentre(m, base.reading_means.get(metric), cand.reading_means.get(metric))
        if m.change is not None or metric == "gpu.util":  # GPM rows only where both runs have GPM
            out.metrics.append(m)
    out.metrics.append(_mfu(base, cand, st))
    out.metrics.append(_tensor_core_share(base, cand))
    out.metrics.append(_peak_memory(base, cand))
    if np.isfinite(base.samples).any() and np.isfinite(cand.samples).any():
        out.metrics.append(_fill(Metric("energy_per_sample", "Energy/sample", "%", "lower"),
                                 ratio_change((base.step_energy, base.samples), (cand.step_energy, cand.samples))))
    else:
        out.metrics.append(_fill(Metric("energy_per_step", "Energy/step", "%", "lower"),
                                 ratio_change((base.step_energy, np.ones_like(base.step_energy)),
                                              (cand.step_energy, np.ones_like(cand.step_energy)))))
    for m in out.metrics:
        if m.change is None and m.note is None:
            m.note = "not recorded in both runs"
        _judge(m)
        if batches_differ and m.name in ("step_time", "throughput", "median_step") and m.label != "Samples/s" \
                and m.verdict in ("better", "worse"):
            m.verdict = "not judged"  # a bigger batch makes every step slower and every sample faster
    return out


def _same_work(base: np.ndarray, cand: np.ndarray) -> bool:
    """The same samples in every step of both runs."""
    a, b = base[np.isfinite(base)], cand[np.isfinite(cand)]
    return bool(a.size and b.size) and bool(np.all(a == a[0]) and np.all(b == a[0]))


def _mirror(rate: Metric, step_time: Metric) -> Metric:
    """A per-step rate with the same work in every step is 1 / step time: its change and interval are step
    time's mirrored, so the two rows can never disagree (resampled separately, they could at the edge)."""
    if step_time.change is None or rate.change is None:
        return rate
    rate.change = 1.0 / (1.0 + step_time.change) - 1.0
    if step_time.low is not None and step_time.high is not None:
        rate.low, rate.high = 1.0 / (1.0 + step_time.high) - 1.0, 1.0 / (1.0 + step_time.low) - 1.0
    return rate


#: Readings compared by their mean: metric -> (name, label).  GPM rows appear only where both runs have GPM.
READINGS = {"gpu.util": ("gpu_busy", "GPU busy (NVML)"), "gpm.sm_active": ("sm_active", "SM activity (GPM)"),
            "gpm.tensor_active": ("tensor_active", "Tensor activity (GPM)"), "gpu.power": ("power", "Power (mean)")}


def _recentre(m: Metric, base: float | None, cand: float | None) -> None:
    """Put a row estimated from thinned readings on the exact means, its interval moved with it."""
    if m.change is None or base is None or cand is None or (m.unit == "%" and base <= 0):
        return
    exact = cand / base - 1.0 if m.unit == "%" else cand - base
    shift = exact - m.change
    m.base, m.candidate, m.change = base, cand, exact
    if m.low is not None and m.high is not None:
        m.low, m.high = m.low + shift, m.high + shift


def _wall_per_step(base: Side, cand: Side) -> Metric:
    """The time from the first step's start to the last one's end, per step: what the steps cost with the gaps
    between them (workers started every epoch, evaluation, checkpoints), which step time leaves out; its
    interval resamples blocks of steps, each with the gap after it, as step time's does."""
    m = Metric("wall_per_step", "Wall time per step", "%", "lower")
    if base.walls.size < 2 or cand.walls.size < 2:
        return m
    _fill(m, ratio_change((base.walls, np.ones_like(base.walls)), (cand.walls, np.ones_like(cand.walls))))
    m.note = "steps and the gaps between them (evaluation, checkpoints, DataLoader workers starting)"
    return m


def _tensor_core_share(base: Side, cand: Side) -> Metric:
    """Tensor-core kernels' share of kernel time in the profiler windows: one figure per run, no interval."""
    m = Metric("tensor_core_share", "Tensor-core share of kernel time", "pp", "higher")
    a, b = base.tensor_core_share, cand.tensor_core_share
    if a is None or b is None:
        m.note = "needs profiler windows with GPU kernels in both runs"
        return m
    m.base, m.candidate, m.change = 100.0 * a, 100.0 * b, 100.0 * (b - a)
    return m


def _mfu(base: Side, cand: Side, step_time: Metric) -> Metric:
    """MFU changes as FLOPs per step over step time: at the counted FLOPs, step time's interval carries over."""
    m = Metric("mfu", "MFU", "%", "higher")
    a, b = base.mfu, cand.mfu
    if a is None or b is None or a.mfu_pct is None or b.mfu_pct is None:
        m.note = (a.reason if a is not None else None) or (b.reason if b is not None else None)
        return m
    m.base, m.candidate = a.mfu_pct, b.mfu_pct
    m.change = m.candidate / m.base - 1.0 if m.base else None
    if step_time.change is not None and step_time.low is not None and step_time.high is not None \
            and m.change is not None:  # step time's relative uncertainty, around MFU's own change
        ratio, st = 1.0 + m.change, 1.0 + step_time.change
        m.low, m.high = ratio * st / (1 + step_time.high) - 1.0, ratio * st / (1 + step_time.low) - 1.0
    return m


def _peak_memory(base: Side, cand: Side) -> Metric:
    """Peak CUDA memory (exact, from the allocator), else the training process' peak resident memory."""
    for key, label in (("cuda_peak_allocated_bytes", "Peak CUDA mem"), ("process_rss_max_bytes", "Peak RSS")):
        a = getattr(base.memory, key) if base.memory is not None else None
        b = getattr(cand.memory, key) if cand.memory is not None else None
        if a and b:
            m = Metric("peak_memory", label, "%", "lower", float(a), float(b), float(b) / float(a) - 1.0,
                       exact=key == "cuda_peak_allocated_bytes")
            if key == "process_rss_max_bytes":  # sampled, not exact: a 1 % floor is its noise
                m.note = "process resident memory (sampled): no CUDA allocator in these runs"
            return m
    return Metric("peak_memory", "Peak memory", "%", "lower", note="not recorded in both runs")


# ---------------------------------------------------------------------------------------------- the gate
STATUS_RULE = "status"
_RULE = re.compile(r"^\s*([a-z_]+)\s*([<>])\s*([+-]?\d+(?:\.\d+)?)\s*(%|pp)\s*$")
METRIC_NAMES = ("step_time", "throughput", "median_step", "wall_per_step", "tokens_per_s", *PHASES, "gpu_busy",
                "sm_active", "tensor_active", "power", "mfu", "tensor_core_share", "peak_memory", "energy_per_sample",
                "energy_per_step")
ALIASES = {"samples_per_s": "throughput", "step": "step_time", "median": "median_step", "memory": "peak_memory",
           "peak_mem": "peak_memory", "energy": "energy_per_sample", "busy": "gpu_busy"}


@dataclass(frozen=True)
class Rule:
    text: str
    metric: str
    above: bool  # ">": fail on a rise past the threshold; "<": on a fall past it
    threshold: float  # relative (0.05) or points (3.0)
    unit: str


@dataclass(frozen=True)
class RuleResult:
    rule: str
    metric: str
    failed: bool
    message: str


def parse_rules(spec: str) -> list[Rule]:
    """``"step_time>+5%,peak_memory>+10%,data_wait>+3pp,throughput<-5%,status"``; a bad rule is a GpulensError.

    ``status`` fails when either run did not finish: a crashed candidate's few steps can look fast."""
    rules = []
    for part in filter(None, (p.strip() for p in spec.split(","))):
        if part == STATUS_RULE:
            rules.append(Rule(part, STATUS_RULE, True, 0.0, ""))
            continue
        hit = _RULE.match(part)
        if hit is None:
            raise GpulensError(f"--fail-on {part!r}: expected METRIC>+N% or METRIC<-N% (pp for shares) or "
                               "status, e.g. step_time>+5%")
        name, op, number, unit = hit.groups()
        name = ALIASES.get(name, name)
        if name not in METRIC_NAMES:
            raise GpulensError(f"--fail-on {part!r}: unknown metric {name!r} (one of {', '.join(METRIC_NAMES)})")
        want = "pp" if name in (*PHASES, "gpu_busy", "sm_active", "tensor_active", "tensor_core_share") else "%"
        if unit != want:
            raise GpulensError(f"--fail-on {part!r}: {name} changes in {want}")
        value = float(number) / (100.0 if unit == "%" else 1.0)
        rules.append(Rule(part, name, op == ">", value, unit))
    if not rules:
        raise GpulensError("--fail-on: no rule given (e.g. step_time>+5%)")
    return rules


def check(comparison: Comparison, rules: list[Rule]) -> list[RuleResult]:
    """Each rule against the comparison; a metric the runs do not both have is a GpulensError (bad input)."""
    out = []
    for rule in rules:
        if rule.metric == STATUS_RULE:
            unfinished = unfinished_sides(comparison)
            out.append(RuleResult(rule.text, STATUS_RULE, bool(unfinished),
                                  "; ".join(unfinished) if unfinished else "both runs finished"))
            continue
        m = comparison.metric(rule.metric)
        if m is None and rule.metric == "energy_per_sample":
            m = comparison.metric("energy_per_step")
        if m is None or m.change is None:
            why = (m.note if m is not None and m.note else "not recorded in both runs")
            raise GpulensError(f"--fail-on {rule.text}: cannot check {rule.metric}: {why}")
        shown = change_text(m)
        past = m.change > rule.threshold if rule.above else m.change < rule.threshold
        if past and m.significant:
            out.append(RuleResult(rule.text, m.name, True, f"{m.label} {shown}: past {rule.text}"))
        elif past:
            out.append(RuleResult(rule.text, m.name, False, f"{m.label} {shown}: past the threshold but within "
                                                            "the noise (the interval includes no change)"))
        else:
            out.append(RuleResult(rule.text, m.name, False, f"{m.label} {shown}"))
    return out


def unfinished_sides(comparison: Comparison) -> list[str]:
    """``["candidate crashed (no heartbeat for 40 s)"]``: each run that did not finish, in words."""
    out = []
    for role, side in (("base", comparison.base), ("candidate", comparison.candidate)):
        status = side.get("status") or "finished"
        if status != "finished":
            reason = side.get("status_reason")
            out.append(f"{role} {status}" + (f" ({reason})" if reason else ""))
    return out


def change_text(m: Metric, with_interval: bool = True) -> str:
    """``+21.3% (95% CI +19.8% to +22.9%)``, or ``+3.1 pp (...)`` for shares."""
    if m.change is None:
        return "n/a"
    text = f"{m.change:+.1f} pp" if m.unit == "pp" else _pct(m.change)
    return text + (f" (95% CI {interval_text(m)})" if with_interval and m.low is not None else "")


def interval_text(m: Metric) -> str:
    """``+19.8% to +22.9%`` ("exact" for figures without a distribution)."""
    if m.low is None or m.high is None:
        if m.change is None:
            return ""
        return "exact" if m.exact else "one figure" if m.name in ONE_FIGURE else "too few points"
    if m.unit == "pp":
        return f"{m.low:+.1f}..{m.high:+.1f}"
    return f"{_pct(m.low)}..{_pct(m.high)}"


def _pct(x: float) -> str:
    return f"{x:+.0%}" if abs(x) >= 1 else f"{x:+.1%}"

