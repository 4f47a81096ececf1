"""The measurements the rules read, gathered once from a run through the reader API.

Everything is optional: a CPU run has no GPU figures, a run without profiler
windows has no kernel figures, a run without a batch-size probe has no
memory model.  Rules check for what they need and say so when it is absent.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from msgspec import UNSET

from gpulens.profiler.analysis.gpus import max_over_gpus, mean_over_gpus, ratio_over_gpus, worst_throttle
from gpulens.profiler.analysis.kernel_view import combine, steps_in_windows
from gpulens.profiler.analysis.phase_activity import PhaseActivity, activity_by_phase, window_means
from gpulens.profiler.analysis.report import (
    GemmShape,
    KernelRow,
    Launch,
    MetricStats,
    PhaseGpuBusy,
    Report,
    SyncCalls,
    WhatIf,
    WindowEntry,
)
from gpulens.profiler.analysis.shifts import Change, Shift, changes_around, find_shifts
from gpulens.profiler.analysis.trace.result import TraceAnalysis
from gpulens.profiler.store import loader_workers
from gpulens.profiler.store.metrics import unit_of
from gpulens.profiler.store.reader import RunReader, Window
from gpulens.profiler.store.schema import PHASES


@dataclass
class RankTiming:
    rank: int
    steps: int
    step_s: float | None  # median steady step time
    compute_s: float | None  # the part of the step that is not waiting in collectives
    comm_s: float | None  # time in communication (profiler windows), per step
    phases_s: dict[str, float] = field(default_factory=dict)  # median host phase times
    node_rank: int = 0
    hostname: str | None = None


@dataclass
class Measurements:
    """What the advisor knows of a run, grouped by concern; units in the names (``_pct`` 0-100, ``_share``
    0-1, ``_bytes``, ``_cores``, ``_s``) or stated for the group."""

    # the run
    run_id: str
    imported: bool = False
    recorded_by: str = "track"  # track | gpulens run | import: what a hint tells the user to do
    running: bool = False
    t_start: float | None = None
    t_end: float | None = None
    steps: int = 0
    steady_steps: int = 0  # steps outside warm-up, profiler windows, compiling and what-ifs
    span_s: float | None = None  # the first step's start to the last step's end: the steps and what lay between

    # the step loop (seconds; shares are fractions 0-1 of the steady steps' time)
    step_s: float | None = None
    phase_share: dict[str, float] = field(default_factory=dict)
    gpu_phase_share: dict[str, float] | None = None
    phase_share_typical: dict[str, float] = field(default_factory=dict)
    phase_share_median: dict[str, float] = field(default_factory=dict)
    outlier_steps: int = 0
    samples_per_step: float | None = None
    tokens_per_step: float | None = None
    batch_size: float | None = None
    target_batch: float | None = None
    what_if: WhatIf | None = None  # a measured what-if's result (report key what_if)

    # the GPUs (NVML and GPM readings in percent 0-100, over the run; ratios 0-1)
    device: str = "cpu"  # cuda | cpu
    gpu_name: str | None = None
    compute_capability: float | None = None
    n_visible_gpus: int = 0
    gpu_busy_pct: float | None = None
    gpu_busy_pct_per_gpu: list[float] = field(default_factory=list)
    sm_active_pct: float | None = None
    tensor_active_pct: float | None = None
    dram_bw_pct: float | None = None
    sm_active_windows: tuple[float | None, float | None] = (None, None)  # GPM SM activity in, out of windows
    throttle: dict[str, float] = field(default_factory=dict)
    power_ratio: float | None = None
    sm_clock_ratio: float | None = None  # mean SM clock over the GPU's maximum
    phase_activity: PhaseActivity | None = None

    # memory (bytes; fragmentation a fraction 0-1)
    gpu_memory_total_bytes: float | None = None
    gpu_mem_used_max_bytes: float | None = None
    peak_allocated_bytes: float | None = None
    peak_reserved_bytes: float | None = None
    fragmentation: float | None = None
    probes: list[dict[str, float]] = field(default_factory=list)
    probe_capacity_bytes: float | None = None
    probe_device: str | None = None

    # the host (CPU in cores, or percent where named _pct)
    cpu_count: int | None = None
    workers: float | None = None
    worker_starts: loader_workers.LoaderWorkers | None = None  # starting the DataLoader workers (each epoch?)
    workers_cpu_cores: float | None = None
    proc_cpu_cores: float | None = None
    host_cpu_pct: float | None = None
    disk_read_bps: float | None = None
    host_busy_cores: float | None = None  # mean busy cores of the whole host
    cpu_steal_pct: float | None = None
    cpu_pressure_pct: float | None = None  # PSI: time some task waited for a CPU
    runnable: float | None = None  # mean runnable tasks on the host
    others: dict[str, Any] | None = None  # other processes' CPU by name (sampler metadata cpu_others)
    # the training thread's data waits (run metadata data_wait_cpu): shares of their time it ran, or stood
    # runnable in the run queue; the rest it was blocked (workers, storage)
    wait_cpu_share: float | None = None
    wait_runnable_share: float | None = None

    # the profiler windows' kernels (shares are fractions 0-1 of kernel or stream time)
    has_kernels: bool = False
    windows: list[WindowEntry] = field(default_factory=list)
    kernel_busy_pct: float | None = None
    tc_share: float | None = None
    tc_eligible_share: float | None = None
    category_share: dict[str, float] = field(default_factory=dict)
    transpose_share: float | None = None
    fp32_gemm_share: float | None = None
    top_kernels: list[KernelRow] = field(default_factory=list)
    launch: Launch | None = None
    host_wait_share: float | None = None  # GPU idle time attributed to the host, over stream idle time
    sync: dict[str, SyncCalls] = field(default_factory=dict)
    sync_per_step: float | None = None
    step_breakdown: dict[str, float] = field(default_factory=dict)
    loader_share_trace: float | None = None  # the plugin's DataLoader share of profiled steps
    comm_share: float | None = None
    gemm_shapes: list[GemmShape] = field(default_factory=list)
    phase_gpu_busy: PhaseGpuBusy | None = None  # from the windows' gpulens ranges: exact, profiled steps only
    mfu_pct: float | None = None
    flops_by_dtype: dict[str, float] = field(default_factory=dict)

    # the model and its optimizer
    params: int | None = None
    param_bytes: float | None = None
    optimizer: str | None = None
    optimizer_impl: str | None = None
    optimizer_device: str | None = None
    torch_version: str | None = None  # which implementations exist (fused CPU optimizers since 2.4)
    model_wrapper: str | None = None

    # distributed training
    ddp_backend: str | None = None
    world_size: int = 1
    local_world_size: int = 1
    ranks: list[RankTiming] = field(default_factory=list)

    # lasting step-time changes, with what changed around them
    shifts: list[Shift] = field(default_factory=list)
    shift_context: dict[int, list[Change]] = field(default_factory=dict)  # shift step -> series that moved
    shift_events: dict[int, list[str]] = field(default_factory=dict)  # shift step -> events near it
    shift_windows: dict[int, Window] = field(default_factory=dict)  # shift step -> the window captured while slow


_FP32_GEMM = ("sgemm", "ffma", "f32f32_f32f32", "simt")


def _mean(metrics: dict[str, MetricStats], name: str) -> float | None:
    m = metrics.get(name)
    return m.mean if m is not None else None


def worker_load(run: RunReader) -> tuple[float | None, float | None]:
    """Mean number of DataLoader workers and their CPU (cores), while they were alive.

    Averaged over the whole run, the time before workers start and between
    epochs (workers torn down) counts as zero workers and zero CPU, so busy
    workers of a short run read as half-idle.  Only readings whose workers
    also existed at the previous reading count: a child first seen
    contributes CPU from its next reading on; workers seen in one reading
    only (a run that trained for a second or two) give their count, not
    their CPU.  A ``num-workers`` what-if's workers are not the run's: the
    readings of its stretch are left out.
    """
    count, cpu = run.series("workers.count"), run.series("workers.cpu")
    if count is None or cpu is None or not len(count) or not len(cpu):
        return None, None
    alive = count.v > 0
    span = what_if_workers_span(run)
    if span is not None:
        alive &= (count.t < span[0]) | (count.t > span[1])
    both = alive[1:] & alive[:-1]
    t_ok = count.t[1:][both]
    at = np.searchsorted(cpu.t, t_ok)
    ok = (at < len(cpu.t)) & (cpu.t[np.minimum(at, len(cpu.t) - 1)] == t_ok)
    if not ok.any():
        if alive.any():
            return float(count.v[alive].mean()), None
        return (0.0, 0.0) if span is not None else (float(count.v.mean()), float(cpu.v.mean()))
    return float(count.v[1:][both][ok].mean()), float(cpu.v[at[ok]].mean())


def what_if_workers_span(run: RunReader) -> tuple[float, float] | None:
    """When a ``num-workers`` what-if's own workers were alive: from its stretch's first step to a reading
    (1 s) after its settling steps (they shut down when the stretch ends); None without one."""
    plan = run.info.meta.get("what_if")
    if not isinstance(plan, dict) or plan.get("kind") != "num-workers" or plan.get("status") not in ("done",
                                                                                                   "cut short"):
        return None
    first = run.step_span(int(plan.get("first_step") or 0))
    last_step = int(plan.get("last_step") or 0)
    last = run.step_span(last_step + int(plan.get("settle_steps") or 0)) or run.step_span(last_step)
    if first is None:
        return None
    return first[0], (last[1] if last is not None else first[1]) + 1.0


def recorded_by(meta: dict[str, Any]) -> str:
    """``gpulens run`` (automatic steps) or ``track`` (the training code calls gpulens)."""
    if meta.get("recorded_by"):
        return str(meta["recorded_by"])
    return "gpulens run" if "auto" in meta else "track"  # runs recorded before the key existed


def measure(run: RunReader, done: list[tuple[Window, TraceAnalysis]], report: Report) -> Measurements:
    """Measurements of a run from its window analyses (``(window, analysis)`` pairs) and report figures
    (:class:`~gpulens.profiler.analysis.run_analysis.RunAnalysis` hands them in)."""
    meta = run.info.meta
    m = Measurements(run_id=run.info.id, imported=bool(meta.get("imported")))
    m.recorded_by = "import" if m.imported else recorded_by(meta)
    m.t_start, m.t_end = run.info.start, run.info.end
    gpus = report.gpus
    if gpus:
        g0 = gpus[0]
        m.gpu_name = g0.name
        m.compute_capability = float(g0.compute_capability) if g0.compute_capability else None
        m.gpu_memory_total_bytes = g0.memory_total_bytes
        m.n_visible_gpus = len(gpus)
        m.gpu_busy_pct_per_gpu = [(_mean(g.metrics, "gpu.util") or 0.0) for g in gpus]
        # every GPU, as the report's cards: on a multi-GPU or multi-node run GPU 0 is one of many
        m.gpu_busy_pct = mean_over_gpus(gpus, "gpu.util")
        m.sm_active_pct = mean_over_gpus(gpus, "gpm.sm_active")
        m.tensor_active_pct = mean_over_gpus(gpus, "gpm.tensor_active")
        m.dram_bw_pct = mean_over_gpus(gpus, "gpm.dram_bw")
        m.gpu_mem_used_max_bytes = max_over_gpus(gpus, "gpu.mem_used")
        m.throttle = worst_throttle(gpus)
        max_clocks = {g.get("index"): g.get("max_sm_clock_mhz") for g in run.info.gpus or []}
        m.sm_clock_ratio = ratio_over_gpus(gpus, "gpu.sm_clock", [max_clocks.get(g.index) for g in gpus])
        m.power_ratio = ratio_over_gpus(gpus, "gpu.power", [_mean(g.metrics, "gpu.power_limit") for g in gpus])
    st = report.step_time
    m.steps = report.steps
    m.steady_steps = st.steady
    m.running = run.info.status == "running"
    m.step_s = st.median_s
    m.phase_share = {k: v.share for k, v in st.phases.items() if v.share is not None}
    gp = st.gpu_phases
    if gp is not UNSET:
        m.gpu_phase_share = {k: v.share for k in PHASES if (v := getattr(gp, k)).share is not None}
    tp = report.throughput
    if tp.steps_per_s:
        if tp.samples_per_s:
            m.samples_per_step = tp.samples_per_s / tp.steps_per_s
        if tp.tokens_per_s:
            m.tokens_per_step = tp.tokens_per_s / tp.steps_per_s
    host = report.host.metrics
    m.workers, m.workers_cpu_cores = worker_load(run)
    m.worker_starts = loader_workers.read(meta)
    m.proc_cpu_cores = _mean(host, "proc.cpu")
    m.host_cpu_pct = _mean(host, "host.cpu")
    m.disk_read_bps = _mean(host, "host.disk_read")
    cpu_count = report.host.info.get("cpu_count")
    m.cpu_count = cpu_count if isinstance(cpu_count, int) else None

    m.has_kernels = report.trace_analysis.has_gpu
    m.device = "cuda" if (m.has_kernels or report.memory.cuda_peak_allocated_bytes or gpus and
                          m.gpu_busy_pct and m.gpu_busy_pct > 0) else "cpu"
    m.tc_share = report.tensor_core_share
    m.tc_eligible_share = report.tc_eligible_share
    cats = report.categories_us
    total = sum(v for k, v in cats.items() if k not in ("memcpy", "memset")) or 0.0
    if total > 0:
        m.category_share = {k: v / total for k, v in cats.items()}
        kernels = report.kernels
        m.transpose_share = sum(k.total_us for k in kernels
                                if "nchwtonhwc" in k.name.lower() or "nhwctonchw" in k.name.lower()) / total
        m.fp32_gemm_share = sum(k.total_us for k in kernels if k.category in ("gemm", "convolution")
                                and not k.tensor_core and any(p in k.name.lower() for p in _FP32_GEMM)) / total
        m.top_kernels = kernels[:10]
    if report.gpu_summary:
        m.kernel_busy_pct = report.gpu_summary[0].gpu_utilization_pct
    m.launch = report.launch
    idle = report.idle
    idle_total = sum(r.idle_us for r in idle)
    if idle_total > 0:
        m.host_wait_share = sum(r.host_wait_us for r in idle) / idle_total
    m.sync = report.sync
    sb = report.step_breakdown_us
    m.step_breakdown = sb
    if sb.get("Total"):
        m.loader_share_trace = sb.get("DataLoader", 0.0) / sb["Total"]
        m.comm_share = sb.get("Communication", 0.0) / sb["Total"]
        n_steps = steps_in_windows(report.windows) or 1
        sync_calls = sum(v.calls for k, v in m.sync.items() if not k.startswith("Memcpy"))
        m.sync_per_step = sync_calls / n_steps
    m.gemm_shapes = report.gemm_shapes
    m.phase_gpu_busy = report.phase_gpu_busy
    m.what_if = report.what_if
    mem = report.memory
    m.peak_allocated_bytes = mem.cuda_peak_allocated_bytes
    m.peak_reserved_bytes = mem.cuda_peak_reserved_bytes
    steps = run.steps()
    if len(steps):
        m.span_s = float(np.max(steps.t_end) - np.min(steps.t_start))
    if len(steps) and np.isfinite(steps.mem_reserved).any():
        # reserved memory never used even at the allocation peak: what the allocator holds but cannot use
        ok = np.isfinite(steps.mem_reserved) & np.isfinite(steps.mem_peak) & (steps.mem_reserved > 0)
        if ok.any():
            frag = (steps.mem_reserved[ok] - steps.mem_peak[ok]) / steps.mem_reserved[ok]
            m.fragmentation = float(np.clip(np.max(frag), 0.0, 1.0))
    mfu = report.mfu
    m.mfu_pct = mfu.mfu_pct
    m.flops_by_dtype = dict(mfu.by_dtype)
    m.probes = list(meta.get("batch_probe", {}).get("points", []))
    m.probe_capacity_bytes = meta.get("batch_probe", {}).get("capacity_bytes")
    m.probe_device = meta.get("batch_probe", {}).get("device")
    model = meta.get("model") or {}
    m.params = model.get("params")
    m.param_bytes = model.get("param_bytes")
    m.optimizer = model.get("optimizer")
    m.optimizer_impl = model.get("optimizer_impl")
    m.optimizer_device = model.get("optimizer_device")
    seen = meta.get("optimizers") or []  # gpulens run: the optimizers as they stepped
    if seen and isinstance(seen[0], dict):
        m.optimizer = m.optimizer or seen[0].get("type")
        m.optimizer_impl = m.optimizer_impl or seen[0].get("impl")
        m.optimizer_device = m.optimizer_device or seen[0].get("device")
    m.torch_version = meta.get("torch_version") if isinstance(meta.get("torch_version"), str) else None
    m.model_wrapper = model.get("wrapper")
    m.ddp_backend = meta.get("distributed_backend")
    m.batch_size = meta.get("batch_size") or m.samples_per_step
    m.target_batch = meta.get("target_batch")
    m.world_size = int(meta.get("world_size") or 1)
    m.local_world_size = int(meta.get("local_world_size") or 1)
    m.windows = report.windows
    m.ranks = _rank_timings(run, done)
    _host_contention(m, host, meta)
    _per_step(m, steps)
    _shifts(m, run, steps)
    _gpu_by_phase(m, run, steps)
    return m


def _host_contention(m: Measurements, host: dict[str, MetricStats], meta: dict[str, Any]) -> None:
    cpu = _mean(host, "host.cpu")
    if cpu is not None and m.cpu_count:
        m.host_busy_cores = cpu / 100.0 * m.cpu_count
    m.cpu_steal_pct = _mean(host, "host.cpu_steal")
    m.cpu_pressure_pct = _mean(host, "host.cpu_pressure")
    m.runnable = _mean(host, "host.runnable")
    others = meta.get("cpu_others")
    waits = meta.get("data_wait_cpu")
    if isinstance(waits, dict) and _pos(waits.get("wall_s")) and _pos(waits.get("waits")):
        wall = float(waits["wall_s"])
        m.wait_cpu_share = min(1.0, max(0.0, float(waits.get("cpu_s") or 0.0) / wall))
        m.wait_runnable_share = min(1.0 - m.wait_cpu_share, max(0.0, float(waits.get("runnable_s") or 0.0) / wall))
    m.others = others if isinstance(others, dict) and isinstance(others.get("top"), list) else None


def _pos(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0 and v == v and v != float("inf")


def _per_step(m: Measurements, steps: Any) -> None:
    """Phase shares that a few extreme steps cannot dominate (a contended second, a GC pause)."""
    if not len(steps):
        return
    keep = steps.counted()
    d = steps.duration[keep]
    ok = np.isfinite(d) & (d > 0)
    if ok.sum() < 5:
        return
    med = float(np.median(d[ok]))
    q1, q3 = np.percentile(d[ok], [25, 75])
    limit = max(5 * med, q3 + 3 * (q3 - q1))
    normal = ok & (d <= limit)
    m.outlier_steps = int(ok.sum() - normal.sum())
    total = float(d[normal].sum())
    for p in PHASES:
        col = np.nan_to_num(getattr(steps, p)[keep])
        if total > 0:
            m.phase_share_typical[p] = float(col[normal].sum() / total)
        m.phase_share_median[p] = float(np.median(col[ok] / d[ok]))


#: Series compared just before and after a step-time change: what changed with it.
CONTEXT_HOST = ("host.cpu", "host.cpu_pressure", "host.cpu_steal", "proc.cpu", "workers.cpu", "proc.rss",
                "host.mem_used", "host.swap_used", "host.disk_read")
CONTEXT_GPU = ("gpu.sm_clock", "gpu.util", "gpu.mem_used", "gpu.power", "gpu.temp")


def _shifts(m: Measurements, run: RunReader, steps: Any) -> None:
    if not len(steps):
        return
    keep = steps.counted()
    m.shifts = find_shifts(steps.step[keep], steps.t_start[keep], steps.duration[keep],
                           {p: getattr(steps, p)[keep] for p in PHASES})
    if not m.shifts:
        return
    series: dict[str, tuple[np.ndarray, np.ndarray, str]] = {}
    for metric in CONTEXT_HOST:
        s = run.series(metric)
        if s is not None and len(s):
            series[metric] = (s.t, s.v, unit_of(metric))
    for metric in CONTEXT_GPU:
        s = run.series(metric, 0) if run.gpus_recorded() else None
        if s is not None and len(s):
            series[metric] = (s.t, s.v, unit_of(metric))
    events = run.events()
    captured = [w for w in run.windows() if (w.trigger or "").startswith("slowdown at step") and w.status == "ok"]
    for shift in m.shifts:
        inside = [w for w in captured if shift.step <= w.first_step <= shift.step + shift.steps_after]
        if inside:
            m.shift_windows[shift.step] = inside[0]
        reach = min(30.0, max(2.0, (shift.t - shift.t_from) / 2, (shift.t_to - shift.t) / 2))
        m.shift_context[shift.step] = changes_around(shift.t, series, reach)
        near = [e for e in events if abs(e.t - shift.t) <= max(2.0, reach / 3) and e.kind not in ("note",)]
        m.shift_events[shift.step] = [f"{e.kind}: {e.message}" for e in near[:3]]


def _gpu_by_phase(m: Measurements, run: RunReader, steps: Any) -> None:
    if m.device != "cuda" or not run.gpus_recorded() or not len(steps):
        return
    sm = run.series("gpm.sm_active", 0)
    if sm is None or not len(sm):
        return
    interval = float((run.info.meta.get("sampling") or {}).get("gpm_interval") or 0.2)
    m.phase_activity = activity_by_phase("gpm.sm_active", steps.t_start, steps.t_end,
                                         {p: getattr(steps, p) for p in PHASES}, sm.t, sm.v, interval,
                                         steady=steps.counted())
    m.sm_active_windows = window_means(sm.t, sm.v, [(w.t_start, w.t_end) for w in m.windows])


def _rank_timings(run: RunReader, done: list[tuple[Window, TraceAnalysis]]) -> list[RankTiming]:
    out = []
    node_of = {r: n for n in run.nodes() for r in n.ranks}
    for rank in run.ranks:
        steps = run.steps(rank, columns=PHASES)
        if not len(steps):
            continue
        keep = steps.counted()
        step_s = float(np.median(steps.duration[keep]))
        phases = {p: float(np.median(getattr(steps, p)[keep]))
                  for p in PHASES}
        mine = [a for w, a in done if w.rank == rank]
        comm_s = None
        if mine:
            sb = combine(mine).step_breakdown_us
            if sb.get("Total"):
                comm_s = sb.get("Communication", 0.0) / 1e6
        if comm_s is None:  # no window: the DDP all-reduce hook's per-step wall time (gloo)
            hooked = [e["@comm"] for e, k in zip(steps.extra, keep) if k and "@comm" in e]
            if hooked:
                comm_s = float(np.median(hooked))
        compute = step_s - comm_s if comm_s is not None else None
        node = node_of.get(rank)
        out.append(RankTiming(rank, int(len(steps)), step_s, compute, comm_s, phases,
                              node.node_rank if node else 0, node.hostname if node else None))
    return out
