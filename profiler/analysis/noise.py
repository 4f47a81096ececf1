"""How sure a difference between two sets of steps is: block-bootstrap confidence intervals.

Step times are not independent draws: a busy neighbour, a slow epoch start or
a thermal dip makes runs of slow steps.  Resampling single steps would then
give intervals far too narrow and call host noise a regression.  The moving
block bootstrap resamples runs of consecutive steps (blocks of about
n^(1/3)), which keeps that correlation, and compares medians (robust to the
odd 10x step a checkpoint or a GC pause makes).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: Resamples per interval; 1,000 puts the 2.5 % / 97.5 % quantiles within ~0.5 % of their limit.
RESAMPLES = 1000
#: Longer series are thinned (evenly, every k-th step) to this many before resampling: a day-long run's
#: 400,000 steps say nothing about the median that 4,000 do not, and cost 100x more.
MAX_POINTS = 4000


@dataclass(frozen=True)
class Change:
    """A statistic of two runs and how it changed, with the change's 95 % interval (None: too few points).

    ``change`` is relative (+0.2: 20 % higher) or, from :func:`ratio_difference`, a difference in the
    statistic's own unit (percentage points for shares).
    """

    base: float
    candidate: float
    change: float
    low: float | None
    high: float | None

    @property
    def significant(self) -> bool:
        """The interval leaves out zero: the difference is more than the noise."""
        return self.low is not None and self.high is not None and (self.low > 0 or self.high < 0)


def _finite(*columns: np.ndarray) -> tuple[np.ndarray, ...]:
    """The rows where every column is finite."""
    arrays = [np.asarray(c, dtype=np.float64) for c in columns]
    ok = np.logical_and.reduce([np.isfinite(a) for a in arrays])
    return tuple(a[ok] for a in arrays)


def thin(*columns: np.ndarray) -> tuple[np.ndarray, ...]:
    """Finite rows thinned evenly to MAX_POINTS: what the resamples run on (point estimates use every row)."""
    n = columns[0].size
    if n <= MAX_POINTS:
        return columns
    keep = np.linspace(0, n - 1, MAX_POINTS).astype(np.int64)
    return tuple(a[keep] for a in columns)


def _blocks(n: int, rng: np.random.Generator, resamples: int) -> np.ndarray:
    """Row indices of ``resamples`` moving-block resamples of ``n`` points in recorded order, one per row."""
    block = max(1, int(round(n ** (1 / 3))))
    starts = rng.integers(0, n - block + 1, size=(resamples, -(-n // block)))
    return (starts[:, :, None] + np.arange(block)[None, None, :]).reshape(resamples, -1)[:, :n]


def median_change(base: np.ndarray, candidate: np.ndarray, seed: int = 0,
                  resamples: int = RESAMPLES) -> Change | None:
    """Relative change of the median from ``base`` to ``candidate`` (values in recorded order)."""
    (b,), (c,) = _finite(base), _finite(candidate)
    if b.size == 0 or c.size == 0:
        return None
    mb, mc = float(np.median(b)), float(np.median(c))
    if mb <= 0:
        return None
    change = mc / mb - 1.0
    if b.size < 5 or c.size < 5:
        return Change(mb, mc, change, None, None)  # too few steps to say how sure
    (tb,), (tc,) = thin(b), thin(c)
    rng = np.random.default_rng(seed)
    ratios = (np.median(tc[_blocks(tc.size, rng, resamples)], axis=1)
              / np.maximum(np.median(tb[_blocks(tb.size, rng, resamples)], axis=1), 1e-300) - 1.0)
    ratios += change - (float(np.median(tc)) / float(np.median(tb)) - 1.0)  # centred on the full runs' change
    low, high = np.quantile(ratios, [0.025, 0.975])
    return Change(mb, mc, change, float(low), float(high))


def _ratios(num: np.ndarray, den: np.ndarray, rng: np.random.Generator | None,
            resamples: int) -> tuple[float, np.ndarray | None]:
    """sum(num) / sum(den) over every row, and over block resamples of the thinned rows (centred on it;
    None with too few points)."""
    value = float(num.sum() / den.sum())
    if rng is None:
        return value, None
    tn, td = thin(num, den)
    idx = _blocks(tn.size, rng, resamples)
    resampled = tn[idx].sum(axis=1) / np.maximum(td[idx].sum(axis=1), 1e-300)
    return value, resampled + (value - float(tn.sum() / td.sum()))


def _ratio_pair(base: tuple[np.ndarray, np.ndarray], candidate: tuple[np.ndarray, np.ndarray], seed: int,
                resamples: int) -> tuple[float, float, np.ndarray | None, np.ndarray | None] | None:
    bn, bd = _finite(*base)
    cn, cd = _finite(*candidate)
    if bn.size == 0 or cn.size == 0 or bd.sum() <= 0 or cd.sum() <= 0:
        return None
    rng = np.random.default_rng(seed) if bn.size >= 5 and cn.size >= 5 else None
    vb, rb = _ratios(bn, bd, rng, resamples)
    vc, rc = _ratios(cn, cd, rng, resamples)
    return vb, vc, rb, rc


def ratio_change(base: tuple[np.ndarray, np.ndarray], candidate: tuple[np.ndarray, np.ndarray], seed: int = 0,
                 resamples: int = RESAMPLES) -> Change | None:
    """Relative change of sum(num) / sum(den): samples per second, joules per sample, mean power -- the
    report's own definitions (a ratio of totals over the steady steps), with a per-step interval."""
    got = _ratio_pair(base, candidate, seed, resamples)
    if got is None or got[0] <= 0:
        return None
    vb, vc, rb, rc = got
    if rb is None or rc is None:
        return Change(vb, vc, vc / vb - 1.0, None, None)
    low, high = np.quantile(rc / np.maximum(rb, 1e-300) - 1.0, [0.025, 0.975])
    return Change(vb, vc, vc / vb - 1.0, float(low), float(high))


def ratio_difference(base: tuple[np.ndarray, np.ndarray], candidate: tuple[np.ndarray, np.ndarray],
                     scale: float = 1.0, seed: int = 0, resamples: int = RESAMPLES) -> Change | None:
    """Difference of sum(num) / sum(den) x ``scale`` (a phase's share of step time in points, with
    scale 100; a mean of readings with den = 1)."""
    got = _ratio_pair(base, candidate, seed, resamples)
    if got is None:
        return None
    vb, vc, rb, rc = got
    if rb is None or rc is None:
        return Change(vb * scale, vc * scale, (vc - vb) * scale, None, None)
    low, high = np.quantile((rc - rb) * scale, [0.025, 0.975])
    return Change(vb * scale, vc * scale, (vc - vb) * scale, float(low), float(high))
