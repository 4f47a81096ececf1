"""Temporal breakdown: idle / compute / non-compute GPU time, as HolisticTraceAnalysis defines it.

HTA's definitions (get_temporal_breakdown), reproduced so the figures agree:
GPU events are kernels, memcpys and memsets on a stream; those launched
from the last profiler step are dropped (the profiler may not have captured
all of its kernels); in traces with fractional (ns-resolution) timestamps,
starts are rounded up and ends down to whole µs; the span is first GPU
start to last GPU end; idle is the span minus the union of all GPU events;
compute is the union of computation kernels (not NCCL, not
memcpy/memset, not ``*Sync``); non-compute is the rest.

:func:`stream_breakdown` adds what HTA does not give: the same split per
device and per stream, with memcpy, memset and communication apart.
"""
from __future__ import annotations

import re
from typing import Any

import numpy as np

from gpulens.profiler.analysis.trace import intervals as iv
from gpulens.profiler.analysis.trace.model import Cat, Trace
from gpulens.profiler.analysis.trace.patterns import classify

_HTA_NOT_COMPUTE = re.compile(r"^nccl.*Kernel|.*Memcpy|Memset|.*Sync")


def hta_gpu_events(trace: Trace) -> np.ndarray:
    """Mask of the GPU events HTA keeps: launched before the last ProfilerStep began."""
    gpu = trace.gpu_work() & (trace.stream >= 0) & (trace.corr >= 0)
    steps = trace.mask(Cat.PROFILER_STEP)
    if int(steps.sum()) <= 1:
        return gpu
    last_step_start = float(trace.ts[steps].max())
    cpu = ~gpu & (trace.ts < last_step_start)
    launched = np.isin(trace.corr, np.unique(trace.corr[cpu & (trace.corr >= 0)]))
    return gpu & launched


def _hta_times(trace: Trace, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    ts, end = trace.ts[mask], trace.ends(mask)
    if np.any(trace.ts != np.floor(trace.ts)):  # ns-resolution trace: HTA rounds to whole µs
        ts, end = np.ceil(trace.ts[mask]), np.floor(trace.ts[mask] + trace.dur[mask])
    return ts, end


def temporal_breakdown(trace: Trace) -> dict[str, float | int] | None:
    """HTA's per-rank temporal breakdown; None for a trace without GPU activity."""
    mask = hta_gpu_events(trace)
    if not mask.any():
        return None
    ts, end = _hta_times(trace, mask)
    union = iv.merge(ts, end)
    span = float(union[1][-1] - union[0][0])
    busy = iv.length(union)
    compute = ~trace.name_flags(lambda n: _HTA_NOT_COMPUTE.match(n) is not None)[mask]
    compute_us = iv.length(iv.merge(ts[compute], end[compute]))
    idle_us = span - busy
    non_compute_us = span - compute_us - idle_us

    def pct(x: float) -> float:
        return round(100.0 * x / span, 2) if span > 0 else 0.0

    return {"rank": trace.rank, "idle_us": idle_us, "compute_us": compute_us, "non_compute_us": non_compute_us,
            "span_us": span, "idle_pct": pct(idle_us), "compute_pct": pct(compute_us),
            "non_compute_pct": pct(non_compute_us)}


_KINDS = ("compute", "communication", "memcpy", "memset")


def _kind(trace: Trace, mask: np.ndarray) -> np.ndarray:
    """0 compute, 1 communication, 2 memcpy, 3 memset for the masked GPU events."""
    cat = trace.cat[mask]
    kind = np.zeros(int(mask.sum()), dtype=np.int8)
    kind[cat == Cat.MEMCPY] = 2
    kind[cat == Cat.MEMSET] = 3
    comm = trace.name_flags(lambda n: classify(n)[0] == "communication")[mask]
    kind[(cat == Cat.KERNEL) & comm] = 1
    return kind


def _split(ts: np.ndarray, end: np.ndarray, kind: np.ndarray) -> dict[str, float]:
    """Priority split of a set of GPU events: compute > communication > memcpy > memset > idle."""
    union = iv.merge(ts, end)
    span = float(union[1][-1] - union[0][0]) if union[0].size else 0.0
    out: dict[str, float] = {"span_us": span}
    taken = iv.EMPTY
    for k, name in enumerate(_KINDS):
        taken_before = iv.length(taken)
        taken = iv.combine(taken, iv.merge(ts[kind == k], end[kind == k]))
        out[f"{name}_us"] = iv.length(taken) - taken_before
    out["idle_us"] = span - iv.length(union)
    return out


def stream_breakdown(trace: Trace) -> list[dict[str, float | int]]:
    """Per device and per stream: compute / communication / memcpy / memset / idle (µs)."""
    mask = trace.gpu_work()
    if not mask.any():
        return []
    ts, end, dev, stream = trace.ts[mask], trace.ends(mask), trace.device[mask], trace.stream[mask]
    kind = _kind(trace, mask)
    rows: list[dict[str, Any]] = []
    for d in np.unique(dev):
        on_dev = dev == d
        rows.append({"rank": trace.rank, "device": int(d), "stream": "all",
                     **_split(ts[on_dev], end[on_dev], kind[on_dev])})
        for s in np.unique(stream[on_dev]):
            sel = on_dev & (stream == s)
            rows.append({"rank": trace.rank, "device": int(d), "stream": int(s), "events": int(sel.sum()),
                         **_split(ts[sel], end[sel], kind[sel])})
    return rows
