"""Device counters split by step phase: how busy the SMs were during data waits, forward, backward, ...

GPM and NVML readings are averages over their sampling interval (200 ms by
default), which usually spans several steps, so a reading cannot simply be
assigned to a phase.  Each reading is instead modelled as the time-weighted
mix of the phases it covered,

    reading_i = sum_p  share_of_interval_i_in_phase_p * activity_p

and the per-phase activities are the least-squares solution over all
readings.  That works when the mix varies from reading to reading (data waits
of varying length, steps longer than a reading); when it does not -- every
reading covers the same mix, steps far shorter than the interval -- the
system is ill-conditioned: the smallest classes are left out until the rest
can be told apart, and :func:`activity_by_phase` says so (None) rather than
inventing a split when fewer than two remain.

Phases are host-side intervals in the order the step runs them (data wait,
forward, backward, optimizer; ``other`` the rest of the step) and time
between steps (evaluation, checkpoints) is its own class, ``outside``.  GPU
work lags its launch, so "SM activity during backward" is the device's
activity while the host was in backward.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

ORDER = ("data_wait", "forward", "backward", "optimizer")
MAX_CONDITION = 50.0  # of the column-normalised design matrix
MIN_WEIGHT = 3.0  # a class needs at least three readings' worth of time


@dataclass(frozen=True)
class PhaseActivity:
    metric: str
    by_phase: dict[str, float]  # phase (and "outside") -> mean value while the host was in it
    error: dict[str, float]  # standard error of each (least squares)
    time_share: dict[str, float]  # each class's share of the sampled time
    readings: int

    def precise(self, max_error: float = 3.0) -> bool:
        """Every estimate within ``max_error`` (points of %) at one standard error."""
        return all(e <= max_error for e in self.error.values())


def _class_intervals(t_start: np.ndarray, t_end: np.ndarray,
                     phases: Mapping[str, np.ndarray]) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """(class, starts, ends) of every phase interval, laid out in ORDER from each step's start."""
    out = []
    cursor = t_start.copy()
    for name in ORDER:
        col = phases.get(name)
        if col is None:
            continue
        d = np.nan_to_num(np.clip(col, 0.0, None))
        d = np.minimum(d, np.maximum(t_end - cursor, 0.0))
        out.append((name, cursor.copy(), cursor + d))
        cursor = cursor + d
    out.append(("other", cursor, np.maximum(cursor, t_end)))
    return out


def _time_in(starts: np.ndarray, ends: np.ndarray, t0: np.ndarray, t1: np.ndarray) -> np.ndarray:
    """Seconds of the (sorted, disjoint) intervals that fall inside each [t0, t1]."""
    order = np.argsort(starts)
    s, e = starts[order], ends[order]
    cum = np.concatenate(([0.0], np.cumsum(e - s)))

    def covered(t: np.ndarray) -> np.ndarray:  # time of the intervals before t
        i = np.searchsorted(s, t, side="right")  # intervals starting at or before t
        full = cum[np.maximum(i - 1, 0)]
        last = np.where(i > 0, np.clip(t - s[np.maximum(i - 1, 0)], 0.0, (e - s)[np.maximum(i - 1, 0)]), 0.0)
        return np.where(i > 0, full + last, 0.0)

    return covered(t1) - covered(t0)


def activity_by_phase(metric: str, t_start: np.ndarray, t_end: np.ndarray, phases: Mapping[str, np.ndarray],
                      sample_t: np.ndarray, sample_v: np.ndarray, interval_s: float,
                      upper: float = 100.0, steady: np.ndarray | None = None) -> PhaseActivity | None:
    """Per-phase means of a sampled counter (readings averaged over ``interval_s`` before their time),
    clipped to [0, ``upper``] (100 for percentages; power in watts has no such ceiling).

    ``steady``: the steps to describe (the rest -- warm-up, profiled, what-if steps -- and every reading
    that overlaps them are left out).  Warm-up steps must not join the fit: their long host phases
    (cuDNN autotuning, lazy initialisation, compilation) come with an idle GPU, and a handful of such
    readings decide a fit whose steady readings barely vary.  On a real input-bound H200 run they made it
    say "SM activity 13 % in data waits, 0 % in forward" with a tight error, where the profiler trace
    shows every kernel inside forward, backward and the optimizer step.
    """
    ok = np.isfinite(sample_v)
    sample_t, sample_v = sample_t[ok], sample_v[ok]
    if sample_t.size < 10 or t_start.size == 0:
        return None
    run0, run1 = float(t_start.min()), float(t_end.max())
    inside = (sample_t - interval_s >= run0) & (sample_t <= run1)
    t1, v = sample_t[inside], sample_v[inside]
    t0 = t1 - interval_s
    if steady is not None and not steady.all():
        if not steady.any():
            return None
        touched = _time_in(t_start[~steady], t_end[~steady], t0, t1) > 0
        t0, t1, v = t0[~touched], t1[~touched], v[~touched]
        t_start, t_end = t_start[steady], t_end[steady]
        phases = {name: col[steady] for name, col in phases.items()}
    if t1.size < 10:
        return None
    names: list[str] = []
    columns: list[np.ndarray] = []
    for name, s, e in _class_intervals(t_start, t_end, phases):
        names.append(name)
        columns.append(_time_in(s, e, t0, t1) / interval_s)
    in_steps = np.sum(columns, axis=0)
    names.append("outside")
    columns.append(np.clip(1.0 - in_steps, 0.0, 1.0))
    a = np.stack(columns, axis=1)
    weight = a.sum(axis=0)
    keep = weight >= MIN_WEIGHT
    if keep.sum() < 2:
        return None
    a, names = a[:, keep], [n for n, k in zip(names, keep) if k]
    # a class whose time moves in lockstep with another's (a fixed 1 ms optimizer in every step) cannot be
    # told apart: drop the smallest until the rest can, or give up
    while np.linalg.cond(a / np.linalg.norm(a, axis=0)) > MAX_CONDITION:
        if a.shape[1] <= 2:
            return None
        drop = int(np.argmin(a.sum(axis=0)))
        a = np.delete(a, drop, axis=1)
        names.pop(drop)
    coef, *_ = np.linalg.lstsq(a, v, rcond=None)
    dof = v.size - a.shape[1]
    if dof < 3:
        return None
    residual = v - a @ coef
    cov = float(residual @ residual) / dof * np.linalg.inv(a.T @ a)
    total = float(a.sum())
    return PhaseActivity(metric, {n: float(c) for n, c in zip(names, np.clip(coef, 0.0, upper))},
                         {n: float(np.sqrt(max(cov[i, i], 0.0))) for i, n in enumerate(names)},
                         {n: float(w) / total for n, w in zip(names, a.sum(axis=0))}, int(v.size))


def window_means(sample_t: np.ndarray, sample_v: np.ndarray,
                 windows: Sequence[tuple[float, float]]) -> tuple[float | None, float | None]:
    """Mean of a counter inside the profiler windows and outside them: are the windows representative?"""
    ok = np.isfinite(sample_v)
    t, v = sample_t[ok], sample_v[ok]
    if t.size == 0 or not windows:
        return None, None
    inside = np.zeros(t.size, dtype=bool)
    for a, b in windows:
        inside |= (t >= a) & (t <= b)
    mean_in = float(v[inside].mean()) if inside.any() else None
    mean_out = float(v[~inside].mean()) if (~inside).any() else None
    return mean_in, mean_out
