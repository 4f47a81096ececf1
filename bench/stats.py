"""Small statistics shared by the benches: paired ratios with a bootstrap confidence interval.

This machine's noise moves whole seconds by +-40 %, so every claim is a ratio
of two arms measured in interleaved pairs, reported as the median over
pairs with a 95 % interval from resampling the pairs.
"""
from __future__ import annotations

import random
import statistics
from typing import Callable, Sequence


def bootstrap_ci(values: Sequence[float], stat: Callable[[Sequence[float]], float] = statistics.median,
                 n: int = 4000, level: float = 0.95, seed: int = 0) -> tuple[float, float, float]:
    """(statistic, low, high): ``stat`` of ``values`` and its percentile-bootstrap interval."""
    values = list(values)
    if not values:
        raise ValueError("no values")
    rng = random.Random(seed)
    draws = sorted(stat([rng.choice(values) for _ in values]) for _ in range(n))
    lo = draws[int((1 - level) / 2 * n)]
    hi = draws[min(n - 1, int((1 + level) / 2 * n))]
    return stat(values), lo, hi


def fmt_ci(name: str, values: Sequence[float], target: float | None = None) -> str:
    """One line: median ratio [95 % CI] over pairs, and the target when there is one."""
    mid, lo, hi = bootstrap_ci(values)
    line = f"{name}: {mid:.4f}  [95% CI {lo:.4f}-{hi:.4f}, {len(values)} pairs]"
    if target is not None:
        line += f"  target <= {target}: {'met' if mid <= target else 'NOT met'}"
    return line
