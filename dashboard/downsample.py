"""Server-side downsampling to the plot's pixel width.

Raw points go through MinMaxLTTB (tsdownsample): min/max preselection keeps
every spike, LTTB keeps the shape, and it is ~2 ms for a million points.
Rollup buckets (pre-aggregated min/max/mean, see profiler.reader.series_view)
are turned into their min/max envelope first, so a day-long series drawn from
buckets looks like the same series drawn from raw points.  Gaps in the
recording become NaN, which the browser draws as a break instead of a
straight line across the missing stretch.
"""
from __future__ import annotations

import numpy as np
from tsdownsample import MinMaxLTTBDownsampler

_MINMAX_LTTB = MinMaxLTTBDownsampler()

#: A step between consecutive samples longer than this many median steps is drawn as a gap.
GAP_FACTOR = 5.0


def minmax_lttb(t: np.ndarray, v: np.ndarray, n_out: int) -> tuple[np.ndarray, np.ndarray]:
    """At most ``n_out`` points of (t, v) chosen by MinMaxLTTB; non-finite values are dropped first."""
    ok = np.isfinite(v) & np.isfinite(t)
    if not ok.all():
        t, v = t[ok], v[ok]
    idx = _pick(t, v, n_out)
    return t[idx], v[idx]


def _pick(t: np.ndarray, v: np.ndarray, n_out: int) -> np.ndarray:
    """Indices of the points MinMaxLTTB keeps (all of them when they fit)."""
    n_out = max(int(n_out), 4)
    if t.size <= n_out:
        return np.arange(t.size)
    return np.asarray(_MINMAX_LTTB.downsample(np.ascontiguousarray(t, dtype=np.float64),
                                              np.ascontiguousarray(v, dtype=np.float64), n_out=n_out))


def steps_for_plot(t_end: np.ndarray, dur: np.ndarray, n_out: int,
                   origin: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Step durations as a line at each step's end, broken only where no step ran.

    Steps are not samples at a fixed rate: a stretch of 290 ms steps between
    8 ms ones is 36x sparser than its neighbours, and a gap rule based on the
    usual spacing would cut the line around every slow step (a lone point
    between two breaks draws nothing: exactly the slowdown would vanish).
    Here a break needs idle time between one step's end and the next one's
    start; a step left alone between two breaks is drawn across its own
    duration, so it stays visible.
    """
    ok = np.isfinite(t_end) & np.isfinite(dur)
    t, d = np.asarray(t_end, dtype=np.float64)[ok], np.asarray(dur, dtype=np.float64)[ok]
    if t.size == 0:
        return t.astype(np.float32), d.astype(np.float32)
    idle = (t[1:] - d[1:]) - t[:-1]  # before step k + 1
    span = float(t[-1] - t[0])
    limit = max(GAP_FACTOR * float(np.median(d)), 4.0 * span / max(int(n_out), 1))
    breaks = np.concatenate(([0], np.cumsum(idle > limit)))  # breaks[k]: breaks before step k
    idx = _pick(t, d, n_out)
    seg = breaks[idx]
    xs: list[float] = []
    ys: list[float] = []
    for j, k in enumerate(idx):
        new_segment = j == 0 or seg[j] != seg[j - 1]
        if new_segment and j > 0:
            xs.append((t[idx[j - 1]] + t[k] - d[k]) / 2)
            ys.append(np.nan)
        alone = new_segment and (j + 1 == idx.size or seg[j + 1] != seg[j])
        if alone:
            xs.append(t[k] - d[k])
            ys.append(d[k])
        xs.append(t[k])
        ys.append(d[k])
    return (np.asarray(xs) - origin).astype(np.float32), np.asarray(ys).astype(np.float32)


def envelope(t: np.ndarray, vmin: np.ndarray, vmax: np.ndarray, width: float) -> tuple[np.ndarray, np.ndarray]:
    """Buckets of ``width`` seconds starting at ``t`` as a zig-zag through their minima and maxima."""
    if t.size == 0:
        return t, vmin
    tt = np.empty(t.size * 2)
    vv = np.empty(t.size * 2)
    tt[0::2] = t + width * 0.25
    tt[1::2] = t + width * 0.75
    vv[0::2] = vmin
    vv[1::2] = vmax
    return tt, vv


def with_gaps(t: np.ndarray, v: np.ndarray, native_step: float | None = None,
              min_gap: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Insert a NaN wherever consecutive samples are much further apart than usual."""
    if t.size < 3:
        return t, v
    dt = np.diff(t)
    step = native_step if native_step else float(np.median(dt))
    limit = max(step * GAP_FACTOR, min_gap)
    cut = np.flatnonzero(dt > limit)
    if cut.size == 0:
        return t, v
    t = np.insert(t, cut + 1, (t[cut] + t[cut + 1]) / 2)
    v = np.insert(v.astype(np.float64), cut + 1, np.nan)
    return t, v


def native_step(t: np.ndarray) -> float | None:
    """The usual spacing of raw samples (median), or None with too few."""
    if t.size < 3:
        return None
    return float(np.median(np.diff(t)))


def for_plot(t: np.ndarray, v: np.ndarray, n_out: int, *, vmin: np.ndarray | None = None,
             vmax: np.ndarray | None = None, bucket: float | None = None,
             origin: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """What one trace sends to the browser: ~n_out points, gaps as NaN, float32, x relative to ``origin``.

    ``bucket`` set means (t, vmin, vmax) are rollup buckets of that width.
    """
    if bucket is not None and vmin is not None and vmax is not None:
        ok = np.isfinite(vmin) & np.isfinite(vmax)
        tb, lo, hi = t[ok], vmin[ok], vmax[ok]
        tt, vv = envelope(tb, lo, hi, bucket)
        tt, vv = minmax_lttb(tt, vv, n_out)
        span = (tt[-1] - tt[0]) if tt.size else 0.0
        tt, vv = with_gaps(tt, vv, min_gap=max(3.0 * bucket, 4.0 * span / max(n_out, 1)))
    else:
        step = native_step(t)
        tt, vv = minmax_lttb(t, v, n_out)
        span = (tt[-1] - tt[0]) if tt.size else 0.0
        tt, vv = with_gaps(tt, vv, native_step=step, min_gap=4.0 * span / max(n_out, 1))
    return (tt - origin).astype(np.float32), vv.astype(np.float32)
