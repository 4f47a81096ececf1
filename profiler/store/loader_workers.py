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
#: Loaders kept apart; beyond them, the rest are one (a loop that makes a new kind of loader every epoch).
MAX_LOADERS = 8
OTHER_LOADERS = "other DataLoaders"
MAX_LABEL = 120


@dataclass
class LoaderWorkers:
    """Seconds summed over the run, and over each loader in :attr:`loaders`.  Time in no step: an epoch's steps
    begin at its first batch, after its workers started."""

    starts: int = 0  # iterators that started workers: every epoch without persistent workers
    persistent_starts: int = 0  # ... of them with persistent_workers=True
    workers: int = 0  # the most workers one iterator started
    start_s: float = 0.0  # inside the iterators' __init__: forking and starting the workers
    first_start_s: float | None = None  # the first start: a run pays it once whatever it does
    stops: int = 0
    stop_s: float = 0.0  # shutting the workers down (joining them)
    #: one loader's: what it loads and how (``CIFAR10, batch_size=128, SequentialSampler``); "" for the run's sums
    label: str = ""
    #: the run's sums by loader (a training loader and an evaluation one start their workers apart: one may
    #: persist and the other not); loaders with the same label are one -- one made again every epoch, too
    loaders: list[LoaderWorkers] = dataclasses.field(default_factory=list)

    @property
    def persistent(self) -> bool:
        return self.starts > 0 and self.persistent_starts == self.starts

    @property
    def per_start_s(self) -> float:
        """One start and its stop: what an epoch pays for workers that do not persist."""
        stop = self.stop_s / self.stops if self.stops else 0.0
        return self.start_s / self.starts + stop if self.starts else 0.0

    def loader(self, label: str) -> LoaderWorkers:
        """The record of the loader called ``label`` (made at its first start)."""
        label = label[:MAX_LABEL]
        for one in self.loaders:
            if one.label == label:
                return one
        if len(self.loaders) >= MAX_LOADERS - 1 and label != OTHER_LOADERS:
            return self.loader(OTHER_LOADERS)
        self.loaders.append(LoaderWorkers(label=label))
        return self.loaders[-1]

    def add_start(self, persistent: bool, workers: int, seconds: float) -> None:
        self.starts += 1
        self.persistent_starts += persistent
        self.workers = max(self.workers, workers)
        self.start_s += seconds
        if self.first_start_s is None:
            self.first_start_s = seconds

    def add_stop(self, seconds: float) -> None:
        self.stops += 1
        self.stop_s += seconds

    def as_meta(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def read(meta: dict[str, Any]) -> LoaderWorkers | None:
    """The run's record, or None where it has none (no workers started, an older gpulens) or its figures are
    not counts and seconds.  Its loaders are those that read as records (an older gpulens kept none)."""
    record = _record(meta.get(META_KEY))
    if record is None:
        return None
    raw = meta[META_KEY].get("loaders")
    loaders = [_record(one) for one in raw] if isinstance(raw, list) else []
    record.loaders = [one for one in loaders if one is not None and one.label][:MAX_LOADERS]
    return record


def _record(raw: Any) -> LoaderWorkers | None:
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
    label = raw.get("label")
    return LoaderWorkers(counts["starts"], counts["persistent_starts"], counts["workers"], seconds["start_s"],
                         seconds["first_start_s"], counts["stops"], seconds["stop_s"],
                         label[:MAX_LABEL] if isinstance(label, str) else "")
