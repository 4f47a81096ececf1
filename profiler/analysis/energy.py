"""GPU energy per run, per step, per phase and per sample.

The source is NVML's total-energy counter (``gpu.energy``, joules since the
driver loaded, read every slow interval); where a GPU has none, its power
readings (``gpu.power``) integrated over time.  Both become one cumulative
curve per GPU, so a step's energy is the curve's rise between the step's
start and end (linear between readings: a millisecond step gets the
average power of the second around it times its duration).

Per phase, readings are far coarser than phases, so the split is the
least-squares one :mod:`phase_activity` uses for SM activity: each power
reading is modelled as the time-weighted mix of the phases it covered, which
gives watts while the host was in each phase; joules per step of a phase are
those watts times the phase's median time.  NVML's power reading on
Ampere-and-newer GPUs (except GA100) is an average over the last second,
which is the interval used.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from gpulens.profiler.analysis.phase_activity import PhaseActivity, activity_by_phase
from gpulens.profiler.store.reader import RunReader, Series, StepTable
from gpulens.profiler.store.schema import PHASES

#: The window NVML averages a power reading over (Ampere and newer, except GA100).
POWER_AVERAGE_S = 1.0
#: Points kept of a curve integrated from power readings (a day at 10 Hz is 864,000; the curve is smooth).
MAX_CURVE_POINTS = 20000


@dataclass(frozen=True)
class EnergyCurve:
    """Cumulative joules of one GPU at times ``t`` (from the counter, or from integrated power)."""

    gpu: int
    source: str  # nvml-energy-counter | power-integration
    t: np.ndarray
    joules: np.ndarray

    def at(self, times: np.ndarray) -> np.ndarray:
        """The curve at ``times`` (NaN outside the readings: no extrapolation)."""
        out = np.interp(times, self.t, self.joules)
        return np.where((times >= self.t[0]) & (times <= self.t[-1]), out, np.nan)


def curve(gpu: int, counter: Series | None, power: Series | None) -> EnergyCurve | None:
    """The energy curve of one GPU: its counter when it has two readings, else its integrated power."""
    if counter is not None and len(counter) >= 2 and np.isfinite(counter.v).sum() >= 2:
        ok = np.isfinite(counter.v)
        return EnergyCurve(gpu, "nvml-energy-counter", counter.t[ok], counter.v[ok] - counter.v[ok][0])
    if power is not None and len(power) >= 2:
        ok = np.isfinite(power.v)
        t, w = power.t[ok], power.v[ok]
        if t.size >= 2:
            joules = np.concatenate(([0.0], np.cumsum((w[1:] + w[:-1]) / 2 * np.diff(t))))
            if t.size > MAX_CURVE_POINTS:
                keep = np.unique(np.linspace(0, t.size - 1, MAX_CURVE_POINTS).astype(np.int64))
                t, joules = t[keep], joules[keep]
            return EnergyCurve(gpu, "power-integration", t, joules)
    return None


def gpu_energy(run: RunReader, steps: StepTable | None = None) -> tuple[list[EnergyCurve], list[PowerSplit | None]]:
    """Every sampled GPU's energy curve and (with ``steps``) its watts by phase -- each node's GPUs from the
    rank that sampled them, one GPU's readings in memory at a time (a day at 10 Hz is 864,000 per GPU)."""
    curves: list[EnergyCurve] = []
    fits: list[PowerSplit | None] = []
    for node in run.nodes():
        rank = node.speaker
        for gpu in sorted({s.gpu for s in run.series_list(rank) if s.gpu >= 0}):
            power = run.series("gpu.power", gpu, rank=rank)
            made = curve(gpu, run.series("gpu.energy", gpu, rank=rank), power)
            if made is not None:
                curves.append(made)
                limit = run.series("gpu.power_limit", gpu, rank=rank) if steps is not None else None
                fits.append(phase_fit(power, steps, _highest(limit)) if steps is not None else None)
    return curves, fits


def energy_curves(run: RunReader) -> list[EnergyCurve]:
    return gpu_energy(run)[0]


def per_step(curves: Sequence[EnergyCurve], steps: StepTable) -> np.ndarray:
    """Joules of every step, summed over the GPUs (NaN for steps outside the readings)."""
    if not curves or not len(steps):
        return np.full(len(steps), np.nan)
    total = np.zeros(len(steps))
    for c in curves:
        total += c.at(steps.t_end) - c.at(steps.t_start)
    return total


