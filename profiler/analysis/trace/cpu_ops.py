"""Top CPU operators by total and self time."""
from __future__ import annotations

import numpy as np

from gpulens.profiler.analysis.trace.model import Cat, Trace

#: Ops walked per batch of Python lists: the walk's lists cost ~130 bytes per op, so a whole 4 GB trace's
#: (millions of ops) would double the memory its columns take; a batch keeps them to ~30 MB.
WALK_BATCH = 1 << 18


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
    ts = trace.ts[idx]
    key_thread = trace.pid[idx] * 1_000_003 + trace.tid[idx]
    order = np.lexsort((-dur, ts, key_thread))
    self_time = np.empty_like(dur)
    self_time[order] = _self_times(key_thread[order], ts[order], dur[order])
    del key_thread, ts, order
    self_time = np.clip(self_time, 0.0, None)
    ids = trace.name[idx]
    uniq, inv = np.unique(ids, return_inverse=True)
    calls = np.bincount(inv)
    total = np.bincount(inv, weights=dur)
    self_total = np.bincount(inv, weights=self_time)
    rows = [{"name": trace.names[n], "calls": int(calls[i]), "total_us": float(total[i]),
             "self_us": float(self_total[i])} for i, n in enumerate(uniq)]
    rows.sort(key=lambda r: -r["self_us"])
    return rows[:limit] if limit else rows


def _self_times(threads: np.ndarray, starts: np.ndarray, durs: np.ndarray) -> np.ndarray:
    """Each op's duration less its direct children's, ops sorted by (thread, start, longest first).

    The walk is sequential (a stack per thread) and runs over Python lists, ~4x faster than numpy scalars,
    a batch at a time.  Children are subtracted one by one in order, as the figures always were; a child
    whose parent began in an earlier batch subtracts from the parent's stored value (the same float
    arithmetic), so batching changes no figure.
    """
    selfs_all: np.ndarray = durs.copy()
    ends_all = starts + durs
    stack_pos: list[int] = []  # open ops of the current thread, outermost first, and their ends
    stack_end: list[float] = []
    current = None
    for b0 in range(0, durs.size, WALK_BATCH):
        b1 = min(b0 + WALK_BATCH, durs.size)
        batch_durs = durs[b0:b1].tolist()
        selfs = list(batch_durs)
        for j, (thread, t, end, d) in enumerate(zip(threads[b0:b1].tolist(), starts[b0:b1].tolist(),
                                                    ends_all[b0:b1].tolist(), batch_durs)):
            if thread != current:
                stack_pos.clear()
                stack_end.clear()
                current = thread
            while stack_end and stack_end[-1] <= t:
                stack_pos.pop()
                stack_end.pop()
            if stack_pos:
                parent = stack_pos[-1]
                if parent >= b0:
                    selfs[parent - b0] -= d
                else:
                    selfs_all[parent] -= d
            stack_pos.append(b0 + j)
            stack_end.append(end)
        selfs_all[b0:b1] = selfs
    return selfs_all
