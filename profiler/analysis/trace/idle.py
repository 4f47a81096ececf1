"""Idle-time attribution per GPU stream, with HTA's idle categories.

Between two consecutive events on a stream the GPU is idle.  The gap is a
*host wait* when the next event's launch call started after the previous
event ended (the CPU was not enqueuing fast enough), a *kernel wait* when
it is shorter than ``consecutive_kernel_delay`` (launch latency between
back-to-back kernels, 30 µs as in HTA), and *other* otherwise (waiting on a
synchronisation, another stream, data).
"""
from __future__ import annotations

import numpy as np

from gpulens.profiler.analysis.trace.linking import launcher_of
from gpulens.profiler.analysis.trace.model import Trace


def idle_breakdown(trace: Trace, consecutive_kernel_delay: float = 30.0) -> list[dict[str, float | int]]:
    mask = trace.gpu_work() & (trace.stream >= 0)
    if not mask.any():
        return []
    idx = np.flatnonzero(mask)
    launch = launcher_of(trace, mask)
    launch_ts = np.where(launch >= 0, trace.ts[np.clip(launch, 0, None)], np.nan)
    rows = []
    dev, stream = trace.device[idx], trace.stream[idx]
    for d, s in sorted({(int(a), int(b)) for a, b in zip(dev, stream)}):
        sel = np.flatnonzero((dev == d) & (stream == s))
        order = sel[np.argsort(trace.ts[idx[sel]], kind="stable")]
        ts = trace.ts[idx[order]]
        end = trace.ends(idx[order])
        if ts.size < 2:
            continue
        prev_end = np.maximum.accumulate(end)[:-1]
        gap = np.clip(ts[1:] - prev_end, 0.0, None)
        host = launch_ts[order][1:] > prev_end
        kernel = ~host & (gap < consecutive_kernel_delay)
        other = ~host & ~kernel
        total = float(gap.sum())
        rows.append({"rank": trace.rank, "device": d, "stream": s, "idle_us": total,
                     "host_wait_us": float(gap[host].sum()), "kernel_wait_us": float(gap[kernel].sum()),
                     "other_us": float(gap[other].sum()),
                     "host_wait_share": float(gap[host].sum() / total) if total > 0 else 0.0})
    return rows
