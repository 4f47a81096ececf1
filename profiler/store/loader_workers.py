"""Run meta ``loader_workers``: what starting and stopping the run's DataLoader workers cost.

One record for both ends of the run meta: hooks/track/loader_workers.py sums into it as the run goes and
writes :meth:`LoaderWorkers.as_meta`; the advisor and ``gpulens compare`` read it back with :func:`read`,
which takes any run's meta (one recorded before this record existed has none, a foreign one anything).
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

META_KEY = "loader_workers"
_COUNTS = ("starts", "persistent_starts", "workers", "stops")
_SECONDS = ("start_s", "first_start_s", "stop_s")


@dataclass
class LoaderWorkers:
    """Seconds summed over the run.  Time in no step: an epoch's steps begin at its first batch, after its
    workers started."""

    starts: int = 0  # iterators that started workers: every epoch without persistent workers
    persistent_starts: int = 0  # ... of them with persistent_workers=True
    workers: int = 0  # the most workers one iterator started
    start_s: float = 0.0  # inside the iterators' __init__: forking and starting the workers
    first_start_s: float | None = None  # the first start: a run pays it once whatever it does
    stops: int = 0
    stop_s: float = 0.0  # shutting the workers down (joining them)

    @property
    def persistent(self) -> bool:
        return self.starts > 0 and self.persistent_starts == self.starts

    @property
    def per_start_s(self) -> float:
        """One start and its stop: what an epoch pays for workers that do not persist."""
        stop = self.stop_s / self.stops if self.stops else 0.0
        return self.start_s / self.starts + stop if self.starts else 0.0

    def as_meta(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def read(meta: dict[str, Any]) -> LoaderWorkers | None:
    """The run's record, or None where it has none (no workers started, an older gpulens) or its figures are
    not counts and seconds."""
    raw = meta.get(META_KEY)
    if not isinstance(raw, dict):
        return None
    try:
        counts = {k: int(raw[k]) for k in _COUNTS}
        seconds = {k: float(raw[k]) for k in _SECONDS}
    except (KeyError, TypeError, ValueError, OverflowError):
        return None
    if counts["starts"] < 1 or min(counts.values()) < 0 or \
            not all(math.isfinite(v) and v >= 0 for v in seconds.values()):
        return None
    return LoaderWorkers(counts["starts"], counts["persistent_starts"], counts["workers"], seconds["start_s"],
                         seconds["first_start_s"], counts["stops"], seconds["stop_s"])
