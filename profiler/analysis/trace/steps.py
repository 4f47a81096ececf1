"""Profiler steps as the PyTorch profiler's TensorBoard plugin defined them.

A step's host span is its ``ProfilerStep#N`` annotation.  On a GPU run the
step is extended to the device: it starts at max(previous step's end, its
host start) and ends at max(its host end, the end of the last GPU event
launched by a runtime call inside the host span).  Trailing steps that
launched no GPU work are dropped, and so is a last step whose GPU-event
count is under 0.8x the previous step's (the profiler probably stopped
before all of its kernels were collected).
"""
from __future__ import annotations

import sys
from dataclasses import dataclass

import numpy as np

from gpulens.profiler.analysis.trace.model import Cat, Trace

_MAX = float(sys.maxsize)


@dataclass
class StepSpan:
    name: str
    host_start: float
    host_end: float
    start: float
    end: float
    device_events: int


def _host_steps(trace: Trace) -> list[tuple[str, float, float]]:
    mask = trace.mask(Cat.PROFILER_STEP)
    if mask.any():
        idx = np.flatnonzero(mask)
        idx = idx[np.argsort(trace.ts[idx], kind="stable")]
        return [(trace.names[trace.name[i]], float(trace.ts[i]), float(trace.ends(i))) for i in idx]
    cpu = trace.mask(Cat.CPU_OP, Cat.PYTHON, Cat.PROFILER_STEP)
    if not cpu.any():
        cpu = np.ones(len(trace), dtype=bool)
    return [("0", float(trace.ts[cpu].min()), float(trace.ends(cpu).max()))]


def device_steps(trace: Trace) -> list[StepSpan]:
    """The plugin's step spans (computed once per trace; several analyzers need them)."""
    cached = trace.cache.get("device_steps")
    if cached is None:
        cached = trace.cache["device_steps"] = _device_steps(trace)
    return [StepSpan(s.name, s.host_start, s.host_end, s.start, s.end, s.device_events) for s in cached]


def _device_steps(trace: Trace) -> list[StepSpan]:
    host = _host_steps(trace)
    steps = [(s, e) for _, s, e in host]
    gpu = trace.gpu_work() & (trace.corr >= 0)
    if not gpu.any():
        return [StepSpan(n, s, e, s, e, 0) for n, s, e in host]

    # GPU events grouped by correlation id: earliest start, latest end, count
    g_corr = trace.corr[gpu]
    uniq, inv = np.unique(g_corr, return_inverse=True)
    g_min = np.full(uniq.size, np.inf)
    g_max = np.full(uniq.size, -np.inf)
    np.minimum.at(g_min, inv, trace.ts[gpu])
    np.maximum.at(g_max, inv, trace.ends(gpu))
    g_cnt = np.bincount(inv)

    rt = np.flatnonzero(trace.mask(Cat.RUNTIME))
    rt = rt[np.argsort(trace.ts[rt], kind="stable")]
    rt_start, rt_end, rt_corr = trace.ts[rt], trace.ends(rt), trace.corr[rt]
    pos = np.searchsorted(uniq, rt_corr)
    pos_c = np.clip(pos, 0, max(uniq.size - 1, 0))
    has_dev = (pos < uniq.size) & (uniq[pos_c] == rt_corr)

    n = len(steps)
    h0 = np.asarray([a for a, _ in steps], dtype=np.float64)
    h1 = np.asarray([b for _, b in steps], dtype=np.float64)
    if n and bool((np.diff(h1) >= 0).all()):
        steps_device, matched_count, matched_groups = _merge_sorted(h0, h1, rt_start, rt_end, has_dev, pos_c,
                                                                    g_min, g_max, g_cnt)
    else:  # steps whose ends are out of order (overlapping annotations): the walk itself
        steps_device, matched_count, matched_groups = _merge_walk(steps, rt_start, rt_end, has_dev, pos_c,
                                                                  g_min, g_max, g_cnt)

    spans = [StepSpan(name, s, e, s, e, matched_count[i]) for i, (name, s, e) in enumerate(host)]
    if not matched_groups:
        return spans
    prev_end = steps[0][0]
    if steps_device[0][0] != _MAX:
        unmatched = np.ones(uniq.size, dtype=bool)
        unmatched[list(matched_groups)] = False
        before = unmatched & (g_max < steps_device[0][0])
        if before.any():
            prev_end = max(prev_end, float(g_max[before].max()))
    for i, span in enumerate(spans):
        start = max(prev_end, span.host_start)
        if steps_device[i][0] == _MAX:
            end = max(span.host_end, start)
        else:
            end = max(span.host_end, steps_device[i][1])
            end = max(end, start)
        span.start, span.end = start, end
        prev_end = end
    if len(spans) > 1:
        last = len(spans) - 1
        while last >= 0 and matched_count[last] == 0:
            last -= 1
        if last >= 0:
            keep = last + 1
            if last > 0 and matched_count[last - 1] * 0.8 > matched_count[last]:
                keep = last
            spans = spans[:keep]
    return spans


