"""What the analysis of one trace holds (:func:`~gpulens.profiler.analysis.trace.analysis.analyze`), typed.

The kernel view, the report, the advisor and the kernels page read these
attributes; the JSON cache beside each trace (:mod:`..window_cache`) is this
record as JSON, and reads back through the same types, so a damaged or foreign
cache file is a cache miss, not a wrong figure.  Rows the report prints as
they are (the temporal breakdown of a rank, sync calls, CPU operators, GEMM
shapes, phase GPU busy) are defined here once and the report uses them.
Maps keyed by names the trace chose (kernel categories, sync calls, the
TensorBoard plugin's step-breakdown labels, phases) stay ``dict``.
"""
from __future__ import annotations

from msgspec import UNSET, UnsetType

from gpulens.profiler.analysis.section import Section


class KernelStat(Section, kw_only=True):
    """One kernel (or memcpy/memset) name: its calls and device time."""

    name: str
    category: str
    tensor_core: bool
    calls: int
    total_us: float
    mean_us: float
    max_us: float
    min_us: float
    share: float  # of all GPU work time (kernels + memcpy + memset)


class TemporalRow(Section, kw_only=True):
    """HTA's temporal breakdown of one rank."""

    rank: int
    idle_us: float
    compute_us: float
    non_compute_us: float
    span_us: float
    idle_pct: float
    compute_pct: float
    non_compute_pct: float


class StreamSplit(Section, kw_only=True):
    """One device (``stream`` "all") or one stream: its span split by priority, compute first."""

    rank: int
    device: int
    stream: int | str
    events: int | UnsetType = UNSET  # per stream only
    span_us: float
    compute_us: float
    communication_us: float
    memcpy_us: float
    memset_us: float
    idle_us: float


class StreamIdle(Section, kw_only=True):
    """A stream's idle time, by what it waited for."""

    rank: int
    device: int
    stream: int
    idle_us: float
    host_wait_us: float
    kernel_wait_us: float
    other_us: float
    host_wait_share: float


class LaunchStats(Section, kw_only=True):
    """Kernel launches of one trace: sizes, CPU launch cost and delay."""

    kernels: int
    steps: int
    kernels_per_step: float | None
    median_kernel_us: float
    mean_kernel_us: float
    short_kernel_share: float
    shorter_than_launch_share: float | None
    median_launch_us: float | None
    median_launch_delay_us: float | None
    launch_delay_outliers: int
    runtime_calls: int
    runtime_outliers: int
    linked_share: float


class SyncCalls(Section, kw_only=True):
    calls: int
    total_us: float


class CopyStats(Section, kw_only=True):
    """Memory copies of one direction and memory kinds."""

    direction: str
    memory: str
    count: int
    bytes: float
    total_us: float
    gb_per_s: float | None


class CpuOp(Section, kw_only=True):
    name: str
    calls: int
    total_us: float
    self_us: float


class GemmShape(Section, kw_only=True):
    op: str
    m: int
    n: int
    k: int
    dtype: str
    calls: int
    kernel_us: float
    multiple: int
    misaligned: list[str]


class DeviceUse(Section, kw_only=True):
    """One device over a trace: the TensorBoard plugin's GPU utilization, SM efficiency, occupancy."""

    device: int
    steps: int
    window_us: float
    gpu_utilization_pct: float | None
    sm_efficiency_pct: float | None
    achieved_occupancy_pct: float | None
    tensor_core_pct: float | None


class ProfiledStep(Section, kw_only=True):
    name: str
    start_us: float
    end_us: float
    duration_us: float
    breakdown_us: dict[str, float]  # the plugin's categories ("Kernel", "Memcpy", ..., "Other")


class StepBreakdown(Section, kw_only=True):
    steps: list[ProfiledStep]
    average_us: dict[str, float]  # the categories and "Total"


class PhaseTimes(Section, kw_only=True):
    host_us: float
    gpu_busy_us: float


class WindowPhaseBusy(Section, kw_only=True):
    """GPU busy while the host was in each gpulens phase, in one trace (times only; shares once combined)."""

    steps: int
    ranges_us: float
    gpu_lag_us: float | None
    phases: dict[str, PhaseTimes]


class PhaseBusy(Section, kw_only=True):
    host_us: float
    gpu_busy_us: float
    gpu_busy_share: float | None


class PhaseGpuBusy(Section, kw_only=True):
    """Windows and ranks combined (:func:`..phase_busy.combine_phase_busy`): the report's ``phase_gpu_busy``."""

    steps: int
    ranges_us: float
    gpu_lag_us: float | None
    counted_share: float | None
    complete: bool
    reason: str | None
    phases: dict[str, PhaseBusy]


class TraceAnalysis(Section, kw_only=True):
    """Every analysis of one trace."""

    rank: int
    path: str
    events: int
    devices: list[dict[str, object]]  # the trace's deviceProperties, as Kineto wrote them
    has_gpu: bool
    note: str | None
    kernels: list[KernelStat]
    categories_us: dict[str, float]
    tensor_core_share: float | None
    tc_eligible_share: float | None
    temporal_breakdown: TemporalRow | None
    streams: list[StreamSplit]
    idle: list[StreamIdle]
    launch: LaunchStats | None
    sync: dict[str, SyncCalls]
    memcpy: list[CopyStats]
    cpu_ops: list[CpuOp]
    gemm_shapes: list[GemmShape]
    gpu_summary: list[DeviceUse]
    step_breakdown: StepBreakdown
    phase_gpu_busy: WindowPhaseBusy | None
