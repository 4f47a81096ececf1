"""The DataLoader names its own worker processes, and says what starting and stopping them cost.

Which children load data cannot be told from outside: torch.compile's
compile workers, the g++ they run and the script's own subprocesses are
children too.  A multi-process DataLoader iterator starts its workers in
its ``__init__`` and keeps them in ``_workers``; a thin wrapper hands their
pids to the sampler (:func:`gpulens.profiler.record.proctree.note_loader_workers`).

The same wrapper times the start, and one around ``_shutdown_workers`` the
stop: without ``persistent_workers`` every epoch forks, starts and joins
every worker again, time that belongs to no step (the steps of an epoch
begin at its first batch) and that a step-time figure therefore never
shows.  Many workers on few cores make it large (each start forks the
training process; ~40 ms a worker on a 2-core VM).  Costs nothing per
batch: twice per iterator (per epoch, or once with ``persistent_workers``).
Kept per loader too (by :func:`label`): a training loader may persist while
the evaluation loader beside it restarts at every evaluation.
"""
from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from gpulens.hooks.track.hidden_hooks import gpulens_hook
from gpulens.profiler.store.loader_workers import LoaderWorkers

log = logging.getLogger("gpulens")

_lock = threading.Lock()
_users = 0
_undo: Callable[[], None] | None = None


_times = LoaderWorkers()
_sink: Callable[[dict[str, Any]], None] | None = None
_untimed = threading.local()
_UNTIMED = "_gpulens_untimed"  # set on an iterator started inside untimed(): its stop is not the run's either
_LABEL = "_gpulens_loader"  # set on an iterator as it starts: its loader's label (its stop is that loader's)


@contextlib.contextmanager
def untimed() -> Iterator[None]:
    """Iterators started in this block (on this thread) are gpulens' own (a ``num-workers`` what-if's): their
    workers are still named, their start and stop are not the run's."""
    _untimed.on = True
    try:
        yield
    finally:
        _untimed.on = False


def label(loader: Any) -> str:
    """A loader as its user tells it apart: what it loads, in batches of how many, in what order."""
    parts = [type(getattr(loader, "dataset", None)).__name__]
    if getattr(loader, "batch_size", None) is not None:
        parts.append(f"batch_size={loader.batch_size}")
    parts.append(type(getattr(loader, "sampler", None)).__name__)
    return ", ".join(parts)


def _tell(kind: str, it: Any, seconds: float) -> None:
    with _lock:
        sink = _sink
        if sink is None:
            return
        name = getattr(it, _LABEL, None)
        records = (_times, _times.loader(name)) if name else (_times,)  # the run's sums, and its loader's
        for record in records:
            if kind == "start":
                record.add_start(bool(getattr(it, "_persistent_workers", False)),
                                 int(getattr(it, "_num_workers", 0) or 0), seconds)
            else:
                record.add_stop(seconds)
        meta = _times.as_meta()
    sink(meta)


def install(torch: Any, sink: Callable[[dict[str, Any]], None] | None = None) -> None:
    """Wrap the iterator's ``__init__`` and ``_shutdown_workers`` (once per process, counted: :func:`uninstall`
    undoes the last); ``sink`` receives the summed :class:`LoaderWorkers` (as a dict) after each start and stop
    while this process records a run (called on the thread that started or stopped the workers)."""
    global _users, _undo, _sink, _times
    with _lock:
        if sink is not None:
            if _sink is None:
                _times = LoaderWorkers()
            _sink = sink
        _users += 1
        if _undo is not None:
            return
        try:
            from torch.utils.data import dataloader

            cls = dataloader._MultiProcessingDataLoaderIter
            original = cls.__dict__["__init__"]
            shutdown = cls.__dict__.get("_shutdown_workers")
        except Exception as exc:  # a torch without it: workers are not told apart
            log.debug("gpulens: DataLoader workers cannot be named: %s", exc)
            return

        @gpulens_hook
        def __init__(it: Any, *args: Any, **kwargs: Any) -> None:
            t0 = time.perf_counter()
            original(it, *args, **kwargs)
            took = time.perf_counter() - t0
            try:
                from gpulens.profiler.record.proctree import note_loader_workers

                note_loader_workers(w.pid for w in getattr(it, "_workers", ()) if getattr(w, "pid", None))
                if getattr(_untimed, "on", False):
                    setattr(it, _UNTIMED, True)
                else:
                    loader = args[0] if args else kwargs.get("loader")
                    setattr(it, _LABEL, label(loader) if loader is not None else None)
                    _tell("start", it, took)
            except Exception as exc:
                log.debug("gpulens: could not note the DataLoader's workers: %s", exc)

        __init__.__wrapped__ = original  # type: ignore[attr-defined]
        cls.__init__ = __init__  # type: ignore[method-assign]

        @gpulens_hook
        def _shutdown_workers(it: Any) -> None:
            # the first call stops them (later ones return at once); a what-if's workers are not the run's
            running = getattr(it, "_shutdown", True) is False and not getattr(it, _UNTIMED, False)
            t0 = time.perf_counter()
            shutdown(it)  # type: ignore[misc]
            if running:
                try:
                    _tell("stop", it, time.perf_counter() - t0)
                except Exception as exc:
                    log.debug("gpulens: could not time the DataLoader's shutdown: %s", exc)

        if shutdown is not None:
            _shutdown_workers.__wrapped__ = shutdown  # type: ignore[attr-defined]
            cls._shutdown_workers = _shutdown_workers  # type: ignore[method-assign]

        def undo() -> None:
            if cls.__dict__.get("__init__") is __init__:
                cls.__init__ = original  # type: ignore[method-assign]
            if shutdown is not None and cls.__dict__.get("_shutdown_workers") is _shutdown_workers:
                cls._shutdown_workers = shutdown  # type: ignore[method-assign]

        _undo = undo


def uninstall() -> None:
    global _users, _undo, _sink
    with _lock:
        _users = max(_users - 1, 0)
        if _users or _undo is None:
            if not _users:
                _sink = None
            return
        undo, _undo, _sink = _undo, None, None
    undo()
