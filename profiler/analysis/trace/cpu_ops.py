"""Top CPU operators by total and self time."""
from __future__ import annotations

import numpy as np

from gpulens.profiler.analysis.trace.model import Cat, Trace


def cpu_op_table(trace: Trace, limit: int | None = 50) -> list[dict[str, float | int | str]]:
    """Per operator name: calls, total (inclusive) and self time.

    Self time is an op's duration minus that of its direct children on the
    same thread (ops nest strictly in Kineto traces).
    """
    mask = trace.mask(Cat.CPU_OP)
    if not mask.any():
        return []
    idx = np.flatnonzero(mask)
    dur = trace.dur[idx]
    key_thread = trace.pid[idx] * 1_000_003 + trace.tid[idx]
    order = np.lexsort((-dur, trace.ts[idx], key_thread))
    # the walk is sequential (a stack per thread): over Python lists, not numpy scalars, it is ~4x faster
    threads, starts = key_thread[order].tolist(), trace.ts[idx][order].tolist()
    ends, durs = trace.end[idx][order].tolist(), dur[order].tolist()
    selfs = list(durs)  # by position in ``order``; children subtracted one by one, as the figures always were
    stack: list[int] = []
    current = None
    for j, (thread, t) in enumerate(zip(threads, starts)):
        if thread != current:
            stack.clear()
            current = thread
        while stack and ends[stack[-1]] <= t:
            stack.pop()
        if stack:
            selfs[stack[-1]] -= durs[j]
        stack.append(j)
    self_time = np.empty_like(dur)
    self_time[order] = selfs
    self_time = np.clip(self_time, 0.0, None)
    ids = trace.name[idx]
    uniq, inv = np.unique(ids, return_inverse=True)
    calls = np.bincount(inv)
    total = np.bincount(inv, weights=trace.dur[idx])
    self_total = np.bincount(inv, weights=self_time)
    rows = [{"name": trace.names[n], "calls": int(calls[i]), "total_us": float(total[i]),
             "self_us": float(self_total[i])} for i, n in enumerate(uniq)]
    rows.sort(key=lambda r: -r["self_us"])
    return rows[:limit] if limit else rows
