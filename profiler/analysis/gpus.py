"""Figures over all of a run's GPUs, one definition each: the report's cards, the advisor and compare
say the same number for "GPU busy" on an 8-GPU or multi-node run (the advisor once read GPU 0 only).

``gpus`` is the report's ``gpus`` section (:class:`~gpulens.profiler.analysis.report.Gpu`): one record per
GPU with its metrics' statistics.
"""
from __future__ import annotations

from collections.abc import Sequence

from msgspec import UNSET

from gpulens.profiler.analysis.report import Gpu


def gpu_means(gpus: Sequence[Gpu], metric: str) -> list[float]:
    """Each GPU's run mean of ``metric``, for the GPUs that recorded it."""
    return [m.mean for g in gpus if (m := g.metrics.get(metric)) is not None]


def mean_over_gpus(gpus: Sequence[Gpu], metric: str) -> float | None:
    """The mean of the GPUs' run means (every GPU counts once, however long it recorded)."""
    values = gpu_means(gpus, metric)
    return sum(values) / len(values) if values else None


def max_over_gpus(gpus: Sequence[Gpu], metric: str) -> float | None:
    """The largest reading of ``metric`` on any GPU (peak memory: the GPU that comes closest to full)."""
    values = [m.max for g in gpus if (m := g.metrics.get(metric)) is not None]
    return max(values) if values else None


def ratio_over_gpus(gpus: Sequence[Gpu], metric: str, limits: Sequence[float | None]) -> float | None:
    """The mean over GPUs of each GPU's run mean of ``metric`` over its own limit (its clock over its
    maximum clock, its power over its power limit); GPUs without both are left out."""
    ratios = []
    for g, limit in zip(gpus, limits):
        m = g.metrics.get(metric)
        if m is not None and m.mean and limit:
            ratios.append(m.mean / float(limit))
    return sum(ratios) / len(ratios) if ratios else None


def worst_throttle(gpus: Sequence[Gpu]) -> dict[str, float]:
    """Each throttle reason's share of time on the GPU where it was largest (one slow GPU slows a
    data-parallel job), ``gpu_idle`` left out."""
    out: dict[str, float] = {}
    for g in gpus:
        throttle = g.metrics.get("gpu.throttle")
        reasons = throttle.reasons if throttle is not None and throttle.reasons is not UNSET else {}
        for k, v in reasons.items():
            if k != "gpu_idle":
                out[k] = max(out.get(k, 0.0), v)
    return out
