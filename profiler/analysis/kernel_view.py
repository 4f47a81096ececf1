"""The kernel-level view of a run: all of its profiler windows, analysed and combined.

Each window trace is analysed on its own (:mod:`gpulens.profiler.analysis.trace.analysis`,
through :class:`~gpulens.profiler.analysis.run_analysis.RunAnalysis`) and the
results are combined across windows and ranks: times add up, shares are
recomputed from the sums, per-device GPU figures are averaged weighted by
window length.  Runs without windows get the same keys, empty, with the
reason.
"""
from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable, Sequence
from typing import TypeVar

import msgspec
import numpy as np

from gpulens.profiler.analysis.report import GpuSummaryRow, IdleRow, Launch, MemcpyRow, WindowEntry, WindowError
from gpulens.profiler.analysis.section import Section
from gpulens.profiler.analysis.trace.gpu_summary import ROLES
from gpulens.profiler.analysis.trace.phase_busy import combine_phase_busy
from gpulens.profiler.analysis.trace.result import (
    CpuOp,
    GemmShape,
    KernelStat,
    PhaseGpuBusy,
    SyncCalls,
    TemporalRow,
    TraceAnalysis,
)
from gpulens.profiler.store.reader import Window

R = TypeVar("R", bound=Section)
GPU_FIELDS = ("gpu_utilization_pct", "sm_efficiency_pct", "achieved_occupancy_pct", "tensor_core_pct")


class KernelView(Section, kw_only=True):
    """Windows and ranks combined: the report's kernel keys, and the kernels page's tables."""

    available: bool
    reason: str | None
    has_gpu: bool
    kernels: list[KernelStat]
    categories_us: dict[str, float]
    tensor_core_share: float | None
    tc_eligible_share: float | None
    temporal_breakdown: list[TemporalRow]
    gpu_summary: list[GpuSummaryRow]
    step_breakdown_us: dict[str, float]  # the plugin's categories and "Total", mean per profiled step
    launch: Launch | None
    sync: dict[str, SyncCalls]
    memcpy: list[MemcpyRow]
    idle: list[IdleRow]
    top_cpu_ops: list[CpuOp]
    gemm_shapes: list[GemmShape]
    phase_gpu_busy: PhaseGpuBusy | None
    windows: list[WindowEntry] = []
    window_errors: list[WindowError] = []


def _merge(rows: Iterable[R], key: Callable[[R], Hashable], add: tuple[str, ...]) -> list[R]:
    """Rows with the same key as one (the first row's other fields), ``add`` fields summed, in first-seen order."""
    merged: dict[Hashable, R] = {}
    for row in rows:
        k = key(row)
        cur = merged.get(k)
        if cur is None:
            merged[k] = msgspec.structs.replace(row)
            continue
        for f in add:
            setattr(cur, f, getattr(cur, f) + getattr(row, f))
    return list(merged.values())


