"""The typed ``gpulens report --json`` record (schema ``gpulens.report/1``).

Its fields are the documented report keys, in their printed order
(docs/report.md); :class:`~gpulens.profiler.analysis.run_analysis.RunAnalysis`
makes it, the advisor measures from it, the CLI prints it.
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the report holds the advice as printed; the advisor measures from the report
    from gpulens.profiler.analysis.advisor.model import Advice


@dataclass
class Report:
    """``gpulens report --json`` (schema ``gpulens.report/1``): one field per documented key, in its order.

    The nested values keep the shapes the README's key table describes;
    :meth:`as_dict` is what is printed.
    """

    schema: str
    run: dict[str, Any]
    status: str
    status_reason: str | None
    records_lost: dict[str, dict[str, int]]
    duration_s: float | None
    steps: int
    step_time: dict[str, Any]
    throughput: dict[str, Any]
    loss: dict[str, Any] | None
    gpus: list[dict[str, Any]]
    nodes: list[dict[str, Any]]
    ranks: list[dict[str, Any]]
    nvml: dict[str, Any]
    host: dict[str, Any]
    memory: dict[str, Any]
    samples: dict[str, Any]
    events: list[dict[str, Any]]
    mfu: dict[str, Any]
    trace_analysis: dict[str, Any]
    windows: list[dict[str, Any]]
    window_errors: list[dict[str, Any]]
    kernels: list[dict[str, Any]]
    categories_us: dict[str, float]
    tensor_core_share: float | None
    tc_eligible_share: float | None
    temporal_breakdown: list[dict[str, Any]]
    gpu_summary: list[dict[str, Any]]
    step_breakdown_us: dict[str, float]
    launch: dict[str, Any] | None
    sync: dict[str, Any]
    memcpy: list[dict[str, Any]]
    idle: list[dict[str, Any]]
    top_cpu_ops: list[dict[str, Any]]
    gemm_shapes: list[dict[str, Any]]
    phase_gpu_busy: dict[str, Any] | None
    what_if: dict[str, Any] | None
    energy: dict[str, Any]
    suggestions: dict[str, Any] | None = field(default=None)

    @classmethod
    def from_parts(cls, summary: dict[str, Any], advice: Advice | None) -> Report:
        names = {f.name for f in fields(cls)}
        extra = set(summary) - names
        if extra:  # the summary and this record must name the same keys: a new key is documented here first
            raise ValueError(f"summary keys without a Report field: {sorted(extra)}")
        return cls(**summary, suggestions=advice.as_dict() if advice is not None else None)

    def as_dict(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        if out["suggestions"] is None:
            del out["suggestions"]
        return out
