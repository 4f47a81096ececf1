"""Change points in step time: where a run got slower (or faster) and stayed so.

A run whose optimizer step went from 1 ms to 134 ms at step 214 has a
median step time that hides it and a p90 that only hints at it.  This module
finds such shifts in the steady steps' durations, robustly:

* durations are compared on a log scale (a 2x slowdown of a 5 ms step counts
  like one of a 500 ms step) and summarised in blocks by their medians, so a
  few outliers (a GC pause, one contended second) do not make a shift;
* binary segmentation with an L1 cost (sum of absolute deviations from each
  segment's median) finds the best split, then each half is split again, up
  to three shifts;
* a split counts only if the medians on either side differ by at least
  ``MIN_RATIO``, most steps on each side lie on their side of the midpoint
  (a real level change, not a widening of the spread) and a rank-sum test
  puts the difference far beyond chance (``MIN_Z``).

:func:`changes_around` then compares device and host series just before and
after the moment, to say what changed with it.  Pure functions of arrays.
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

MIN_RATIO = 1.25  # medians 25% apart
MIN_DELTA_S = 2e-4  # and at least 0.2 ms apart: microsecond loops jitter by more than 25%
CONSISTENCY = 0.65  # share of steps on each side that lie on their side of the midpoint
MIN_Z = 5.0  # and a rank-sum test far beyond chance (candidates are many: no 2-sigma here)
MIN_STEPS = 40
#: A change within the first steps is the run settling (the CUDA launch queue filling up, allocator and
#: cache warm-up after the warm-up steps), not a change of the run.
SETTLE_STEPS = 30
SETTLE_SHARE = 0.1
MAX_BLOCKS = 300


@dataclass(frozen=True)
class Shift:
    """A lasting change of the step time at ``step`` (the first step of the new level)."""

    step: int
    t: float  # start of that step (epoch seconds)
    before_s: float  # median step time of the segment before
    after_s: float  # ... and after
    steps_before: int
    steps_after: int
    t_from: float  # start of the segment before (for a zoom around the change)
    t_to: float  # end of the segment after
    phases: dict[str, tuple[float, float]] = field(default_factory=dict)  # phase -> mean s before, after
    moved: str | None = None  # the phase whose mean moved most (None: no phases recorded)

    @property
    def ratio(self) -> float:
        return self.after_s / self.before_s if self.before_s > 0 else math.inf

    @property
    def slower(self) -> bool:
        return self.after_s > self.before_s


def _l1(y: np.ndarray) -> float:
    return float(np.abs(y - np.median(y)).sum()) if y.size else 0.0


def _best_split(y: np.ndarray, lo: int, hi: int, min_len: int) -> int | None:
    best, best_cost = None, _l1(y[lo:hi])
    for k in range(lo + min_len, hi - min_len + 1):
        cost = _l1(y[lo:k]) + _l1(y[k:hi])
        if cost < best_cost - 1e-12:
            best, best_cost = k, cost
    return best


def _level_change(left: np.ndarray, right: np.ndarray) -> bool:
    """Medians far enough apart, and most steps on their side of the midpoint (log durations)."""
    if left.size == 0 or right.size == 0:
        return False
    ml, mr = float(np.median(left)), float(np.median(right))
    if abs(mr - ml) < math.log(MIN_RATIO) or abs(math.exp(mr) - math.exp(ml)) < MIN_DELTA_S:
        return False
    mid = (ml + mr) / 2
    if mr > ml:
        sides = np.mean(right > mid) >= CONSISTENCY and np.mean(left < mid) >= CONSISTENCY
    else:
        sides = np.mean(right < mid) >= CONSISTENCY and np.mean(left > mid) >= CONSISTENCY
    return bool(sides) and abs(_rank_sum_z(left, right)) >= MIN_Z


def _rank_sum_z(a: np.ndarray, b: np.ndarray) -> float:
    """Mann-Whitney's z (normal approximation, ties ignored): are ``b``'s values shifted against ``a``'s?"""
    both = np.concatenate((a, b))
    ranks = np.empty(both.size)
    ranks[np.argsort(both, kind="mergesort")] = np.arange(1, both.size + 1)
    n1, n2 = a.size, b.size
    u = ranks[n1:].sum() - n2 * (n2 + 1) / 2
    return float((u - n1 * n2 / 2) / math.sqrt(n1 * n2 * (n1 + n2 + 1) / 12))


def _refine(x: np.ndarray, cut: int, reach: int) -> int:
    """The step near ``cut`` that best separates the two levels: most steps on their own side of the midpoint."""
    left_level = float(np.median(x[max(0, cut - 4 * reach):cut])) if cut > 0 else float(x[0])
    right_level = float(np.median(x[cut:cut + 4 * reach]))
    mid = (left_level + right_level) / 2
    new = (x > mid) if right_level > left_level else (x < mid)  # looks like the level after the change
    s, e = max(0, cut - reach), min(x.size, cut + reach)
    z = new[s:e].astype(np.int64)
    cum = np.concatenate(([0], np.cumsum(z)))
    score = np.arange(z.size + 1) - 2 * cum + int(z.sum())  # old-looking before k + new-looking from k on
    return s + int(np.argmax(score))


