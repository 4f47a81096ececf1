"""What accumulating gradients over k micro-batches will do to the time per sample of an optimizer-heavy loop.

The optimizer step costs the same whatever the batch: run once per k micro-batches, its time spreads over k
times the samples.  From the run's median step ``T``, of which the optimizer takes ``O``: a step of k
micro-batches takes ``k (T - O) + O`` for ``k B`` samples, so the time per sample shortens by
``(O / T) (1 - 1 / k)``.  The rest of the step is taken to be per micro-batch (forward, backward, the data);
``zero_grad`` and whatever else runs once per optimizer step also amortise, which the model leaves out, so it
leans low.  Pure functions: the rule feeds them measurements.
"""
from __future__ import annotations

from dataclasses import dataclass

#: Model error, from the prediction test set (bench/predictions.py, docs/advisor.md), on the time saved (the
#: uncertain part; the rest of the step is measured): the gain reached was 0.85-1.22 times the predicted one in
#: eleven pairs (one run of 150-step pairs scattered 0.43-1.52: the bench runs 300).  Above: per-step work
#: beyond the optimizer (zero_grad, the loop's own Python) amortises too; below: accumulating adds a gradient
#: sum per micro-batch.
GAIN_ERROR_LOW, GAIN_ERROR_HIGH = 0.8, 1.35


@dataclass(frozen=True)
class AccumulationPrediction:
    micro_batches: int
    gain: float  # 1 - time per sample with k micro-batches / now
    low: float
    high: float


def predict_accumulation(step_s: float, optimizer_s: float, micro_batches: int) -> AccumulationPrediction | None:
    """The time per sample with ``micro_batches`` micro-batches per optimizer step, from a run's median step
    ``step_s`` of which the optimizer takes ``optimizer_s``; None when the figures cannot say."""
    if step_s <= 0 or micro_batches < 2 or not 0 < optimizer_s <= step_s:
        return None
    k = micro_batches
    per_sample = (k * (step_s - optimizer_s) + optimizer_s) / k / step_s  # relative to now
    gain = 1.0 - per_sample
    return AccumulationPrediction(micro_batches=k, gain=gain, low=gain * GAIN_ERROR_LOW,
                                  high=min(gain * GAIN_ERROR_HIGH, optimizer_s / step_s))
