"""The run ``gpulens run`` started in this process (at most one): its exit status decides the run's, and a
forked child lets go of it (it is the parent's)."""
from __future__ import annotations

from typing import Any

_started: Any = None


def current() -> Any:
    """This process' recording, or None."""
    return _started


def adopt(run: Any) -> None:
    """``run`` is this process' recording: its exit status decides the run's."""
    global _started
    _started = run
    run.watch_script_exit()


def forget() -> None:
    """A forked child: the run it inherited is the parent's."""
    global _started
    _started = None
