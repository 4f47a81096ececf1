"""The typed ``gpulens report --json`` record (schema ``gpulens.report/1``).

Every section is a Struct whose fields are the documented report keys in
their printed order (docs/report.md), so the CLI, the dashboard, the notebook
and the advisor read attributes that mypy checks instead of string keys.
:class:`~gpulens.profiler.analysis.run_analysis.RunAnalysis` makes it from the
summary (:meth:`Report.from_parts` validates every value against these types:
a key the summary adds without a field here fails loudly, in the tests), and
:meth:`Report.as_dict` is what ``--json`` prints, byte for byte what it printed
before the sections were typed (tests/test_report_golden.py).

Keys that appear only sometimes (``max_s`` when there are steps, a counter's
``change``, ``gpu_phases`` when CUDA events timed the steps) are ``UNSET``
until then and are left out of the JSON, as before.  Maps keyed by a name the
run chose (metrics, phases, kernel categories, sync calls) stay ``dict``.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, TypeVar

import msgspec
import numpy as np
from msgspec import UNSET, UnsetType

from gpulens.profiler.analysis.section import Section

# rows the report prints as one trace's analysis has them, defined there (re-exported: report types live here)
from gpulens.profiler.analysis.trace.result import CpuOp as CpuOp
from gpulens.profiler.analysis.trace.result import GemmShape as GemmShape
from gpulens.profiler.analysis.trace.result import PhaseBusy as PhaseBusy
from gpulens.profiler.analysis.trace.result import PhaseGpuBusy as PhaseGpuBusy
from gpulens.profiler.analysis.trace.result import SyncCalls as SyncCalls
from gpulens.profiler.analysis.trace.result import TemporalRow as TemporalRow

if TYPE_CHECKING:  # the report holds the advice as printed; the advisor measures from the report
    from gpulens.profiler.analysis.advisor.model import Advice

T = TypeVar("T")
Number = int | float  # a value that prints as the summary computed it (an int stays "3", a float "3.0")


# ---- run -------------------------------------------------------------------------------------------------------

class RunInfo(Section, kw_only=True):
    id: str
    path: str
    name: str
    status: str
    status_reason: str | None
    start: float | None
    end: float | None
    duration_s: float | None
    ranks: list[int]
    replay: bool
    records_lost: dict[str, dict[str, int]]
    host: str | None
    command: list[str] | str | None
    torch_version: str | None
    gpulens_version: str | None
    world_size: int
    batch_size: int | None
    imported_from: object
    config: dict[str, object]


# ---- steps -----------------------------------------------------------------------------------------------------

class Excluded(Section, kw_only=True):
    """Steps left out of the step-time figures, by reason (a step may have several)."""

    warmup: int
    profiled: int
    what_if: int
    compiling: int


class CompileWork(Section, kw_only=True):
    """torch.compile's one-off work."""

    steps: int
    seconds: float
    first_steps: list[int]
    step_seconds: float


class PhaseTime(Section, kw_only=True):
    mean_s: float
    share: float | None


class GpuPhases(Section, kw_only=True):
    """CUDA-event times of the phases (the host's phases as the GPU ran them)."""

    steps_timed: int
    mean_step_s: float
    data_wait: PhaseTime
    forward: PhaseTime
    backward: PhaseTime
    optimizer: PhaseTime
    other: PhaseTime


class CommTime(Section, kw_only=True):
    """DDP all-reduce wall time measured by a communication hook (overlaps backward: not a phase)."""

    steps: int
    mean_s: float
    share: float


class StepTime(Section, kw_only=True):
    count: int
    steady: int
    excluded: Excluded
    compile: CompileWork | None
    mean_s: float | None
    median_s: float | None
    p90_s: float | None
    p99_s: float | None
    max_s: float | UnsetType = UNSET
    phases: dict[str, PhaseTime]
    gpu_phases: GpuPhases | UnsetType = UNSET
    custom_phases: dict[str, PhaseTime] | UnsetType = UNSET
    comm: CommTime | UnsetType = UNSET


class Throughput(Section, kw_only=True):
    steps_per_s: float | None
    samples_per_s: float | None
    tokens_per_s: float | None


class Loss(Section, kw_only=True):
    first: float
    last: float
    count: int


