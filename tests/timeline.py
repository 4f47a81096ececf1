"""Runs whose times are chosen, written through the real writer: judgements of time tested without a clock.

A busy machine moves every timing of a real loop; a test of what the
analysis *concludes* from times (shares, shifts, gates, what-ifs) reads a
run whose step times the test chose, written by the same ``RunWriter`` into
the same SQLite file a recording makes.  Real-loop tests keep asserting what
a busy host cannot change (steps, phases, files, exit codes).
"""
from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import numpy as np

from gpulens.profiler.store.schema import STEP_COLUMNS
from gpulens.profiler.store.writer import RunWriter

START = 1_790_000_000.0
PHASE_NAMES = ("data_wait", "forward", "backward", "optimizer", "other")


def noisy(n: int, seed: int, scale: float = 0.01, sigma: float = 0.08, spikes: float = 0.01) -> np.ndarray:
    """Step times as real loops have them: lognormal noise, slow stretches (AR(1) drift), rare spikes."""
    rng = np.random.default_rng(seed)
    drift = np.zeros(n)
    for i in range(1, n):
        drift[i] = 0.8 * drift[i - 1] + rng.normal(0, 0.03)
    d = scale * np.exp(rng.normal(0, sigma, n) + drift)
    d[rng.random(n) < spikes] *= 3.0
    return d


def write_run(path: Path, phases: dict[str, np.ndarray], samples: float | np.ndarray = 32, warmup: int = 2,
              flags: np.ndarray | None = None, meta: dict[str, Any] | None = None, loss: np.ndarray | None = None,
              start: float = START, series: dict[str, Any] | None = None, gaps: np.ndarray | None = None) -> Path:
    """A finished run in ``path`` (``rank-0.db``) whose steps take exactly the given phase seconds, back to back
    (or ``gaps[i]`` seconds of no step before step ``i``: epoch starts, evaluation); ``series``: host and
    process readings (``proc.cpu``: 0.4) held at one value, 10 a second, over the run (or a function of the
    readings' times giving their values)."""
    n = len(next(iter(phases.values())))
    cols = {p: np.asarray(phases.get(p, np.zeros(n)), dtype=float) for p in PHASE_NAMES}
    duration = sum(cols.values())
    path.mkdir(parents=True, exist_ok=True)
    writer = RunWriter(path / "rank-0.db", {"name": path.name, "status": "running", "start": start,
                                            "host": socket.gethostname(), **(meta or {})}, flush_interval=60)
    t = start
    samples_arr = np.broadcast_to(np.asarray(samples, dtype=float), (n,))
    for i in range(n):
        t += float(gaps[i]) if gaps is not None else 0.0
        row = dict.fromkeys(STEP_COLUMNS)
        row.update(step=i, t_start=t, t_end=t + float(duration[i]), samples=float(samples_arr[i]),
                   loss=None if loss is None else float(loss[i]),
                   flags=(1 if i < warmup else 0) | (int(flags[i]) if flags is not None else 0),
                   **{p: float(cols[p][i]) for p in PHASE_NAMES})
        writer.step(tuple(row[c] for c in STEP_COLUMNS))
        t += float(duration[i])
    for metric, value in (series or {}).items():
        times = np.arange(start, t, 0.1)
        values = value(times) if callable(value) else np.full(len(times), float(value))
        writer.points_bulk(writer.series(metric), times, np.asarray(values, dtype=float))
    writer.close(status="finished", end=t)
    return path