def combine(analyses: Sequence[TraceAnalysis]) -> KernelView:
    if not analyses:
        return empty("no profiler windows in this run")
    by_name: dict[str, KernelStat] = {}
    for a in analyses:
        for row in a.kernels:
            cur = by_name.get(row.name)
            if cur is None:
                by_name[row.name] = msgspec.structs.replace(row)
            else:
                cur.calls += row.calls
                cur.total_us += row.total_us
                cur.max_us = max(cur.max_us, row.max_us)
                cur.min_us = min(cur.min_us, row.min_us)
    grand = sum(k.total_us for k in by_name.values()) or 1.0
    for k in by_name.values():
        k.mean_us = k.total_us / k.calls
        k.share = k.total_us / grand
    kernel_list = sorted(by_name.values(), key=lambda k: -k.total_us)
    compute_time = sum(k.total_us for k in kernel_list if k.category not in ("memcpy", "memset"))
    tc_time = sum(k.total_us for k in kernel_list if k.tensor_core)
    categories: dict[str, float] = {}
    for k in kernel_list:
        categories[k.category] = categories.get(k.category, 0.0) + k.total_us

    temporal: dict[int, dict[str, float]] = {}
    for a in analyses:
        tb = a.temporal_breakdown
        if tb is None:
            continue
        rank_times = temporal.setdefault(tb.rank, {"idle_us": 0.0, "compute_us": 0.0, "non_compute_us": 0.0,
                                                   "span_us": 0.0})
        for f in rank_times:
            rank_times[f] += getattr(tb, f)
    temporal_rows = []
    for rank, t in sorted(temporal.items()):
        span = t["span_us"] or 1.0
        temporal_rows.append(TemporalRow(rank=rank, **t, idle_pct=round(100 * t["idle_us"] / span, 2),
                                         compute_pct=round(100 * t["compute_us"] / span, 2),
                                         non_compute_pct=round(100 * t["non_compute_us"] / span, 2)))

    weights: dict[tuple[int, int], float] = {}  # (rank, device) -> window time
    steps_of: dict[tuple[int, int], int] = {}
    sums: dict[tuple[int, int], dict[str, tuple[float, float]]] = {}
    for a in analyses:
        for dev_use in a.gpu_summary:
            dev_key = (a.rank, dev_use.device)
            w = dev_use.window_us or 0.0
            weights[dev_key] = weights.get(dev_key, 0.0) + w
            steps_of[dev_key] = steps_of.get(dev_key, 0) + dev_use.steps
            dev_sums = sums.setdefault(dev_key, {})
            for f in GPU_FIELDS:
                v = getattr(dev_use, f)
                if v is not None:
                    s, ws = dev_sums.get(f, (0.0, 0.0))
                    dev_sums[f] = (s + v * w, ws + w)
    gpu_rows = []
    for rank, dev in sorted(weights):
        dev_sums = sums[(rank, dev)]
        means = {f: (s / ws if ws else None) for f, (s, ws) in dev_sums.items()}
        gpu_rows.append(GpuSummaryRow(rank=rank, device=dev, steps=steps_of[(rank, dev)],
                                      **{f: means.get(f) for f in GPU_FIELDS}))

    steps = [s for a in analyses for s in a.step_breakdown.steps]
    labels = (*ROLES, "Other")
    step_breakdown = ({label: float(np.mean([s.breakdown_us[label] for s in steps])) for label in labels}
                      if steps else {})
    if steps:
        step_breakdown["Total"] = float(np.mean([s.duration_us for s in steps]))

    launches = [a.launch for a in analyses if a.launch]
    launch = None
    if launches:
        n = sum(row.kernels for row in launches)
        n_steps = sum(row.steps for row in launches)

        def wmean(field: str) -> float | None:
            vals = [(v, row.kernels) for row in launches if (v := getattr(row, field)) is not None]
            return sum(v * k for v, k in vals) / sum(k for _, k in vals) if vals else None

        launch = Launch(kernels=n, steps=n_steps, kernels_per_step=n / n_steps if n_steps else None,
                        median_kernel_us=float(np.median([row.median_kernel_us for row in launches])),
                        short_kernel_share=wmean("short_kernel_share"),
                        shorter_than_launch_share=wmean("shorter_than_launch_share"),
                        median_launch_us=wmean("median_launch_us"),
                        median_launch_delay_us=wmean("median_launch_delay_us"),
                        launch_delay_outliers=sum(row.launch_delay_outliers for row in launches),
                        runtime_outliers=sum(row.runtime_outliers for row in launches))

    sync: dict[str, SyncCalls] = {}
    for a in analyses:
        for name, calls in a.sync.items():
            seen = sync.get(name)
            if seen is None:
                sync[name] = SyncCalls(calls=calls.calls, total_us=calls.total_us)
            else:
                seen.calls += calls.calls
                seen.total_us += calls.total_us
    copies = _merge((c for a in analyses for c in a.memcpy), lambda c: c.direction, ("count", "bytes", "total_us"))
    memcpy = [MemcpyRow(direction=c.direction, count=c.count, bytes=c.bytes, total_us=c.total_us,
                        gb_per_s=c.bytes / (c.total_us * 1e3) if c.total_us else None) for c in copies]
    cpu_ops = sorted(_merge((o for a in analyses for o in a.cpu_ops), lambda o: o.name,
                            ("calls", "total_us", "self_us")), key=lambda r: -r.self_us)[:30]
    idle: dict[tuple[int, int, int], dict[str, float]] = {}
    for a in analyses:
        for waits in a.idle:
            stream_idle = idle.setdefault((waits.rank, waits.device, waits.stream),
                                          {"idle_us": 0.0, "host_wait_us": 0.0, "kernel_wait_us": 0.0, "other_us": 0.0})
            for f in stream_idle:
                stream_idle[f] += getattr(waits, f)
    eligible = [(a.tc_eligible_share, sum(k.total_us for k in a.kernels)) for a in analyses
                if a.tc_eligible_share is not None]
    gemms = _merge((g for a in analyses for g in a.gemm_shapes), lambda g: (g.op, g.m, g.n, g.k, g.dtype),
                   ("calls", "kernel_us"))
    has_gpu = any(a.has_gpu for a in analyses)
    return KernelView(
        available=True,
        reason=None if has_gpu else "no GPU activity in the profiler windows (CPU-only run)",
        has_gpu=has_gpu,
        kernels=kernel_list,
        categories_us=dict(sorted(categories.items(), key=lambda kv: -kv[1])),
        tensor_core_share=tc_time / compute_time if compute_time > 0 else None,
        tc_eligible_share=(sum(s * w for s, w in eligible) / sum(w for _, w in eligible)
                           if eligible and sum(w for _, w in eligible) > 0 else None),
        temporal_breakdown=temporal_rows,
        gpu_summary=gpu_rows,
        step_breakdown_us=step_breakdown,
        launch=launch,
        sync=dict(sorted(sync.items(), key=lambda kv: -kv[1].total_us)),
        memcpy=sorted(memcpy, key=lambda r: -r.total_us),
        idle=[IdleRow(rank=k[0], device=k[1], stream=k[2], **v) for k, v in sorted(idle.items())],
        top_cpu_ops=cpu_ops,
        gemm_shapes=sorted(gemms, key=lambda g: -g.kernel_us)[:50],
        phase_gpu_busy=combine_phase_busy([a.phase_gpu_busy for a in analyses]),
    )


