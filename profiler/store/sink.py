"""The two interfaces between recording and everything that consumes samples as they arrive.

:class:`SampleSink` is what the samplers write into.  A recording run's
:class:`~gpulens.profiler.store.writer.RunWriter` is one; ``gpulens
exporter``'s :class:`~gpulens.profiler.export.prometheus.LatestSink` (no
database, latest values only) is the other.  Declaring it keeps the samplers
ignorant of which one they feed, and keeps an exporter from reaching into the
writer's internals.

:class:`LiveValues` is what an exposition (Prometheus) reads back: the latest
value of every series, by id, and the ids.  A writer offers it only while
exposing (:meth:`RunWriter.start_exposing`), so a run without an exporter pays
nothing for it.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol

#: A step row as :data:`~gpulens.profiler.store.schema.STEP_COLUMNS` orders it (heterogeneous by design): the
#: recorder's own list, handed over as it is (nobody changes it once emitted), or a tuple.
StepRow = Sequence[Any]
#: Given every step row as it is recorded (must not block; an exception detaches it).
StepTap = Callable[[StepRow], None]


class SampleSink(Protocol):
    """Where samplers put what they read: series declarations, points and events."""

    def series(self, metric: str, gpu: int = -1, unit: str = "", status: str = "ok",
               reason: str | None = None) -> int:
        """Declare a series (idempotent) and return its id for :meth:`point`."""
        ...

    def mark_series(self, metric: str, gpu: int, status: str, reason: str, unit: str = "") -> None:
        """Record that a series is unsupported or failed, and why."""
        ...

    def point(self, sid: int, t: float, value: float) -> None: ...

    def event(self, kind: str, message: str, gpu: int = -1, data: dict[str, Any] | None = None,
              t: float | None = None) -> None: ...

    def meta(self, **values: Any) -> None:
        """Set run metadata keys (a sampler's findings that are not time series)."""
        ...

    def close(self, **meta: Any) -> None:
        """The end of recording; ``meta`` is the run's final metadata (status, end time, ...)."""
        ...


class LiveValues(Protocol):
    """The latest value of each series, for an exposition to read at scrape time."""

    @property
    def latest(self) -> dict[int, tuple[float, float]] | None:
        """series id -> (t, value) of its newest point; None while nothing is exposed."""
        ...

    def series_ids(self) -> dict[tuple[str, int], int]:
        """(metric, gpu) -> series id of every series declared so far."""
        ...
