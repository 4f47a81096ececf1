"""GPU busy while the host was in each training phase, from gpulens' own ranges in a window's trace.

Inside profiler windows every phase of a step is a ``gpulens.<phase>`` range (hooks/track/ranges.py), on the
same clock as the kernels.  The share of each phase's host time during which a GPU stream ran anything
is then exact for the profiled steps -- where the split of the sampled GPM SM activity by phase
(:mod:`gpulens.profiler.analysis.phase_activity`) is a least-squares fit that the readings often cannot
decide.  It answers the question behind "the loop waits for data": does the GPU work through the wait
(work queued ahead, the wait hidden) or idle through it (nothing overlaps, the wait is the cost)?

A trace holds only the kernels *launched* inside the window.  Until the first of them starts, the GPU
may still be running work launched before the window, which the trace does not show; so phase time is
counted from that start on (the GPU runs a stream's kernels in launch order).  On a real H200 this
mattered twice: a loop whose forward work ran on into the next data wait showed its first wait idle
(the work there came from the step before the window), and a loop 0.6 s behind its host showed "0 %
busy" in every phase -- its window's kernels all ran after the window's steps had ended.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from gpulens.profiler.analysis.trace.intervals import merge, overlap
from gpulens.profiler.analysis.trace.model import Cat, Trace
from gpulens.profiler.analysis.trace.patterns import LAUNCH_RUNTIME
from gpulens.profiler.analysis.trace.result import PhaseBusy, PhaseGpuBusy, PhaseTimes, WindowPhaseBusy

PREFIX = "gpulens."
STEP_PREFIX = "gpulens.step#"
#: Share of the phases' host time that must lie after the window's first kernel started: less, and the
#: GPU ran so far behind its host that the window says little about its busy time by phase.
MIN_COUNTED = 0.5


def phase_gpu_busy(trace: Trace) -> dict[str, Any] | None:
    """{``steps``, ``phases``: {phase: {``host_us``, ``gpu_busy_us``}}, ``ranges_us`` (all phase time),
    ``gpu_lag_us`` (first launch to its kernel's start)} of the trace's gpulens ranges (None: the trace
    has no GPU work, or no gpulens ranges -- a trace recorded without gpulens)."""
    if not trace.has_gpu:
        return None
    annotations = np.flatnonzero(trace.mask(Cat.USER_ANNOTATION))
    if not annotations.size:
        return None
    names = trace.names
    ids = trace.name[annotations]
    phase_of = {i: n[len(PREFIX):] for i, n in enumerate(names)
                if n.startswith(PREFIX) and not n.startswith(STEP_PREFIX)}
    steps = int(sum(1 for i in ids if names[i].startswith(STEP_PREFIX)))
    keep = np.fromiter((int(i) in phase_of for i in ids), dtype=bool, count=ids.size)
    if not keep.any():
        return None
    annotations, ids = annotations[keep], ids[keep]
    starts, ends = trace.ts[annotations], trace.ends(annotations)
    first = _first_kernel(trace, float(starts.min()), float(ends.max()))
    out: dict[str, Any] = {"steps": steps, "ranges_us": float((ends - starts).sum()), "gpu_lag_us": None,
                           "phases": {}}
    if first is None:  # nothing launched inside the window ran inside the trace
        return out
    launched_at, began = first
    out["gpu_lag_us"] = began - launched_at
    work = trace.gpu_work()
    busy = merge(trace.ts[work], trace.ends(work))  # any stream of any device: "the GPU runs something"
    starts = np.maximum(starts, began)  # before it, the GPU may run work the trace does not hold
    ends = np.maximum(ends, starts)
    inside = overlap(busy, starts, ends)
    for name_id in np.unique(ids):
        sel = ids == name_id
        out["phases"][phase_of[int(name_id)]] = {"host_us": float((ends[sel] - starts[sel]).sum()),
                                                 "gpu_busy_us": float(inside[sel].sum())}
    return out


def _first_kernel(trace: Trace, t0: float, t1: float) -> tuple[float, float] | None:
    """(launch time, start) of the first GPU work launched inside [t0, t1] that the trace holds."""
    runtime = np.flatnonzero(trace.mask(Cat.RUNTIME, Cat.DRIVER))
    if not runtime.size:
        return None
    is_launch = trace.name_flags(lambda n: n in LAUNCH_RUNTIME or "Memcpy" in n or "Memset" in n)[runtime]
    runtime = runtime[is_launch & (trace.ts[runtime] >= t0) & (trace.ts[runtime] <= t1) & (trace.corr[runtime] >= 0)]
    work = np.flatnonzero(trace.gpu_work() & (trace.corr >= 0))
    if not runtime.size or not work.size:
        return None
    ran = work[np.isin(trace.corr[work], trace.corr[runtime])]
    if not ran.size:
        return None
    i = ran[np.argmin(trace.ts[ran])]
    launch = runtime[trace.corr[runtime] == trace.corr[i]]
    return float(trace.ts[launch].min()), float(trace.ts[i])


def combine_phase_busy(parts: Sequence[WindowPhaseBusy | None]) -> PhaseGpuBusy | None:
    """Windows and ranks together: times add up, shares come from the sums (in the order steps run);
    ``complete`` False (with the ``reason``) when the GPU ran so far behind that under half of the phase
    time could be counted."""
    found = [p for p in parts if p is not None]
    if not found:
        return None
    total: dict[str, PhaseTimes] = {}
    for p in found:
        for name, row in p.phases.items():
            acc = total.setdefault(name, PhaseTimes(host_us=0.0, gpu_busy_us=0.0))
            acc.host_us += row.host_us
            acc.gpu_busy_us += row.gpu_busy_us
    ranges = sum(p.ranges_us or 0.0 for p in found)
    counted = sum(row.host_us for row in total.values())
    lags = [p.gpu_lag_us for p in found if p.gpu_lag_us is not None]
    lag = max(lags) if lags else None
    complete = ranges > 0 and counted >= MIN_COUNTED * ranges
    reason = None
    if not complete:
        reason = ("the GPU ran " + (f"{lag / 1000:.0f} ms " if lag is not None else "") + "behind the host: the "
                  "profiled steps' kernels ran after most of their host time, so the GPU's busy time by phase "
                  "is unknown")
    order = ("data_wait", "forward", "backward", "optimizer")
    names = [n for n in order if n in total] + sorted(n for n in total if n not in order)
    phases = {}
    for n in names if complete else ():
        t = total[n]
        phases[n] = PhaseBusy(host_us=t.host_us, gpu_busy_us=t.gpu_busy_us,
                              gpu_busy_share=t.gpu_busy_us / t.host_us if t.host_us > 0 else None)
    return PhaseGpuBusy(steps=sum(p.steps for p in found), ranges_us=ranges, gpu_lag_us=lag,
                        counted_share=counted / ranges if ranges else None, complete=complete, reason=reason,
                        phases=phases)