def empty(reason: str) -> KernelView:
    return KernelView(available=False, reason=reason, has_gpu=False, kernels=[], categories_us={},
                      tensor_core_share=None, tc_eligible_share=None, temporal_breakdown=[], gpu_summary=[],
                      step_breakdown_us={}, launch=None, sync={}, memcpy=[], idle=[], top_cpu_ops=[], gemm_shapes=[],
                      phase_gpu_busy=None)


def steps_in_windows(windows: Sequence[WindowEntry]) -> int:
    """Steps the profiler windows hold, each rank's counted (the report's ``windows``): what the kernel
    view's per-step figures divide by, on every surface."""
    return sum(w.last_step - w.first_step + 1 for w in windows)


def kernel_view(done: list[tuple[Window, TraceAnalysis]], problems: list[WindowError]) -> KernelView:
    """The combined kernel view of analysed windows (and the windows that could not be read)."""
    out = combine([a for _, a in done])
    out.windows = [WindowEntry(rank=w.rank, index=w.index, first_step=w.first_step, last_step=w.last_step,
                               t_start=w.t_start, t_end=w.t_end, path=str(w.path) if w.path else None,
                               status=w.status, trigger=w.trigger) for w, _ in done]
    out.window_errors = list(problems)
    if not done and problems:
        out.reason = "no readable profiler window: " + problems[0].error
    return out
