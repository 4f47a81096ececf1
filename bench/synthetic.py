"""Synthetic runs of any length and width, written by the real writer, shaped like a real H100 recording.

Which series a node records and how often comes from ``sample_runs/h100-cnn-input-bound`` (one H100 and its
host, recorded by gpulens at its default rates: ~130 points/s per GPU, ~16 for the host); a synthetic node
has ``gpus`` such GPUs, values drawn around the real ones.  Steps are written as a training loop writes them
(phases, samples, loss), one database per rank, ``node-<n>.db``-free: every node's local rank 0 samples it.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from gpulens.profiler import open_run
from gpulens.profiler.store.writer import RunWriter

SAMPLE = Path(__file__).resolve().parent.parent / "sample_runs" / "h100-cnn-input-bound"


@dataclass(frozen=True)
class Shape:
    metric: str
    gpu: int  # 0: per GPU, -1: the host
    unit: str
    rate: float  # points per second
    mean: float
    std: float


def shapes() -> list[Shape]:
    """The real run's series: rate, level and spread of each."""
    out = []
    with open_run(SAMPLE) as run:
        for s in run.series_list():
            if s.status != "ok" or s.count < 2 or s.t_first is None or s.t_last is None:
                continue
            series = run.series(s.metric, s.gpu, rank=s.rank)
            assert series is not None
            v = series.v[np.isfinite(series.v)]
            out.append(Shape(s.metric, s.gpu, s.unit, (s.count - 1) / (s.t_last - s.t_first),
                             float(v.mean()) if v.size else 0.0, float(v.std()) if v.size else 0.0))
    return out


def meta(name: str, rank: int, node: int, world: int, local_world: int, gpus: int, start: float) -> dict:
    """A rank's metadata as gpulens writes it (from the real run), for this rank, node and start."""
    with open_run(SAMPLE) as run:
        base = dict(run.meta(0))
    gpu0 = (base.get("gpus") or [{}])[0]
    base.update(name=name, rank=rank, local_rank=rank % local_world, node_rank=node, world_size=world,
                local_world_size=local_world, start=start, status="running", host=f"node{node}",
                pid=os.getpid(), gpus=[{**gpu0, "index": i, "uuid": f"GPU-synthetic-{node}-{i}"}
                                       for i in range(gpus)], end=None, heartbeat=start)
    if not gpus:
        base["nvml"] = {"available": False, "reason": "device sampling off for this rank"}
    return base


class SyntheticRank:
    """One rank's database, filled in slices of time (``advance``) as a live run would be."""

    def __init__(self, db: Path, *, rank: int = 0, node: int = 0, world: int = 1, local_world: int = 1,
                 gpus: int = 8, steps_per_s: float = 4.0, start: float = 1.7e9, seed: int = 0,
                 name: str = "synthetic") -> None:
        sampler = rank % local_world == 0
        self.writer = RunWriter(db, meta(name, rank, node, world, local_world, gpus if sampler else 0, start),
                                flush_interval=0.2)
        self.rng = np.random.default_rng(seed)
        self.t = start
        self.step = 0
        self.steps_per_s = steps_per_s
        self.series: list[tuple[int, Shape]] = []
        if sampler:
            for shape in shapes():
                for gpu in ([-1] if shape.gpu < 0 else range(gpus)):
                    self.series.append((self.writer.series(shape.metric, gpu, shape.unit), shape))

    def advance(self, seconds: float) -> None:
        """``seconds`` more of the run: samples at their rates, steps at ``steps_per_s``, committed."""
        t0, t1 = self.t, self.t + seconds
        for sid, shape in self.series:
            n = max(int(seconds * shape.rate), 1)
            t = t0 + (np.arange(n) + self.rng.random(n) * 0.2) * (seconds / n)
            v = shape.mean + shape.std * self.rng.standard_normal(n)
            self.writer.points_bulk(sid, t, v)
        n_steps = int(round(seconds * self.steps_per_s))
        ends = t0 + (np.arange(1, n_steps + 1)) * (seconds / max(n_steps, 1))
        for i, end in enumerate(ends):
            dur = seconds / max(n_steps, 1)
            start = end - dur
            phases = dur * np.array([0.3, 0.2, 0.35, 0.1, 0.05])
            self.writer.step((self.step, float(start), float(end), *map(float, phases), 256, None,
                              float(2.0 / (1 + 0.001 * self.step)), None, None, None, None, None, None, None, None,
                              None, 0 if self.step >= 2 else 1, None))
            self.step += 1
            if i % 4096 == 4095:
                self.writer.sync()
        self.t = t1
        self.writer.meta(heartbeat=t1)
        self.writer.sync()

    def close(self, status: str = "finished") -> None:
        self.writer.close(status=status, end=self.t, steps=self.step)


def write_rank(db: Path, seconds: float, slice_s: float = 3600.0, **kwargs) -> SyntheticRank:
    """A whole rank database of ``seconds`` (left open: ``close()`` it, or ``advance`` it further)."""
    rank = SyntheticRank(db, **kwargs)
    left = seconds
    while left > 0:
        rank.advance(min(slice_s, left))
        left -= slice_s
    return rank