Merge = tuple[list[tuple[float, float]], list[int], set[int]]


def _merge_sorted(h0: np.ndarray, h1: np.ndarray, rt_start: np.ndarray, rt_end: np.ndarray, has_dev: np.ndarray,
                  pos: np.ndarray, g_min: np.ndarray, g_max: np.ndarray, g_cnt: np.ndarray) -> Merge:
    """:func:`_merge_walk`'s result in arrays, for steps whose ends do not decrease (every real trace).

    The walk's step pointer only moves on, past a step once a runtime call starts at or after its end (a
    zero-length call exactly at the end still belongs to it); with ends in order, the first step a call can
    belong to is a binary search, and the pointer is the running maximum of those.  A call counts when it
    lies inside its step.  Minima, maxima and counts do not depend on the order they are taken in: the
    same values as the walk, without a Python object per runtime call (~100 bytes each at millions).
    """
    n = h1.size
    zero = rt_end == rt_start
    first = np.where(zero, np.searchsorted(h1, rt_start, side="left"), np.searchsorted(h1, rt_start, side="right"))
    step = np.maximum.accumulate(first) if first.size else first
    k = np.minimum(step, n - 1)
    counted = (step < n) & (rt_start >= h0[k]) & (rt_end <= h1[k]) & has_dev
    k, g = step[counted], pos[counted]
    dmin = np.full(n, _MAX)
    dmax = np.full(n, -_MAX)
    np.minimum.at(dmin, k, g_min[g])
    np.maximum.at(dmax, k, g_max[g])
    count = np.bincount(k, weights=g_cnt[g], minlength=n).astype(np.int64)
    return list(zip(dmin.tolist(), dmax.tolist())), count.tolist(), set(np.unique(g).tolist())


def _merge_walk(steps: list[tuple[float, float]], rt_start: np.ndarray, rt_end: np.ndarray, has_dev: np.ndarray,
                pos: np.ndarray, g_min: np.ndarray, g_max: np.ndarray, g_cnt: np.ndarray) -> Merge:
    """Host steps and runtime calls (both sorted by start) walked together: each call inside a step adds its
    GPU events' earliest start, latest end and count to the step."""
    n = len(steps)
    steps_device = [(_MAX, -_MAX)] * n
    matched_count = [0] * n
    matched_groups: set[int] = set()
    i_step = i_rt = 0
    dmin, dmax = _MAX, -_MAX
    # the merge walks Python lists: the same values as the arrays, without a numpy scalar per access
    rt_start_l, rt_end_l, has_dev_l, pos_l = rt_start.tolist(), rt_end.tolist(), has_dev.tolist(), pos.tolist()
    g_min_l, g_max_l, g_cnt_l = g_min.tolist(), g_max.tolist(), g_cnt.tolist()
    n_rt = len(rt_start_l)
    while i_step < n and i_rt < n_rt:
        h0, h1 = steps[i_step]
        r0, r1 = rt_start_l[i_rt], rt_end_l[i_rt]
        if r0 < h0:
            i_rt += 1
        elif r1 <= h1:
            if has_dev_l[i_rt]:
                g = pos_l[i_rt]
                dmin = min(dmin, g_min_l[g])
                dmax = max(dmax, g_max_l[g])
                matched_groups.add(g)
                matched_count[i_step] += g_cnt_l[g]
            i_rt += 1
        elif r0 < h1:
            i_rt += 1
        else:
            steps_device[i_step] = (dmin, dmax)
            i_step += 1
            dmin, dmax = _MAX, -_MAX
    while i_step < n:
        steps_device[i_step] = (dmin, dmax)
        dmin, dmax = _MAX, -_MAX
        i_step += 1
    return steps_device, matched_count, matched_groups
