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

from gpulens.profiler.analysis.trace.intervals import Covered, merge

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
    lag_s: float = 0.0  # how much earlier than stamped the readings fitted best

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


#: How late a reading may describe its interval: on a real H200 the GPM readings matched a probe's known
#: busy intervals best 60-160 ms before their timestamps (tools/gpm_timing_probe.py, 200 ms to 1 s sampling),
#: and by a different amount in each run.  The lag is fitted with the split (least squares over this grid).
LAGS_S = tuple(round(0.01 * i, 2) for i in range(21))  # 0 to 200 ms
MAX_READINGS = 20_000  # thinned evenly beyond this (a day at 10 Hz is 864,000 readings)
LAG_SEARCH_READINGS = 4_000  # enough to place the readings in time: the lag is chosen on these


def activity_by_phase(metric: str, t_start: np.ndarray, t_end: np.ndarray, phases: Mapping[str, np.ndarray],
                      sample_t: np.ndarray, sample_v: np.ndarray, interval_s: float,
                      upper: float = 100.0, steady: np.ndarray | None = None,
                      lags: Sequence[float] = LAGS_S) -> PhaseActivity | None:
    """Per-phase means of a sampled counter (readings averaged over ``interval_s`` before their time, less
    a lag fitted from ``lags``), clipped to [0, ``upper``] (100 for percentages; watts have no ceiling).

    ``steady``: the steps to describe (the rest -- warm-up, profiled, what-if steps -- and every reading
    that overlaps them are left out).  Warm-up steps must not join the fit: their long host phases
    (cuDNN autotuning, lazy initialisation, compilation) come with an idle GPU, and a handful of such
    readings decide a fit whose steady readings barely vary.  On a real input-bound H200 run they made it
    say "SM activity 13 % in data waits, 0 % in forward" with a tight error, where the profiler trace
    shows every kernel inside forward, backward and the optimizer step.

    The lag: with phases of 10-100 ms, readings placed 100 ms off put forward's activity into the next
    data wait.  On the probe runs the fitted lag recovers an idle data wait (0.0 +- 0.3 %) and busy
    forwards (81-86 %); at no lag the same readings said 10.6 % and 22 +- 9 %.
    """
    ok = np.isfinite(sample_v)
    sample_t, sample_v = sample_t[ok], sample_v[ok]
    if sample_t.size > MAX_READINGS:
        keep = np.unique(np.linspace(0, sample_t.size - 1, MAX_READINGS).astype(np.int64))
        sample_t, sample_v = sample_t[keep], sample_v[keep]
    if sample_t.size < 10 or t_start.size == 0:
        return None
    if steady is not None and not steady.all():
        if not steady.any():
            return None
        others: Covered | None = Covered(merge(t_start[~steady], t_end[~steady]))
        t_start, t_end = t_start[steady], t_end[steady]
        phases = {name: col[steady] for name, col in phases.items()}
    else:
        others = None
    classes = [(name, Covered(merge(s, e))) for name, s, e in _class_intervals(t_start, t_end, phases)]
    # the lag is chosen on at most LAG_SEARCH_READINGS of the readings, the split then fitted on all of them
    few = np.unique(np.linspace(0, sample_t.size - 1, min(sample_t.size, LAG_SEARCH_READINGS)).astype(np.int64))
    best: tuple[float, PhaseActivity] | None = None
    for lag in lags:
        fitted = _fit(metric, classes, t_start, t_end, others, sample_t[few] - lag, sample_v[few], interval_s,
                      upper, lag)
        if fitted is not None and (best is None or fitted[0] < best[0]):
            best = fitted
    if best is None:
        return None
    if few.size == sample_t.size:
        return best[1]
    lag = best[1].lag_s
    final = _fit(metric, classes, t_start, t_end, others, sample_t - lag, sample_v, interval_s, upper, lag)
    return final[1] if final is not None else None


def _fit(metric: str, classes: list[tuple[str, Covered]], t_start: np.ndarray, t_end: np.ndarray,
         others: Covered | None, sample_t: np.ndarray, sample_v: np.ndarray,
         interval_s: float, upper: float, lag: float) -> tuple[float, PhaseActivity] | None:
    """(residual variance, split) of the readings placed ``lag`` seconds earlier than stamped."""
    run0, run1 = float(t_start.min()), float(t_end.max())
    inside = (sample_t - interval_s >= run0) & (sample_t <= run1)
    t1, v = sample_t[inside], sample_v[inside]
    t0 = t1 - interval_s
    if others is not None and t1.size:
        touched = others.within(t0, t1) > 0
        t0, t1, v = t0[~touched], t1[~touched], v[~touched]
    if t1.size < 10:
        return None
    names: list[str] = []
    columns: list[np.ndarray] = []
    for name, cover in classes:
        names.append(name)
        columns.append(cover.within(t0, t1) / interval_s)
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
    variance = float(residual @ residual) / dof
    cov = variance * np.linalg.inv(a.T @ a)
    total = float(a.sum())
    return variance, PhaseActivity(metric, {n: float(c) for n, c in zip(names, np.clip(coef, 0.0, upper))},
                                   {n: float(np.sqrt(max(cov[i, i], 0.0))) for i, n in enumerate(names)},
                                   {n: float(w) / total for n, w in zip(names, a.sum(axis=0))}, int(v.size), lag)


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
