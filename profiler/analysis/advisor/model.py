"""What the advisor says: suggestions with their numbers, actions, gains and evidence."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

SEVERITIES = ("high", "medium", "low")
ADVICE_SCHEMA = "gpulens.advice/1"


@dataclass
class Evidence:
    """A pointer the dashboard can follow: a phase, metric, time range, steps, kernels or a profiler window."""

    kind: str  # phase | metric | time_range | steps | kernels | window | rank
    label: str
    data: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Prediction:
    """What following a suggestion's ``change`` should do to the median step: a point estimate, not a bound.

    ``gain_fraction`` is the expected shortening (0.3: 30 % shorter steps; negative: longer), ``low`` and
    ``high`` an interval that the prediction test set shows to hold, ``basis`` how it was predicted
    ("what-if measured", "model: ..."), ``measure`` what shortens: the median step; the mean step (a rate:
    DataLoader workers started together deliver in rounds, one long step and N - 1 short ones, whose median
    is the short ones); the time per sample (a batch-size change makes each step longer and each sample
    shorter); or the wall time per step, gaps between steps included (workers restarted every epoch cost
    time outside every step)."""

    gain_fraction: float
    low: float
    high: float
    basis: str
    measure: str = "median_step"  # median_step | mean_step | time_per_sample | wall_per_step

    def as_dict(self) -> dict[str, Any]:
        return {"gain_fraction": round(self.gain_fraction, 4), "low": round(self.low, 4),
                "high": round(self.high, 4), "basis": self.basis, "measure": self.measure}


@dataclass
class Suggestion:
    id: str  # rule id from ADVISOR-RULES.md
    severity: str  # high | medium | low
    title: str
    finding: str  # the numbers that triggered it
    action: str
    expected_gain: str
    gain_estimate: str  # how the gain was estimated
    confidence: str  # high | medium | low
    evidence: list[Evidence] = field(default_factory=list)
    snippet: str | None = None
    gain_fraction: float | None = None  # upper bound on the step-time fraction saved, for ranking
    overlaps: list[str] = field(default_factory=list)  # suggestions that claim part of the same time
    #: the change proposed, machine-readable (``{"num_workers": 2, "persistent_workers": True}``): what a user or
    #: CI applies, and what ``gpulens compare`` checks the next run against
    change: dict[str, Any] | None = None
    prediction: Prediction | None = None  # what the change should do, where a model or a what-if can say

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["expected_gain_fraction"] = out.pop("gain_fraction")
        out["prediction"] = self.prediction.as_dict() if self.prediction is not None else None
        return out


@dataclass
class NotEvaluated:
    """A rule that lacked the data it needs, and which measurement would enable it."""

    id: str
    needs: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Advice:
    run: str
    suggestions: list[Suggestion]
    not_evaluated: list[NotEvaluated]
    #: All suggestions together, overlapping ones counted once: the sum over groups of overlapping suggestions
    #: of each group's largest gain (groups claim disjoint parts of the step), at most 0.99.
    combined_gain_fraction: float | None = None
    #: Why there is no advice yet (a running run before its first steady step), else None.
    waiting: str | None = None

    def as_dict(self) -> dict[str, Any]:
        out = {"schema": ADVICE_SCHEMA, "run": self.run,
               "suggestions": [s.as_dict() for s in self.suggestions],
               "combined_gain_fraction": self.combined_gain_fraction,
               "not_evaluated": [n.as_dict() for n in self.not_evaluated]}
        if self.waiting:
            out["waiting"] = self.waiting
        return out


def rank_key(s: Suggestion) -> tuple[int, float]:
    return SEVERITIES.index(s.severity), -(s.gain_fraction or 0.0)
