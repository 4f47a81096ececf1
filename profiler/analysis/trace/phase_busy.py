"""GPU busy while the host was in each training phase, from gpulens' own ranges in a window's trace.

Inside profiler windows every phase of a step is a ``gpulens.<phase>`` range (hooks/ranges.py), on the
same clock as the kernels.  The share of each phase's host time during which a GPU stream ran anything
is then exact for the profiled steps -- where the split of the sampled GPM SM activity by phase
(:mod:`gpulens.profiler.analysis.phase_activity`) is a least-squares fit that the readings often cannot
decide.  It answers the question behind "the loop waits for data": does the GPU work through the wait
(work queued ahead, the wait hidden) or idle through it (nothing overlaps, the wait is the cost)?
"""
from __future__ import annotations

from typing import Any

import numpy as np

from gpulens.profiler.analysis.trace.intervals import merge, overlap
from gpulens.profiler.analysis.trace.model import Cat, Trace

PREFIX = "gpulens."
STEP_PREFIX = "gpulens.step#"


def phase_gpu_busy(trace: Trace) -> dict[str, Any] | None:
    """{``steps``, ``phases``: {phase: {``host_us``, ``gpu_busy_us``}}} of the trace's gpulens ranges
    (None: the trace has no GPU work, or no gpulens ranges -- a trace recorded without gpulens)."""
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
    work = trace.gpu_work()
    busy = merge(trace.ts[work], trace.end[work])  # any stream of any device: "the GPU runs something"
    starts, ends = trace.ts[annotations], trace.end[annotations]
    inside = overlap(busy, starts, ends)
    phases: dict[str, dict[str, float]] = {}
    for name_id in np.unique(ids):
        sel = ids == name_id
        phases[phase_of[int(name_id)]] = {"host_us": float((ends[sel] - starts[sel]).sum()),
                                          "gpu_busy_us": float(inside[sel].sum())}
    return {"steps": steps, "phases": phases}


def combine_phase_busy(parts: list[dict[str, Any] | None]) -> dict[str, Any] | None:
    """Windows and ranks together: times add up, shares come from the sums (in the order steps run)."""
    found = [p for p in parts if p]
    if not found:
        return None
    total: dict[str, dict[str, float]] = {}
    for p in found:
        for name, row in p["phases"].items():
            acc = total.setdefault(name, {"host_us": 0.0, "gpu_busy_us": 0.0})
            acc["host_us"] += row["host_us"]
            acc["gpu_busy_us"] += row["gpu_busy_us"]
    order = ("data_wait", "forward", "backward", "optimizer")
    names = [n for n in order if n in total] + sorted(n for n in total if n not in order)
    return {"steps": sum(p["steps"] for p in found),
            "phases": {n: {**total[n], "gpu_busy_share": (total[n]["gpu_busy_us"] / total[n]["host_us"]
                                                          if total[n]["host_us"] > 0 else None)}
                       for n in names}}