# ---- GPUs, nodes, ranks, host ----------------------------------------------------------------------------------

class MetricStats(Section, kw_only=True):
    """One sampled series: its unit and distribution; counters add their change, throttling its reasons."""

    unit: str
    count: int
    mean: float
    min: float
    p50: float
    p90: float
    p99: float
    max: float
    change: float | UnsetType = UNSET
    reasons: dict[str, float] | UnsetType = UNSET


class Gpu(Section, kw_only=True):
    index: int
    node_rank: int
    name: str | None
    uuid: str | None
    memory_total_bytes: int | None
    compute_capability: str | None
    gpm_supported: bool | None
    energy_j: float | None
    metrics: dict[str, MetricStats]
    not_available: dict[str, str]


class NodeGpu(Section, kw_only=True):
    index: int
    name: str | None
    uuid: str | None


class NodeEntry(Section, kw_only=True):
    node_rank: int
    hostname: str | None
    ranks: list[int]
    sampling_rank: int | None
    sampled_by: str
    status: str | None
    status_reason: str | None
    gpus: list[NodeGpu]
    gpu_busy_pct: float | None
    host_cpu_pct: float | None
    step_time_median_s: float | None
    steps: int
    clock_offset_s: float | None
    clock_uncertainty_s: float | None


class RankEntry(Section, kw_only=True):
    rank: int
    node_rank: int
    steps: int
    step_time_median_s: float | None


class NvmlState(Section, kw_only=True):
    available: bool
    reason: str | None
    driver_version: str | None
    cuda_driver_version: str | None


class Host(Section, kw_only=True):
    info: dict[str, object]
    metrics: dict[str, MetricStats]
    not_available: dict[str, str]


class Memory(Section, kw_only=True):
    cuda_peak_allocated_bytes: Number | None
    cuda_peak_reserved_bytes: Number | None
    gpu_memory_used_max_bytes: dict[str, Number | None]
    process_rss_max_bytes: Number | None
    workers_rss_max_bytes: Number | None


class SampleStream(Section, kw_only=True):
    count: int
    first: float | None
    last: float | None
    status: str


class RunEvent(Section, kw_only=True):
    t: float
    kind: str
    gpu: int | None
    message: str | None
    rank: int


# ---- MFU -------------------------------------------------------------------------------------------------------

class Peak(Section, kw_only=True):
    gpu: str
    tflops: dict[str, Number]
    source: str


class Mfu(Section, kw_only=True):
    flops_per_step: Number | None
    by_dtype: dict[str, Number]
    achieved_tflops: float | None
    mfu_pct: float | None
    peak: Peak | None
    reason: str | None
    available: bool
    source: str | None
    device: str | None
    counted_step: int | None | UnsetType = UNSET


# ---- profiler windows and kernels ------------------------------------------------------------------------------

class TraceState(Section, kw_only=True):
    available: bool
    reason: str | None
    has_gpu: bool


class WindowEntry(Section, kw_only=True):
    rank: int
    index: int
    first_step: int
    last_step: int
    t_start: float
    t_end: float
    path: str | None
    status: str
    trigger: str | None = None  # None: the schedule; "on demand" (gpulens profile, the live page)


class WindowError(Section, kw_only=True):
    rank: int
    window: int
    error: str


class KernelRow(Section, kw_only=True):
    name: str
    calls: int
    total_us: float
    mean_us: float
    max_us: float
    share: float
    category: str
    tensor_core: bool


class GpuSummaryRow(Section, kw_only=True):
    """The TensorBoard plugin's GPU summary of one rank's device."""

    rank: int
    device: int
    steps: int
    gpu_utilization_pct: float | None
    sm_efficiency_pct: float | None
    achieved_occupancy_pct: float | None
    tensor_core_pct: float | None


class Launch(Section, kw_only=True):
    kernels: int
    steps: int
    kernels_per_step: float | None
    median_kernel_us: float
    short_kernel_share: float | None
    shorter_than_launch_share: float | None
    median_launch_us: float | None
    median_launch_delay_us: float | None
    launch_delay_outliers: int
    runtime_outliers: int


class MemcpyRow(Section, kw_only=True):
    direction: str
    count: int
    bytes: Number
    total_us: float
    gb_per_s: float | None


