"""Interval arithmetic on numpy arrays (µs), the building block of every breakdown.

A *union* is a pair of sorted, disjoint (start, end) arrays.  Touching
intervals are merged, as both HTA and the TensorBoard plugin do.
"""
from __future__ import annotations

import numpy as np

Union = tuple[np.ndarray, np.ndarray]
EMPTY: Union = (np.empty(0), np.empty(0))


def merge(starts: np.ndarray, ends: np.ndarray) -> Union:
    """Union of possibly overlapping intervals."""
    s = np.asarray(starts, dtype=np.float64)
    e = np.asarray(ends, dtype=np.float64)
    if s.size == 0:
        return EMPTY
    order = np.argsort(s, kind="stable")
    s, e = s[order], e[order]
    running = np.maximum.accumulate(e)
    new = np.empty(s.size, dtype=bool)
    new[0] = True
    new[1:] = s[1:] > running[:-1]
    first = np.flatnonzero(new)
    last = np.r_[first[1:] - 1, s.size - 1]
    return s[first], running[last]


def length(u: Union) -> float:
    return float((u[1] - u[0]).sum())


class Covered:
    """A union's running length, computed once: how much of it lies before any time, or inside any window.
    (Asked again and again of the same union -- the phase split asks once per candidate lag.)"""

    def __init__(self, u: Union) -> None:
        self.s = u[0]
        self.d = u[1] - u[0]
        self.cum = np.concatenate(([0.0], np.cumsum(self.d)))

    def before(self, t: np.ndarray) -> np.ndarray:
        """For each time t, the length of the union lying before t (a non-decreasing function)."""
        t = np.asarray(t, dtype=np.float64)
        if self.s.size == 0:
            return np.zeros(t.shape)
        k = np.searchsorted(self.s, t, side="right") - 1
        kk = np.clip(k, 0, self.s.size - 1)
        inside = np.clip(t - self.s[kk], 0.0, self.d[kk])
        return np.where(k < 0, 0.0, self.cum[kk] + inside)

    def within(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """Length of the union inside each window [a_i, b_i] (vectorised)."""
        return np.asarray(self.before(b) - self.before(a))


def covered_before(u: Union, t: np.ndarray) -> np.ndarray:
    """For each time t, the length of ``u`` lying before t (a non-decreasing function)."""
    return Covered(u).before(t)


def overlap(u: Union, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Length of ``u`` inside each window [a_i, b_i] (vectorised)."""
    return Covered(u).within(a, b)


def intersect_length(u: Union, v: Union) -> float:
    """Length of the intersection of two unions."""
    if u[0].size == 0 or v[0].size == 0:
        return 0.0
    return float(overlap(u, v[0], v[1]).sum())


def combine(*unions: Union) -> Union:
    if not unions:
        return EMPTY
    return merge(np.concatenate([u[0] for u in unions]), np.concatenate([u[1] for u in unions]))


def clip(u: Union, a: float, b: float) -> Union:
    s, e = u
    keep = (e > a) & (s < b)
    return np.maximum(s[keep], a), np.minimum(e[keep], b)


def gaps(u: Union) -> Union:
    """The holes between consecutive intervals of a union."""
    s, e = u
    if s.size < 2:
        return EMPTY
    return e[:-1], s[1:]


def weighted_sum_clipped(starts: np.ndarray, ends: np.ndarray, values: np.ndarray,
                         cap: float = 1.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sweep of overlapping weighted intervals: the summed value, clipped to ``cap``, per elementary piece.

    Returns (piece starts, piece ends, clipped values) for pieces where the sum
    is positive -- the plugin's "approximated SM efficiency" timeline.
    """
    n = starts.size
    if n == 0:
        return np.empty(0), np.empty(0), np.empty(0)
    times = np.concatenate((starts, ends))
    deltas = np.concatenate((values, -values))
    kind = np.concatenate((np.zeros(n), np.ones(n)))  # starts before ends at equal times
    order = np.lexsort((kind, times))
    times, deltas = times[order], deltas[order]
    level = np.cumsum(deltas)
    piece_start, piece_end, piece_level = times[:-1], times[1:], level[:-1]
    keep = (piece_end > piece_start) & (piece_level > 1e-12)
    return piece_start[keep], piece_end[keep], np.minimum(piece_level[keep], cap)
