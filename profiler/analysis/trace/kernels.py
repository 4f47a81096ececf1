"""Kernel table and tensor-core share."""
from __future__ import annotations

import numpy as np

from gpulens.profiler.analysis.trace.model import Cat, Trace
from gpulens.profiler.analysis.trace.patterns import classify
from gpulens.profiler.analysis.trace.result import KernelStat


def _window_mask(trace: Trace, window: tuple[float, float] | None) -> np.ndarray:
    if window is None:
        return np.ones(len(trace), dtype=bool)
    return (trace.ts >= window[0]) & (trace.ts < window[1])


def kernel_table(trace: Trace, window: tuple[float, float] | None = None,
                 mask: np.ndarray | None = None) -> list[KernelStat]:
    """Every kernel / memcpy / memset name with its calls and device time, largest first.

    ``mask`` restricts the events further (e.g. to HTA's filtered set).
    """
    mask = trace.gpu_work() & _window_mask(trace, window) & (True if mask is None else mask)
    if not mask.any():
        return []
    ids = trace.name[mask]
    dur = trace.dur[mask]
    uniq, inv = np.unique(ids, return_inverse=True)
    calls = np.bincount(inv)
    total = np.bincount(inv, weights=dur)
    mx = np.full(uniq.size, -np.inf)
    mn = np.full(uniq.size, np.inf)
    np.maximum.at(mx, inv, dur)
    np.minimum.at(mn, inv, dur)
    grand = float(total.sum()) or 1.0
    out = []
    for i, nid in enumerate(uniq):
        name = trace.names[nid]
        category, tc = classify(name)
        out.append(KernelStat(name=name, category=category, tensor_core=tc, calls=int(calls[i]),
                              total_us=float(total[i]), mean_us=float(total[i] / calls[i]), max_us=float(mx[i]),
                              min_us=float(mn[i]), share=float(total[i] / grand)))
    out.sort(key=lambda k: -k.total_us)
    return out


def category_times(table: list[KernelStat]) -> dict[str, float]:
    out: dict[str, float] = {}
    for k in table:
        out[k.category] = out.get(k.category, 0.0) + k.total_us
    return dict(sorted(out.items(), key=lambda kv: -kv[1]))


def tensor_core_share(trace: Trace, window: tuple[float, float] | None = None,
                      device: int | None = None) -> float | None:
    """Kernel time in tensor-core kernels over all kernel time (clipped to ``window``).

    None when there are no kernels (a CPU-only trace): absent, not zero.
    """
    mask = trace.mask(Cat.KERNEL)
    if device is not None:
        mask &= trace.device == device
    if not mask.any():
        return None
    s, e = trace.ts[mask], trace.ends(mask)
    if window is not None:
        s, e = np.maximum(s, window[0]), np.minimum(e, window[1])
    dur = np.clip(e - s, 0.0, None)
    tc = trace.name_flags(lambda n: classify(n)[1])[mask]
    total = float(dur.sum())
    return float(dur[tc].sum() / total) if total > 0 else 0.0
