"""The measurements the rules read, gathered once from a run through the reader API.

Everything is optional: a CPU run has no GPU figures, a run without profiler
windows has no kernel figures, a run without a batch-size probe has no
memory model.  Rules check for what they need and say so when it is absent.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from gpulens.profiler.analysis.kernel_view import combine
from gpulens.profiler.analysis.report import Report
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


@dataclass
class Measurements:
    run_id: str
    imported: bool = False
    recorded_by: str = "track"  # track | gpulens run | import: what a hint tells the user to do
    device: str = "cpu"  # cuda | cpu
    gpu_name: str | None = None
    compute_capability: float | None = None
    gpu_memory_total: float | None = None
    n_visible_gpus: int = 0
    gpu_util_per_gpu: list[float] = field(default_factory=list)
    steps: int = 0
    step_s: float | None = None
    phase_share: dict[str, float] = field(default_factory=dict)
    gpu_phase_share: dict[str, float] | None = None
    loader_share_trace: float | None = None  # the plugin's DataLoader share of profiled steps
    samples_per_step: float | None = None
    tokens_per_step: float | None = None
    workers: float | None = None
    workers_cpu: float | None = None
    proc_cpu: float | None = None
    host_cpu_pct: float | None = None
    cpu_count: int | None = None
    disk_read_bps: float | None = None
    gpu_util: float | None = None
    sm_active: float | None = None
    tensor_active: float | None = None
    dram_bw: float | None = None
    kernel_util: float | None = None
    has_kernels: bool = False
    tc_share: float | None = None
    tc_eligible: float | None = None
    category_share: dict[str, float] = field(default_factory=dict)
    transpose_share: float | None = None
    fp32_gemm_share: float | None = None
    launch: dict[str, Any] | None = None
    host_wait_share: float | None = None  # GPU idle time attributed to the host, over stream idle time
    sync: dict[str, Any] = field(default_factory=dict)
    sync_per_step: float | None = None
    step_breakdown: dict[str, float] = field(default_factory=dict)
    comm_share: float | None = None
    gemm_shapes: list[dict[str, Any]] = field(default_factory=list)
    peak_allocated: float | None = None
    peak_reserved: float | None = None
    fragmentation: float | None = None
    gpu_mem_used_max: float | None = None
    mfu_pct: float | None = None
    flops_by_dtype: dict[str, float] = field(default_factory=dict)
    probes: list[dict[str, float]] = field(default_factory=list)
    probe_capacity: float | None = None
    probe_device: str | None = None
    params: int | None = None
    param_bytes: float | None = None
    optimizer: str | None = None
    model_wrapper: str | None = None
    ddp_backend: str | None = None
    batch_size: float | None = None
    target_batch: float | None = None
    world_size: int = 1
    local_world_size: int = 1
    ranks: list[RankTiming] = field(default_factory=list)
    throttle: dict[str, float] = field(default_factory=dict)
    power_ratio: float | None = None
    sm_clock_ratio: float | None = None  # mean SM clock over the GPU's maximum
    t_start: float | None = None
    t_end: float | None = None
    windows: list[dict[str, Any]] = field(default_factory=list)
    top_kernels: list[dict[str, Any]] = field(default_factory=list)


_FP32_GEMM = ("sgemm", "ffma", "f32f32_f32f32", "simt")


def _mean(metrics: dict[str, Any], name: str) -> float | None:
    m = metrics.get(name)
    return float(m["mean"]) if m else None


def _worker_load(run: RunReader) -> tuple[float | None, float | None]:
    """Mean number of DataLoader workers and their CPU (cores), while they were alive.

    Averaged over the whole run, the time before workers start and between
    epochs (workers torn down) counts as zero workers and zero CPU, so busy
    workers of a short run read as half-idle.  Only readings whose workers
    also existed at the previous reading count: a child first seen
    contributes CPU from its next reading on.
    """
    count, cpu = run.series("workers.count"), run.series("workers.cpu")
    if count is None or cpu is None or not len(count) or not len(cpu):
        return None, None
    alive = count.v > 0
    both = alive[1:] & alive[:-1]
    t_ok = count.t[1:][both]
    at = np.searchsorted(cpu.t, t_ok)
    ok = (at < len(cpu.t)) & (cpu.t[np.minimum(at, len(cpu.t) - 1)] == t_ok)
    if not ok.any():
        return float(count.v.mean()), float(cpu.v.mean())
    return float(count.v[1:][both][ok].mean()), float(cpu.v[at[ok]].mean())


def recorded_by(meta: dict[str, Any]) -> str:
    """``gpulens run`` (automatic steps) or ``track`` (the training code calls gpulens)."""
    if meta.get("recorded_by"):
        return str(meta["recorded_by"])
    return "gpulens run" if "auto" in meta else "track"  # runs recorded before the key existed


def measure(run: RunReader, done: list[tuple[Window, dict[str, Any]]], report: Report) -> Measurements:
    """Measurements of a run from its window analyses (``(window, analysis)`` pairs) and report figures
    (:class:`~gpulens.profiler.analysis.run_analysis.RunAnalysis` hands them in)."""
    meta = run.info.meta
    m = Measurements(run_id=run.info.id, imported=bool(meta.get("imported")))
    m.recorded_by = "import" if m.imported else recorded_by(meta)
    m.t_start, m.t_end = run.info.start, run.info.end
    gpus = report.gpus
    if gpus:
        g0 = gpus[0]
        m.gpu_name = g0["name"]
        m.compute_capability = float(g0["compute_capability"]) if g0.get("compute_capability") else None
        m.gpu_memory_total = g0.get("memory_total_bytes")
        m.n_visible_gpus = len(gpus)
        m.gpu_util_per_gpu = [(_mean(g["metrics"], "gpu.util") or 0.0) for g in gpus]
        m.gpu_util = _mean(g0["metrics"], "gpu.util")
        m.sm_active = _mean(g0["metrics"], "gpm.sm_active")
        m.tensor_active = _mean(g0["metrics"], "gpm.tensor_active")
        m.dram_bw = _mean(g0["metrics"], "gpm.dram_bw")
        m.gpu_mem_used_max = (g0["metrics"].get("gpu.mem_used") or {}).get("max")
        thr = (g0["metrics"].get("gpu.throttle") or {}).get("reasons") or {}
        m.throttle = {k: v for k, v in thr.items() if k != "gpu_idle"}
        clock = _mean(g0["metrics"], "gpu.sm_clock")
        max_clock = (run.info.gpus[0] or {}).get("max_sm_clock_mhz") if run.info.gpus else None
        m.sm_clock_ratio = clock / max_clock if clock and max_clock else None
        power = _mean(g0["metrics"], "gpu.power")
        limit = _mean(g0["metrics"], "gpu.power_limit")
        m.power_ratio = power / limit if power and limit else None
    st = report.step_time
    m.steps = report.steps
    m.step_s = st.get("median_s")
    m.phase_share = {k: v["share"] for k, v in (st.get("phases") or {}).items() if v.get("share") is not None}
    gp = st.get("gpu_phases")
    if gp:
        m.gpu_phase_share = {k: v["share"] for k, v in gp.items() if isinstance(v, dict) and v.get("share") is not None}
    tp = report.throughput
    if tp.get("steps_per_s"):
        if tp.get("samples_per_s"):
            m.samples_per_step = tp["samples_per_s"] / tp["steps_per_s"]
        if tp.get("tokens_per_s"):
            m.tokens_per_step = tp["tokens_per_s"] / tp["steps_per_s"]
    host = report.host["metrics"]
    m.workers, m.workers_cpu = _worker_load(run)
    m.proc_cpu = _mean(host, "proc.cpu")
    m.host_cpu_pct = _mean(host, "host.cpu")
    m.disk_read_bps = _mean(host, "host.disk_read")
    m.cpu_count = (report.host["info"] or {}).get("cpu_count")

    m.has_kernels = bool(report.trace_analysis["has_gpu"])
    m.device = "cuda" if (m.has_kernels or report.memory["cuda_peak_allocated_bytes"] or gpus and
                          m.gpu_util and m.gpu_util > 0) else "cpu"
    m.tc_share = report.tensor_core_share
    m.tc_eligible = report.tc_eligible_share
    cats = report.categories_us
    total = sum(v for k, v in cats.items() if k not in ("memcpy", "memset")) or 0.0
    if total > 0:
        m.category_share = {k: v / total for k, v in cats.items()}
        kernels = report.kernels
        m.transpose_share = sum(k["total_us"] for k in kernels
                                if "nchwtonhwc" in k["name"].lower() or "nhwctonchw" in k["name"].lower()) / total
        m.fp32_gemm_share = sum(k["total_us"] for k in kernels if k["category"] in ("gemm", "convolution")
                                and not k["tensor_core"] and any(p in k["name"].lower() for p in _FP32_GEMM)) / total
        m.top_kernels = kernels[:10]
    if report.gpu_summary:
        m.kernel_util = report.gpu_summary[0]["gpu_utilization_pct"]
    m.launch = report.launch
    idle = report.idle
    idle_total = sum(r["idle_us"] for r in idle)
    if idle_total > 0:
        m.host_wait_share = sum(r["host_wait_us"] for r in idle) / idle_total
    m.sync = report.sync
    sb = report.step_breakdown_us
    m.step_breakdown = sb
    if sb.get("Total"):
        m.loader_share_trace = sb.get("DataLoader", 0.0) / sb["Total"]
        m.comm_share = sb.get("Communication", 0.0) / sb["Total"]
        n_steps = sum(w["last_step"] - w["first_step"] + 1 for w in report.windows) or 1
        sync_calls = sum(v["calls"] for k, v in m.sync.items() if not k.startswith("Memcpy"))
        m.sync_per_step = sync_calls / n_steps
    m.gemm_shapes = report.gemm_shapes
    mem = report.memory
    m.peak_allocated = mem["cuda_peak_allocated_bytes"]
    m.peak_reserved = mem["cuda_peak_reserved_bytes"]
    steps = run.steps()
    if len(steps) and np.isfinite(steps.mem_reserved).any():
        # reserved memory never used even at the allocation peak: what the allocator holds but cannot use
        ok = np.isfinite(steps.mem_reserved) & np.isfinite(steps.mem_peak) & (steps.mem_reserved > 0)
        if ok.any():
            frag = (steps.mem_reserved[ok] - steps.mem_peak[ok]) / steps.mem_reserved[ok]
            m.fragmentation = float(np.clip(np.max(frag), 0.0, 1.0))
    mfu = report.mfu
    m.mfu_pct = mfu.get("mfu_pct")
    m.flops_by_dtype = mfu.get("by_dtype") or {}
    m.probes = list(meta.get("batch_probe", {}).get("points", []))
    m.probe_capacity = meta.get("batch_probe", {}).get("capacity_bytes")
    m.probe_device = meta.get("batch_probe", {}).get("device")
    model = meta.get("model") or {}
    m.params = model.get("params")
    m.param_bytes = model.get("param_bytes")
    m.optimizer = model.get("optimizer")
    m.model_wrapper = model.get("wrapper")
    m.ddp_backend = meta.get("distributed_backend")
    m.batch_size = meta.get("batch_size") or m.samples_per_step
    m.target_batch = meta.get("target_batch")
    m.world_size = int(meta.get("world_size") or 1)
    m.local_world_size = int(meta.get("local_world_size") or 1)
    m.windows = report.windows
    m.ranks = _rank_timings(run, done)
    return m


def _rank_timings(run: RunReader, done: list[tuple[Window, dict[str, Any]]]) -> list[RankTiming]:
    out = []
    for rank in run.ranks:
        steps = run.steps(rank)
        if not len(steps):
            continue
        keep = steps.steady() if steps.steady().any() else np.ones(len(steps), dtype=bool)
        step_s = float(np.median(steps.duration[keep]))
        phases = {p: float(np.median(getattr(steps, p)[keep]))
                  for p in PHASES}
        mine = [a for w, a in done if w.rank == rank]
        comm_s = None
        if mine:
            sb = combine(mine)["step_breakdown_us"]
            if sb.get("Total"):
                comm_s = sb.get("Communication", 0.0) / 1e6
        if comm_s is None:  # no window: the DDP all-reduce hook's per-step wall time (gloo)
            hooked = [e["@comm"] for e, k in zip(steps.extra, keep) if k and "@comm" in e]
            if hooked:
                comm_s = float(np.median(hooked))
        compute = step_s - comm_s if comm_s is not None else None
        out.append(RankTiming(rank, int(len(steps)), step_s, compute, comm_s, phases))
    return out
