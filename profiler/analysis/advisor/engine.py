"""Runs every rule and ranks what they say: severity, then expected gain."""
from __future__ import annotations

from collections.abc import Callable

from gpulens.profiler.analysis.advisor.measure import Measurements
from gpulens.profiler.analysis.advisor.model import SEVERITIES, Advice, NotEvaluated, Suggestion, rank_key
from gpulens.profiler.analysis.advisor.rules import (
    bandwidth,
    batch,
    host,
    input,
    optimizer,
    parallelism,
    precision,
    stability,
    thermal,
    utilization,
)

Rule = Callable[[Measurements], "Suggestion | NotEvaluated | None"]

RULES: tuple[Rule, ...] = (
    host.host_contention, stability.step_time_shift,
    input.dataloader_bound, input.dataloader_kind, input.worker_restarts,
    utilization.low_gpu_busy, utilization.launch_bound, utilization.sync_points,
    batch.batch_headroom, batch.lr_scaling_rule, batch.memory_limit, batch.fragmentation, batch.grad_accumulation,
    precision.no_mixed_precision, precision.tf32_off, precision.gemm_alignment, precision.channels_last,
    bandwidth.bandwidth_bound, optimizer.slow_optimizer,
    parallelism.dataparallel, parallelism.ddp_backend, parallelism.comm_bound, parallelism.strategy,
    parallelism.idle_gpus, parallelism.straggler, thermal.throttling,
)

#: Causes and the symptoms they explain.  When both fire the cause is listed first and the symptom says so;
#: an idle GPU (low_gpu_busy) is only a symptom once its cause is known.
EXPLAINS: dict[str, set[str]] = {
    "host_contention": {"dataloader_bound", "dataloader_kind", "slow_optimizer", "step_time_shift",
                        "launch_bound", "low_gpu_busy"},
    "dataloader_kind": {"dataloader_bound"},
    **{cause: {"low_gpu_busy"} for cause in ("dataloader_bound", "launch_bound", "sync_points", "batch_headroom",
                                             "straggler", "comm_bound")},
}

#: Time outside every step (workers started every epoch): a gain that is a share of the training time from the
#: first step to the last, not of the step, so it overlaps none of the step's parts and is left out of their
#: combined gain.
BETWEEN_STEPS = "between_steps"
#: The part of the step each suggestion would reclaim.  Two suggestions that share a part overlap: their gains
#: cannot be added.  An idle GPU (low_gpu_busy) is the sum of its causes' parts.
TIME_PARTS: dict[str, set[str]] = {
    "dataloader_bound": {"data_wait"}, "dataloader_kind": {"data_wait"},
    "launch_bound": {"launch"}, "sync_points": {"sync"},
    "low_gpu_busy": {"data_wait", "launch", "sync", "gpu_idle"},
    "batch_headroom": {"launch", "kernel_time"}, "grad_accumulation": {"launch", "kernel_time"},
    "no_mixed_precision": {"kernel_time"}, "tf32_off": {"kernel_time"}, "gemm_alignment": {"kernel_time"},
    "channels_last": {"kernel_time"}, "bandwidth_bound": {"kernel_time"}, "throttling": {"kernel_time"},
    "memory_limit": {"kernel_time"}, "slow_optimizer": {"optimizer"},
    "comm_bound": {"comm"}, "straggler": {"comm"}, "dataparallel": {"comm"}, "ddp_backend": {"comm"},
    "strategy": {"comm"},
    "worker_restarts": {BETWEEN_STEPS},
}


def _parts(s: Suggestion, m: Measurements) -> set[str]:
    if s.id == "host_contention":  # the CPU-bound part of the step: all of it on a CPU run
        return {"cpu", "data_wait", "optimizer", "kernel_time", "slow_steps"} if m.device != "cuda" else \
            {"data_wait", "launch", "slow_steps"}
    if s.id == "step_time_shift":
        moved = m.shifts[0].moved if m.shifts else None
        return {"slow_steps", *({moved} if moved in ("data_wait", "optimizer") else set())}
    parts = set(TIME_PARTS.get(s.id, {s.id}))
    if m.device != "cuda" and parts & {"kernel_time", "launch"}:
        parts.add("cpu")  # on a CPU run, compute and its overheads are the same CPU time
    return parts


def _explain(suggestions: list[Suggestion]) -> None:
    """Causes before the symptoms they explain, and the symptoms pointing at them."""
    fired = {s.id: s for s in suggestions}
    causes: dict[str, list[str]] = {}
    for cause, symptoms in EXPLAINS.items():
        if cause not in fired:
            continue
        for sid in sorted(symptoms & set(fired)):
            symptom = fired[sid]
            causes.setdefault(sid, []).append(cause)
            if sid == "low_gpu_busy":
                symptom.severity = "low"
            elif SEVERITIES.index(symptom.severity) < SEVERITIES.index(fired[cause].severity):
                fired[cause].severity = symptom.severity  # the cause matters as much as what it causes
    for sid, by in causes.items():
        fired[sid].finding += f" (explained by {', '.join(by)})"


def _order(suggestions: list[Suggestion]) -> list[Suggestion]:
    ranked = sorted(suggestions, key=rank_key)
    for cause, symptoms in EXPLAINS.items():
        ids = [s.id for s in ranked]
        if cause not in ids:
            continue
        first = min((ids.index(x) for x in symptoms if x in ids and x != "low_gpu_busy"), default=None)
        at = ids.index(cause)
        if first is not None and first < at:
            ranked.insert(first, ranked.pop(at))
    return ranked


def _overlaps(suggestions: list[Suggestion], m: Measurements) -> float | None:
    """Mark suggestions that claim the same time; the gain of all together, overlapping ones counted once."""
    parts = {s.id: _parts(s, m) for s in suggestions}
    for s in suggestions:
        s.overlaps = [o.id for o in suggestions if o.id != s.id and parts[s.id] & parts[o.id]]
    # groups of overlapping suggestions with a gain; each group saves at most its largest gain, and groups
    # claim disjoint parts of the step (gains are fractions of the same, original step time): they add up
    gainful = [s for s in suggestions if s.gain_fraction and BETWEEN_STEPS not in parts[s.id]]
    groups: list[set[str]] = []
    for s in gainful:
        linked = [g for g in groups if any(parts[s.id] & parts[x] for x in g)]
        groups = [g for g in groups if g not in linked] + [{s.id}.union(*linked)]
    gains = {s.id: s.gain_fraction or 0.0 for s in gainful}
    total = sum(max(gains[x] for x in g) for g in groups)
    return round(min(total, 0.99), 4) if groups else None


def advise_measurements(m: Measurements) -> Advice:
    if m.running and m.steady_steps == 0:  # warm-up, compiling, a profiler window: not the run's own pace yet
        return Advice(m.run_id, [], [], None, waiting=(
            f"suggestions come with the first steady step ({m.steps} step{'s' if m.steps != 1 else ''} so far, "
            "all warm-up, compiling or profiled)"))
    suggestions: list[Suggestion] = []
    missing: list[NotEvaluated] = []
    for rule in RULES:
        try:
            out = rule(m)
        except Exception as exc:  # a rule bug must not hide the other rules' advice
            missing.append(NotEvaluated(getattr(rule, "__name__", "rule"), f"rule failed: {type(exc).__name__}: {exc}"))
            continue
        if isinstance(out, Suggestion):
            suggestions.append(out)
        elif isinstance(out, NotEvaluated):
            missing.append(out)
    _explain(suggestions)
    combined = _overlaps(suggestions, m)
    return Advice(m.run_id, _order(suggestions), missing, combined)

