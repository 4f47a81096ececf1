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
    self_time = trace.dur[idx].copy()
    key_thread = trace.pid[idx] * 1_000_003 + trace.tid[idx]
    order = np.lexsort((-trace.dur[idx], trace.ts[idx], key_thread))
    ts_all, end_all = trace.ts[idx], trace.end[idx]
    stack: list[int] = []
    current = None
    for j in order:
        if key_thread[j] != current:
            stack.clear()
            current = key_thread[j]
        t = ts_all[j]
        while stack and end_all[stack[-1]] <= t:
            stack.pop()
        if stack:
            self_time[stack[-1]] -= trace.dur[idx[j]]
        stack.append(j)
    self_time = np.clip(self_time, 0.0, None)
    ids = trace.name[idx]
    uniq, inv = np.unique(ids, return_inverse=True)
    calls = np.bincount(inv)
    total = np.bincount(inv, weights=trace.dur[idx])
    selfs = np.bincount(inv, weights=self_time)
    rows = [{"name": trace.names[n], "calls": int(calls[i]), "total_us": float(total[i]),
             "self_us": float(selfs[i])} for i, n in enumerate(uniq)]
    rows.sort(key=lambda r: -r["self_us"])
    return rows[:limit] if limit else rows
