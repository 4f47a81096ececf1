"""Figures over all of a run's GPUs, one definition each: the report's cards, the advisor and compare
say the same number for "GPU busy" on an 8-GPU or multi-node run (the advisor once read GPU 0 only).

``gpus`` is the report's ``gpus`` section: one record per GPU with ``metrics`` {name: {mean, max, ...}}.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def gpu_means(gpus: Sequence[dict[str, Any]], metric: str) -> list[float]:
    """Each GPU's run mean of ``metric``, for the GPUs that recorded it."""
    out = []
    for g in gpus:
        m = (g.get("metrics") or {}).get(metric)
        if m and m.get("mean") is not None:
            out.append(float(m["mean"]))
    return out


def mean_over_gpus(gpus: Sequence[dict[str, Any]], metric: str) -> float | None:
    """The mean of the GPUs' run means (every GPU counts once, however long it recorded)."""
    values = gpu_means(gpus, metric)
    return sum(values) / len(values) if values else None


def max_over_gpus(gpus: Sequence[dict[str, Any]], metric: str, field: str = "max") -> float | None:
    """The largest ``field`` of ``metric`` on any GPU (peak memory: the GPU that comes closest to full)."""
    values = [float(m[field]) for g in gpus if (m := (g.get("metrics") or {}).get(metric)) and
              m.get(field) is not None]
    return max(values) if values else None


def ratio_over_gpus(gpus: Sequence[dict[str, Any]], metric: str, limits: Sequence[float | None]) -> float | None:
    """The mean over GPUs of each GPU's run mean of ``metric`` over its own limit (its clock over its
    maximum clock, its power over its power limit); GPUs without both are left out."""
    ratios = []
    for g, limit in zip(gpus, limits):
        m = (g.get("metrics") or {}).get(metric)
        if m and m.get("mean") and limit:
            ratios.append(float(m["mean"]) / float(limit))
    return sum(ratios) / len(ratios) if ratios else None


def worst_throttle(gpus: Sequence[dict[str, Any]]) -> dict[str, float]:
    """Each throttle reason's share of time on the GPU where it was largest (one slow GPU slows a
    data-parallel job), ``gpu_idle`` left out."""
    out: dict[str, float] = {}
    for g in gpus:
        reasons = ((g.get("metrics") or {}).get("gpu.throttle") or {}).get("reasons") or {}
        for k, v in reasons.items():
            if k != "gpu_idle" and isinstance(v, (int, float)):
                out[k] = max(out.get(k, 0.0), float(v))
    return out