class IdleRow(Section, kw_only=True):
    rank: int
    device: int
    stream: int
    idle_us: float
    host_wait_us: float
    kernel_wait_us: float
    other_us: float


# ---- what-if, energy -------------------------------------------------------------------------------------------

class WhatIf(Section, kw_only=True):
    kind: str | None
    status: str | None
    reason: str | None
    batch_size: int | None
    base_batch: int | None
    num_workers: int | None = None  # num-workers what-ifs
    base_workers: int | None = None  # num-workers what-ifs
    implementation: str | None = None  # optimizer what-ifs: fused | foreach
    first_step: int | None
    last_step: int | None
    measured_from_step: int | None = None  # where the measure starts (after new workers start)
    steps: int
    measure: str | None
    step_time_median_s: float | None
    baseline_step_time_median_s: float | None
    step_time_change: float | None
    step_time_change_ci: list[float] | None
    data_wait_median_s: float | None
    baseline_data_wait_median_s: float | None
    samples_per_s: float | None
    baseline_samples_per_s: float | None
    samples_per_s_change: float | None


class PhasePower(Section, kw_only=True):
    watts: float
    watts_se: float
    j_per_step: float


class Energy(Section, kw_only=True):
    available: bool
    reason: str | None
    source: str | None
    gpus: int
    total_j: float | None
    wh: float | None
    idle_j: float | None
    step_j_median: float | None
    step_j_mean: float | None
    per_sample_j: float | None
    per_token_j: float | None
    mean_power_w: float | None
    phases: dict[str, PhasePower]


# ---- the report ------------------------------------------------------------------------------------------------

class Report(Section, kw_only=True):
    """``gpulens report --json`` (schema ``gpulens.report/1``): one field per documented key, in its order."""

    schema: str
    run: RunInfo
    status: str
    status_reason: str | None
    records_lost: dict[str, dict[str, int]]
    duration_s: float | None
    steps: int
    step_time: StepTime
    throughput: Throughput
    loss: Loss | None
    gpus: list[Gpu]
    nodes: list[NodeEntry]
    ranks: list[RankEntry]
    nvml: NvmlState
    host: Host
    memory: Memory
    samples: dict[str, SampleStream]
    events: list[RunEvent]
    mfu: Mfu
    trace_analysis: TraceState
    windows: list[WindowEntry]
    window_errors: list[WindowError]
    kernels: list[KernelRow]
    categories_us: dict[str, float]
    tensor_core_share: float | None
    tc_eligible_share: float | None
    temporal_breakdown: list[TemporalRow]
    gpu_summary: list[GpuSummaryRow]
    step_breakdown_us: dict[str, float]
    launch: Launch | None
    sync: dict[str, SyncCalls]
    memcpy: list[MemcpyRow]
    idle: list[IdleRow]
    top_cpu_ops: list[CpuOp]
    gemm_shapes: list[GemmShape]
    phase_gpu_busy: PhaseGpuBusy | None
    what_if: WhatIf | None
    energy: Energy
    # the advice as printed (its typed form is RunAnalysis.advice; the advisor measures from this record, so
    # typing it here would tie the two in a cycle); absent when the report is asked for without it
    suggestions: dict[str, object] | UnsetType = UNSET

    @classmethod
    def from_parts(cls, summary: dict[str, Any], advice: Advice | None) -> Report:
        """The summary's figures, checked against the types above (a wrong shape is a bug: it raises)."""
        report = msgspec.convert(_plain(summary), cls)
        if advice is not None:
            report = report.with_advice(advice)
        return report

    def with_advice(self, advice: Advice) -> Report:
        """This report with the advice as ``suggestions``."""
        suggestions = _plain(advice.as_dict())
        assert isinstance(suggestions, dict)
        return msgspec.structs.replace(self, suggestions=suggestions)


def read_section(value: object, kind: type[T]) -> T:
    """A section of the report's JSON form (``as_dict()``, ``--json``, a dashboard summary) as its type."""
    return msgspec.convert(_plain(value), kind)


def _plain(value: object) -> object:
    """``value`` with numpy scalars as the Python numbers they hold (the analysis computes with numpy;
    ``float(np.float64(x))`` prints as ``x`` did)."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value