@dataclass(frozen=True)
class PowerSplit:
    """One GPU's watts by host phase (least squares) and the bound no phase can pass: its power limit.

    Not its highest reading: each reading averages a second of mixed phases, so a phase that never fills
    a second alone draws more than any reading shows (a real H200 probe: matmuls in 15 % of the time at
    ~700 W, every reading under 255 W).
    """

    fit: PhaseActivity
    bound_w: float


def _highest(series: Series | None) -> float | None:
    if series is None or not len(series) or not np.isfinite(series.v).any():
        return None
    return float(np.nanmax(series.v))


def phase_fit(power: Series | None, steps: StepTable, limit_w: float | None = None) -> PowerSplit | None:
    """Watts of one GPU while the host was in each phase (None: the readings cannot tell them apart);
    ``limit_w``: the GPU's power limit (else the highest reading bounds the phases)."""
    if power is None or not len(power) or not len(steps) or not np.isfinite(power.v).any():
        return None
    fit = activity_by_phase("gpu.power", steps.t_start, steps.t_end, {n: getattr(steps, n) for n in PHASES},
                            power.t, power.v, POWER_AVERAGE_S, upper=np.inf, steady=steps.counted())
    bound = limit_w if limit_w is not None and limit_w > 0 else float(np.nanmax(power.v))
    return PowerSplit(fit, bound) if fit is not None else None


def energy_summary(curves: Sequence[EnergyCurve], fits: Sequence[PowerSplit | None], steps: StepTable,
                   batch_tokens: tuple[float | None, float | None]) -> dict[str, Any]:
    """The report's ``energy`` key: whole run, per steady step, per sample/token, per phase."""
    out: dict[str, Any] = {"available": False, "reason": None, "source": None, "gpus": 0, "total_j": None,
                           "wh": None, "idle_j": None, "step_j_median": None, "step_j_mean": None,
                           "per_sample_j": None, "per_token_j": None, "mean_power_w": None, "phases": {}}
    if not curves:
        out["reason"] = "no energy counter or power readings (no NVIDIA GPU sampled)"
        return out
    sources = sorted({c.source for c in curves})
    total = float(sum(c.joules[-1] for c in curves))
    span = max(c.t[-1] for c in curves) - min(c.t[0] for c in curves)
    out.update({"available": True, "source": "+".join(sources), "gpus": len(curves), "total_j": total,
                "wh": total / 3600.0, "mean_power_w": total / span if span > 0 else None})
    if not len(steps):
        return out
    joules = per_step(curves, steps)
    in_steps = float(np.nansum(joules))
    out["idle_j"] = max(0.0, total - in_steps)  # evaluation, checkpoints, start-up: no step running
    steady = steps.counted() & np.isfinite(joules)
    if not steady.any():
        return out
    j = joules[steady]
    out["step_j_median"], out["step_j_mean"] = float(np.median(j)), float(np.mean(j))
    samples, tokens = batch_tokens
    if samples:
        out["per_sample_j"] = out["step_j_mean"] / samples
    if tokens:
        out["per_token_j"] = out["step_j_mean"] / tokens
    out["phases"] = _phases([f for f in fits if f is not None] if all(fits) else [], steps)
    return out


#: A phase's watts are shown when their standard error is within this share of the mean power (or 10 W).
MAX_RELATIVE_ERROR = 0.15


def _phases(fits: Sequence[PowerSplit], steps: StepTable) -> dict[str, dict[str, float]]:
    """Watts per phase (summed over GPUs) and joules per step of each phase, where readings tell them apart.

    All or nothing: the phases' estimates are tied (their time shares sum to one in every reading), so
    one imprecise or impossible estimate (above the power limit, or clipped at zero) means the others
    swung to make up for it.  On real input-bound runs such a fit put an idle GPU's data waits at 239 W,
    above the run's 161 W mean, with backward at 12 +- 38 W; a split is stated only when every phase
    holds.  One GPU without a split leaves the sum without one.
    """
    steady = steps.counted()
    if not fits or not steady.any():
        return {}
    bound = sum(f.bound_w for f in fits)
    out: dict[str, dict[str, float]] = {}
    for name in [*PHASES, "outside"]:
        if not any(name in f.fit.by_phase for f in fits):
            continue
        if not all(name in f.fit.by_phase for f in fits):
            return {}
        watts = float(sum(f.fit.by_phase[name] for f in fits))
        error = float(np.sqrt(sum(f.fit.error[name] ** 2 for f in fits)))
        if watts > 1.05 * bound or error > max(10.0, MAX_RELATIVE_ERROR * watts):
            return {}
        entry = {"watts": watts, "watts_se": error}
        if name in PHASES:
            entry["j_per_step"] = watts * float(np.median(getattr(steps, name)[steady]))
        out[name] = entry
    return out
