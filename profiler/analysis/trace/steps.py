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
        return [(trace.names[trace.name[i]], float(trace.ts[i]), float(trace.end[i])) for i in idx]
    cpu = trace.mask(Cat.CPU_OP, Cat.PYTHON, Cat.PROFILER_STEP)
    if not cpu.any():
        cpu = np.ones(len(trace), dtype=bool)
    return [("0", float(trace.ts[cpu].min()), float(trace.end[cpu].max()))]


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
    np.maximum.at(g_max, inv, trace.end[gpu])
    g_cnt = np.bincount(inv)

    rt = np.flatnonzero(trace.mask(Cat.RUNTIME))
    rt = rt[np.argsort(trace.ts[rt], kind="stable")]
    rt_start, rt_end, rt_corr = trace.ts[rt], trace.end[rt], trace.corr[rt]
    pos = np.searchsorted(uniq, rt_corr)
    pos_c = np.clip(pos, 0, max(uniq.size - 1, 0))
    has_dev = (pos < uniq.size) & (uniq[pos_c] == rt_corr)

    n = len(steps)
    steps_device = [(_MAX, -_MAX)] * n
    matched_count = [0] * n
    matched_groups: set[int] = set()
    i_step = i_rt = 0
    dmin, dmax = _MAX, -_MAX
    # the merge walks Python lists: the same values as the arrays, without a numpy scalar per access
    rt_start_l, rt_end_l, has_dev_l, pos_l = rt_start.tolist(), rt_end.tolist(), has_dev.tolist(), pos_c.tolist()
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
