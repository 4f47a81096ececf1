"""What a measured what-if showed: its stretch's steps against the run's own steady steps.

The stretch (hooks/track/whatif.py) ran the user's loop with replayed batches
(``synthetic-data``), at another batch size, or with its batches loaded by
another number of DataLoader workers (``num-workers``, measured from
``measure_from`` on: its first steps wait for new workers to start; judged on
means of N steps, one round of its N workers); both sides are real steps of
the same process, so the comparison carries the same noise-aware interval as
``gpulens compare`` (:mod:`noise`).  Profiled steps inside the stretch are
left out: the profiler's cost is not the change being measured.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from gpulens.profiler.analysis.noise import median_change
from gpulens.profiler.store.reader import StepTable
from gpulens.profiler.store.schema import FLAG_PROFILED


def what_if_result(steps: StepTable, meta: dict[str, Any]) -> dict[str, Any] | None:
    """The report's ``what_if`` key: None when the run asked for none."""
    plan = meta.get("what_if")
    if not isinstance(plan, dict):
        return None
    out: dict[str, Any] = {
        "kind": plan.get("kind"), "status": plan.get("status"), "reason": plan.get("reason"),
        "batch_size": plan.get("batch_size"), "base_batch": plan.get("base_batch"),
        "num_workers": plan.get("num_workers"), "base_workers": plan.get("base_workers"),
        "implementation": plan.get("implementation"),
        "first_step": plan.get("first_step"), "last_step": plan.get("last_step"),
        "measured_from_step": plan.get("measure_from", plan.get("first_step")), "steps": 0, "measure": None,
        "step_time_median_s": None, "baseline_step_time_median_s": None,
        "step_time_change": None, "step_time_change_ci": None,
        "data_wait_median_s": None, "baseline_data_wait_median_s": None,
        "samples_per_s": None, "baseline_samples_per_s": None, "samples_per_s_change": None,
    }
    if plan.get("status") not in ("done", "cut short") or not len(steps):
        return out
    first, last = int(out["measured_from_step"] or 0), int(plan.get("last_step") or 0)
    step = steps.step
    stretch = (step >= first) & (step <= last) & ((steps.flags & FLAG_PROFILED) == 0)
    base = steps.steady()  # not counted(): without steady steps there is no loop as the user runs it to
    # compare with, and the fallback to every step would put the stretch on both sides
    if not stretch.any() or not base.any():
        return out
    d = steps.duration
    if plan.get("kind") == "batch-size":
        # its stretch replays batches, so it waits for no input: compare compute (step minus data wait) on
        # both sides, or the batch size would be credited with the loader's wait
        d = d - np.nan_to_num(steps.data_wait)
    out["measure"] = "step time without data wait" if plan.get("kind") == "batch-size" else "step time"
    out["steps"] = int(stretch.sum())
    tried = d[stretch]
    workers = int(plan.get("num_workers") or 0) if plan.get("kind") == "num-workers" else 0
    if 2 <= workers <= tried.size // 2:
        # N workers started together deliver in rounds of N batches: one step waits for the round, the next N - 1
        # find their batch ready, so the plain median is the round's short steps. The median of N-step means is
        # the rate they sustain -- what a run with those workers, long desynchronised, shows as its median step
        tried = np.convolve(tried, np.ones(workers) / workers, mode="valid")
        out["measure"] = f"step time, {workers}-step means"
    change = median_change(d[base], tried)
    if change is not None:
        out.update({"step_time_median_s": change.candidate, "baseline_step_time_median_s": change.base,
                    "step_time_change": change.change,
                    "step_time_change_ci": [change.low, change.high] if change.low is not None else None})
    out["data_wait_median_s"] = float(np.median(steps.data_wait[stretch]))
    out["baseline_data_wait_median_s"] = float(np.median(steps.data_wait[base]))
    samples = steps.samples

    def rate(mask: np.ndarray) -> float | None:
        known = mask & np.isfinite(samples)
        total = float(d[known].sum())
        return float(samples[known].sum()) / total if known.any() and total > 0 else None

    out["samples_per_s"], out["baseline_samples_per_s"] = rate(stretch), rate(base)
    if out["samples_per_s"] and out["baseline_samples_per_s"]:
        out["samples_per_s_change"] = out["samples_per_s"] / out["baseline_samples_per_s"] - 1.0
    return out
