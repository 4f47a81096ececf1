"""Links between host and device: which runtime call launched which GPU event."""
from __future__ import annotations

import numpy as np

from gpulens.profiler.analysis.trace.model import Cat, Trace


def launcher_of(trace: Trace, gpu_mask: np.ndarray) -> np.ndarray:
    """For each masked GPU event, the index of its runtime (or driver) call, or -1.

    Kineto gives a GPU event and the host call that launched it the same
    correlation id.
    """
    host = np.flatnonzero(trace.mask(Cat.RUNTIME, Cat.DRIVER) & (trace.corr >= 0))
    out = np.full(int(gpu_mask.sum()), -1, dtype=np.int64)
    if host.size == 0 or out.size == 0:
        return out
    host_corr = trace.corr[host]
    order = np.argsort(host_corr, kind="stable")
    sorted_corr = host_corr[order]
    want = trace.corr[gpu_mask]
    pos = np.searchsorted(sorted_corr, want)
    pos_c = np.clip(pos, 0, sorted_corr.size - 1)
    found = (pos < sorted_corr.size) & (sorted_corr[pos_c] == want) & (want >= 0)
    out[found] = host[order[pos_c[found]]]
    return out
