"""Runs every rule and ranks what they say: severity, then expected gain."""
from __future__ import annotations

from collections.abc import Callable

from gpulens.profiler.analysis.advisor.measure import Measurements
from gpulens.profiler.analysis.advisor.model import Advice, NotEvaluated, Suggestion, rank_key
from gpulens.profiler.analysis.advisor.rules import (
    bandwidth,
    batch,
    input,
    optimizer,
    parallelism,
    precision,
    thermal,
    utilization,
)
from gpulens.profiler.store.reader import RunReader

Rule = Callable[[Measurements], "Suggestion | NotEvaluated | None"]

RULES: tuple[Rule, ...] = (
    input.dataloader_bound, input.dataloader_kind,
    utilization.low_gpu_busy, utilization.launch_bound, utilization.sync_points,
    batch.batch_headroom, batch.lr_scaling_rule, batch.memory_limit, batch.fragmentation, batch.grad_accumulation,
    precision.no_mixed_precision, precision.tf32_off, precision.gemm_alignment, precision.channels_last,
    bandwidth.bandwidth_bound, optimizer.slow_optimizer,
    parallelism.dataparallel, parallelism.ddp_backend, parallelism.comm_bound, parallelism.strategy,
    parallelism.idle_gpus, parallelism.straggler, thermal.throttling,
)

#: Causes that explain an idle GPU; when one fires, low_gpu_busy is only the symptom.
CAUSES = {"dataloader_bound", "launch_bound", "sync_points", "batch_headroom", "straggler", "comm_bound"}


def advise_measurements(m: Measurements) -> Advice:
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
    fired = {s.id for s in suggestions}
    for s in suggestions:
        if s.id == "low_gpu_busy" and fired & CAUSES:
            s.severity = "low"
            s.finding += f" (explained above: {', '.join(sorted(fired & CAUSES))})"
    suggestions.sort(key=rank_key)
    return Advice(m.run_id, suggestions, missing)


def advise(run: RunReader) -> Advice:
    """The ranked suggestions for ``run`` (through :class:`RunAnalysis`, like every caller)."""
    from gpulens.profiler.analysis.run_analysis import RunAnalysis

    return RunAnalysis(run).advice
