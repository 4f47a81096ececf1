"""Peak memory and step time against batch size: how large can the batch be?

peak(B) = M_static + B * m_act, fitted by least squares to measured (batch,
peak) pairs; B_max = floor((C * (1 - margin) - M_static) / m_act) for a
capacity C.  Step time is fitted the same way, t(B) = t0 + B * t1, to
predict throughput at B_max.  Pure functions: the data comes from a probe
(gpulens.probe_batch_sizes) or from recorded runs.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

DEFAULT_MARGIN = 0.05


@dataclass(frozen=True)
class BatchFit:
    m_static: float  # bytes that do not grow with the batch (weights, grads, optimizer state, workspace)
    m_act: float  # bytes per sample (activations)
    r2: float
    t0: float | None  # step time model (s): t0 + t1 * B
    t1: float | None
    batches: tuple[int, ...]

    def b_max(self, capacity: float, margin: float = DEFAULT_MARGIN) -> int:
        if self.m_act <= 0:
            return 0
        return max(0, math.floor((capacity * (1 - margin) - self.m_static) / self.m_act))

    def peak(self, batch: float) -> float:
        return self.m_static + batch * self.m_act

    def samples_per_s(self, batch: float) -> float | None:
        if self.t0 is None or self.t1 is None:
            return None
        t = self.t0 + self.t1 * batch
        return batch / t if t > 0 else None


def fit(points: list[dict[str, Any]]) -> BatchFit | None:
    """Fit from points {batch, peak_bytes, step_s?}; None without two distinct batch sizes."""
    good = [p for p in points if p.get("peak_bytes") and p.get("batch")]
    b = np.asarray([float(p["batch"]) for p in good])
    if np.unique(b).size < 2:
        return None
    y = np.asarray([float(p["peak_bytes"]) for p in good])
    slope, intercept = np.polyfit(b, y, 1)
    pred = intercept + slope * b
    ss_res = float(((y - pred) ** 2).sum())
    ss_tot = float(((y - y.mean()) ** 2).sum()) or 1.0
    timed = [p for p in good if p.get("step_s")]
    t0 = t1 = None
    if len({p["batch"] for p in timed}) >= 2:
        tb = np.asarray([float(p["batch"]) for p in timed])
        tt = np.asarray([float(p["step_s"]) for p in timed])
        t1, t0 = (float(v) for v in np.polyfit(tb, tt, 1))
    return BatchFit(float(intercept), float(slope), 1.0 - ss_res / ss_tot, t0, t1,
                    tuple(sorted(int(v) for v in np.unique(b))))


def round_batch(b: int) -> int:
    """A batch size to suggest: a multiple of 8 below ``b`` when b >= 16 (tensor-core friendly)."""
    return b - b % 8 if b >= 16 else b


def lr_scaling(optimizer: str | None, k: float) -> str:
    """How to scale the learning rate when the global batch grows by k."""
    name = (optimizer or "").lower()
    if "adam" in name or "lamb" in name or "lion" in name:
        return f"Adam-family optimizer: lr x sqrt({k:.2g}) = x{math.sqrt(k):.2f} (Malladi et al. 2022)"
    if "sgd" in name:
        return f"SGD: lr x {k:.2g} with a warm-up of a few epochs (Goyal et al. 2017)"
    return (f"SGD: lr x {k:.2g} with warm-up (Goyal et al. 2017); Adam-family: lr x {math.sqrt(k):.2f} "
            "(square root; Malladi et al. 2022)")
