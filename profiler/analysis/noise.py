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
    """``candidate / base - 1`` of a statistic, with its 95 % interval (None where it cannot be told)."""

    base: float
    candidate: float
    change: float  # relative: +0.2 = 20 % higher
    low: float | None
    high: float | None

    @property
    def significant(self) -> bool:
        """The interval leaves out zero: the difference is more than the noise."""
        return self.low is not None and self.high is not None and (self.low > 0 or self.high < 0)


def _thin(values: np.ndarray) -> np.ndarray:
    if values.size <= MAX_POINTS:
        return values
    return values[np.linspace(0, values.size - 1, MAX_POINTS).astype(np.int64)]


def _resamples(values: np.ndarray, rng: np.random.Generator, resamples: int) -> np.ndarray:
    """``resamples`` moving-block resamples of ``values`` (in their recorded order), one per row."""
    n = values.size
    block = max(1, int(round(n ** (1 / 3))))
    starts = rng.integers(0, n - block + 1, size=(resamples, -(-n // block)))
    idx = (starts[:, :, None] + np.arange(block)[None, None, :]).reshape(resamples, -1)[:, :n]
    return values[idx]


def median_change(base: np.ndarray, candidate: np.ndarray, seed: int = 0,
                  resamples: int = RESAMPLES) -> Change | None:
    """Relative change of the median from ``base`` to ``candidate`` (values in recorded order)."""
    b = _thin(np.asarray(base, dtype=np.float64)[np.isfinite(base)])
    c = _thin(np.asarray(candidate, dtype=np.float64)[np.isfinite(candidate)])
    if b.size == 0 or c.size == 0:
        return None
    mb, mc = float(np.median(b)), float(np.median(c))
    if mb <= 0:
        return None
    change = mc / mb - 1.0
    if b.size < 5 or c.size < 5:
        return Change(mb, mc, change, None, None)  # too few steps to say how sure
    rng = np.random.default_rng(seed)
    ratios = (np.median(_resamples(c, rng, resamples), axis=1)
              / np.maximum(np.median(_resamples(b, rng, resamples), axis=1), 1e-300) - 1.0)
    low, high = np.quantile(ratios, [0.025, 0.975])
    return Change(mb, mc, change, float(low), float(high))


def mean_difference(base: np.ndarray, candidate: np.ndarray, seed: int = 0,
                    resamples: int = RESAMPLES) -> tuple[float, float | None, float | None] | None:
    """Difference of means (candidate - base) with its 95 % block-bootstrap interval (shares, utilisation)."""
    b = _thin(np.asarray(base, dtype=np.float64)[np.isfinite(base)])
    c = _thin(np.asarray(candidate, dtype=np.float64)[np.isfinite(candidate)])
    if b.size == 0 or c.size == 0:
        return None
    diff = float(c.mean() - b.mean())
    if b.size < 5 or c.size < 5:
        return diff, None, None
    rng = np.random.default_rng(seed)
    d = _resamples(c, rng, resamples).mean(axis=1) - _resamples(b, rng, resamples).mean(axis=1)
    low, high = np.quantile(d, [0.025, 0.975])
    return diff, float(low), float(high)
