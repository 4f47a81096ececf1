"""The DataLoader names its own worker processes.

Which children load data cannot be told from outside: torch.compile's
compile workers, the g++ they run and the script's own subprocesses are
children too.  A multi-process DataLoader iterator starts its workers in
its ``__init__`` and keeps them in ``_workers``; a thin wrapper hands their
pids to the sampler (:func:`gpulens.profiler.record.proctree.note_loader_workers`).
Costs nothing per batch: once per iterator (per epoch, or once with
``persistent_workers``).
"""
from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from gpulens.hooks.track.hidden_hooks import gpulens_hook

log = logging.getLogger("gpulens")

_lock = threading.Lock()
_users = 0
_undo: Callable[[], None] | None = None


def install(torch: Any) -> None:
    """Wrap the iterator's ``__init__`` (once per process, counted: :func:`uninstall` undoes the last)."""
    global _users, _undo
    with _lock:
        _users += 1
        if _undo is not None:
            return
        try:
            from torch.utils.data import dataloader

            cls = dataloader._MultiProcessingDataLoaderIter
            original = cls.__dict__["__init__"]
        except Exception as exc:  # a torch without it: workers are not told apart
            log.debug("gpulens: DataLoader workers cannot be named: %s", exc)
            return

        @gpulens_hook
        def __init__(it: Any, *args: Any, **kwargs: Any) -> None:
            original(it, *args, **kwargs)
            try:
                from gpulens.profiler.record.proctree import note_loader_workers

                note_loader_workers(w.pid for w in getattr(it, "_workers", ()) if getattr(w, "pid", None))
            except Exception as exc:
                log.debug("gpulens: could not note the DataLoader's workers: %s", exc)

        __init__.__wrapped__ = original  # type: ignore[attr-defined]
        cls.__init__ = __init__  # type: ignore[method-assign]

        def undo() -> None:
            if cls.__dict__.get("__init__") is __init__:
                cls.__init__ = original  # type: ignore[method-assign]

        _undo = undo


def uninstall() -> None:
    global _users, _undo
    with _lock:
        _users = max(_users - 1, 0)
        if _users or _undo is None:
            return
        undo, _undo = _undo, None
    undo()