def _place(x: np.ndarray, lo: int, cut: int, hi: int) -> int:
    """Within [lo, hi], the step after which most steps look like the right segment's level and most before it
    like the left one's.  (An L1 split cannot tell where a burst ends: any cut past it costs the same.)"""
    left, right = float(np.median(x[lo:cut])), float(np.median(x[cut:hi]))
    mid = (left + right) / 2
    new = (x[lo:hi] > mid) if right > left else (x[lo:hi] < mid)
    z = new.astype(np.int64)
    cum = np.concatenate(([0], np.cumsum(z)))
    score = np.arange(z.size + 1) - 2 * cum + int(z.sum())
    inner = score[1:-1]  # both sides keep at least one step
    return lo + 1 + int(np.argmax(inner)) if inner.size else cut


def find_shifts(step: np.ndarray, t_start: np.ndarray, duration: np.ndarray,
                phases: Mapping[str, np.ndarray] | None = None, max_shifts: int = 3) -> list[Shift]:
    """Lasting step-time changes of one rank's steady steps (ordered by step), largest first."""
    ok = np.isfinite(duration) & (duration > 0)
    step, t_start, duration = step[ok], t_start[ok], duration[ok]
    phases = {k: np.asarray(v)[ok] for k, v in (phases or {}).items()}
    n = duration.size
    if n < MIN_STEPS:
        return []
    x = np.log(duration)
    b = max(1, math.ceil(n / MAX_BLOCKS))
    y = np.array([np.median(x[i:i + b]) for i in range(0, n, b)])
    min_len = max(3, math.ceil(0.04 * y.size), math.ceil(10 / b))

    cuts: list[int] = []  # candidate change points, in steps

    def split(lo: int, hi: int, depth: int) -> None:
        # no test here: a burst in the middle of a run makes the best single split of the whole run
        # look like no change at all; candidates are judged against their neighbours below
        if depth > 2 or hi - lo < 2 * min_len:
            return
        k = _best_split(y, lo, hi, min_len)
        if k is None:
            return
        cuts.append(min(n - 1, _refine(x, k * b, 2 * b) if b > 1 else k))
        split(lo, k, depth + 1)
        split(k, hi, depth + 1)

    split(0, y.size, 0)
    kept = sorted(set(cuts))
    while kept:  # drop the weakest cut that is no level change between its neighbours, until all hold
        bounds = [0, *kept, n]
        weak = [(abs(float(np.median(x[bounds[i]:bounds[i + 1]]) - np.median(x[bounds[i - 1]:bounds[i]]))), i - 1)
                for i in range(1, len(bounds) - 1)
                if not _level_change(x[bounds[i - 1]:bounds[i]], x[bounds[i]:bounds[i + 1]])]
        if not weak:
            break
        kept.pop(min(weak)[1])
    for _ in range(2):  # place each cut where it best separates the levels of its two neighbouring segments
        bounds = [0, *kept, n]
        kept = sorted({_place(x, bounds[i - 1], bounds[i], bounds[i + 1]) for i in range(1, len(bounds) - 1)})
    if kept and kept[0] < max(SETTLE_STEPS, SETTLE_SHARE * n):
        kept.pop(0)  # the first steps after warm-up settling (queues filling, caches warming): not a change
    bounds = [0, *kept, n]
    shifts = []
    for i in range(1, len(bounds) - 1):
        a, c, e = bounds[i - 1], bounds[i], bounds[i + 1]
        before, after = duration[a:c], duration[c:e]
        moved_phases = {name: (float(np.nanmean(col[a:c])), float(np.nanmean(col[c:e])))
                        for name, col in phases.items()
                        if np.isfinite(col[a:c]).any() and np.isfinite(col[c:e]).any()}
        moved = max(moved_phases, key=lambda p: abs(moved_phases[p][1] - moved_phases[p][0]), default=None)
        shifts.append(Shift(step=int(step[c]), t=float(t_start[c]), before_s=float(np.median(before)),
                            after_s=float(np.median(after)), steps_before=int(c - a), steps_after=int(e - c),
                            t_from=float(t_start[a]), t_to=float(t_start[e - 1] + duration[e - 1]),
                            phases=moved_phases, moved=moved))
    shifts.sort(key=lambda s: -abs(math.log(s.ratio)) if s.before_s > 0 else 0.0)
    return shifts[:max_shifts]


@dataclass(frozen=True)
class Change:
    """A series whose level differs just before and just after a moment."""

    metric: str
    before: float
    after: float


#: The smallest change worth naming, by unit (absolute) -- besides a 25% relative change.
MIN_CHANGE = {"%": 10.0, "cores": 0.3, "count": 1.0, "MHz": 50.0, "W": 20.0, "C": 5.0, "B": 256 * 2**20,
              "B/s": 10 * 2**20}


def changes_around(t: float, series: Mapping[str, tuple[np.ndarray, np.ndarray, str]],
                   window_s: float) -> list[Change]:
    """Series (``metric -> (times, values, unit)``) whose median moved across ``t`` (``window_s`` each side)."""
    out = []
    for metric, (ts, vs, unit) in series.items():
        ts, vs = np.asarray(ts), np.asarray(vs)
        pre = vs[(ts >= t - window_s) & (ts < t) & np.isfinite(vs)]
        post = vs[(ts > t) & (ts <= t + window_s) & np.isfinite(vs)]
        if pre.size < 2 or post.size < 2:
            continue
        a, b = float(np.median(pre)), float(np.median(post))
        floor = MIN_CHANGE.get(unit, 0.0)
        if abs(b - a) >= floor and abs(b - a) >= 0.25 * max(abs(a), abs(b)):
            out.append(Change(metric, a, b))
    out.sort(key=lambda c: -abs(c.after - c.before) / max(abs(c.before), abs(c.after), 1e-12))
    return out
