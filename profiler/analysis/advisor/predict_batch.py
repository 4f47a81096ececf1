"""What a larger batch will do to the time per sample: the probe's step-time curve applied to the run's own step.

A larger batch is worth it when a step has costs that do not grow with the batch (kernel launches, the
optimizer, Python between kernels): the probe (``gpulens.probe_batch_sizes``) times real steps at a few
sizes and fits ``t(B) = t0 + t1 * B``.  Its times are not the run's (on a CPU the probe runs one thread in a
forked child; on a GPU it has no data loading), so only their ratio is used, on the part of the run's step
that the probe ran -- the loop's own work:

* the run's median step ``T`` at batch ``B0`` splits into its data wait ``W`` and the rest, ``T - W``;
* at batch ``B`` the rest takes ``(T - W) * t(B) / t(B0)`` and the wait grows with the samples to load,
  ``W * B / B0`` (loading is per sample);
* the gain is the shortening of the time per sample, ``1 - (T_B / B) / (T / B0)``: the step itself gets longer.

Pure functions: the rule feeds them measurements.
"""
from __future__ import annotations

from dataclasses import dataclass

#: Model error, from the prediction test set (bench/predictions.py, docs/advisor.md): the time per sample
#: reached was 0.72-1.41 times the predicted one in eleven pairs over four runs of the set.  Below: on a CPU the
#: run's intra-op threads gain more from a larger batch than the probe's single thread shows (a thread pool is
#: poorly used at batch 16); above: the probe's step times are medians of a few steps each, so its intercept
#: (the per-step cost a larger batch spreads) carries their noise.
PER_SAMPLE_ERROR_LOW, PER_SAMPLE_ERROR_HIGH = 0.7, 1.45


@dataclass(frozen=True)
class BatchPrediction:
    batch: int
    step_s: float  # predicted median step at ``batch``
    gain: float  # 1 - time per sample at ``batch`` / now
    low: float
    high: float


def predict_batch(step_s: float, wait_s: float, batch: int, new_batch: int, t0: float,
                  t1: float) -> BatchPrediction | None:
    """The time per sample at ``new_batch`` from a run's median step ``step_s`` (of which ``wait_s`` waits for
    data) at ``batch`` and the probe's fit ``t0 + t1 * B``; None when the fit cannot say (a step time that is
    not positive at either size)."""
    if step_s <= 0 or batch <= 0 or new_batch <= 0:
        return None
    now_fit, new_fit = t0 + t1 * batch, t0 + t1 * new_batch
    if now_fit <= 0 or new_fit <= 0:
        return None
    wait = min(max(wait_s, 0.0), step_s)
    new_step = (step_s - wait) * new_fit / now_fit + wait * new_batch / batch
    per_sample_now, per_sample_new = step_s / batch, new_step / new_batch
    gain = 1.0 - per_sample_new / per_sample_now
    low = 1.0 - per_sample_new * PER_SAMPLE_ERROR_HIGH / per_sample_now
    high = 1.0 - per_sample_new * PER_SAMPLE_ERROR_LOW / per_sample_now
    return BatchPrediction(batch=new_batch, step_s=new_step, gain=gain, low=low, high=high)
