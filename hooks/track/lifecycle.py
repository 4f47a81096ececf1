"""How a run ends: normally, by an exception, by Ctrl-C, SIGTERM or ``sys.exit`` -- and the script's exit
status stays its own whichever it is.

A run closes in its ``with`` block, or at interpreter exit (``atexit``), or
when SIGTERM arrives (closed, then the process dies of SIGTERM as it would
have).  Under ``gpulens run`` an uncaught exception and ``sys.exit(n)`` decide
the status too (:meth:`Lifecycle.watch_script_exit`).

Ctrl-C: a Python program that dies of an unhandled KeyboardInterrupt exits by
SIGINT (130 in a shell) only while CPython's "unhandled KeyboardInterrupt"
flag is set, and every ``exec``/``eval`` of a string clears it -- dataclass and
namedtuple creation do that, so a module imported at exit (the end-of-run
advice imports the analysis) would turn 130 into 1.  Running a string that
raises KeyboardInterrupt sets it again (:func:`keep_sigint_exit`).
"""
from __future__ import annotations

import atexit
import os
import signal
import sys
import threading
from collections.abc import Callable
from typing import Any

#: (status, error) of a run that ends now: ``finished``, ``crashed`` or ``interrupted``.
ExitStatus = tuple[str, "str | None"]


class Lifecycle:
    """The ways one run can end, wired to ``close(status, error)``."""

    def __init__(self, close: Callable[[str, str | None], None]) -> None:
        self._close = close
        self.exit_status: ExitStatus | None = None  # set by watch_script_exit; None: judged at exit
        self._prev_sigterm: Any = None

    def install(self) -> None:
        """Close at interpreter exit and on SIGTERM (when SIGTERM still has its default action)."""
        atexit.register(self.at_exit)
        if threading.current_thread() is not threading.main_thread():
            return
        try:
            if signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
                return
            self._prev_sigterm = signal.signal(signal.SIGTERM, self._on_sigterm)
        except (ValueError, OSError):
            self._prev_sigterm = None

    def uninstall(self) -> None:
        """The run closed (or belongs to another process): leave exit and SIGTERM as they were."""
        try:
            atexit.unregister(self.at_exit)
        except Exception:
            pass
        if self._prev_sigterm is None:
            return
        try:
            if signal.getsignal(signal.SIGTERM) == self._on_sigterm:
                signal.signal(signal.SIGTERM, self._prev_sigterm)
        except (ValueError, OSError):
            pass
        self._prev_sigterm = None

    def at_exit(self) -> None:
        """Close with the status the script ended with; Ctrl-C still ends the process by SIGINT."""
        interrupted = interrupted_at_exit()
        status, error = self.exit_status or (("interrupted", "KeyboardInterrupt") if interrupted
                                             else ("finished", None))
        try:
            self._close(status, error)
        finally:
            if interrupted:
                keep_sigint_exit()  # closing may have imported modules; the script still dies of Ctrl-C

    def _on_sigterm(self, signum: int, frame: Any) -> None:
        self._close("interrupted", "SIGTERM")
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGTERM)

    def watch_script_exit(self) -> None:
        """``gpulens run``: an uncaught exception, Ctrl-C or ``sys.exit(n)`` in the script decides the status."""
        previous = sys.excepthook
        lifecycle = self

        def hook(exc_type: Any, exc: Any, tb: Any) -> None:
            try:
                if issubclass(exc_type, KeyboardInterrupt):
                    lifecycle.exit_status = ("interrupted", "KeyboardInterrupt")
                elif not (issubclass(exc_type, SystemExit) and exc.code in (0, None)):
                    lifecycle.exit_status = ("crashed", f"{exc_type.__name__}: {exc}")
            except Exception:
                pass
            previous(exc_type, exc, tb)

        sys.excepthook = hook
        original_exit = sys.exit

        def exit(code: Any = None) -> None:  # sys.exit(1) from the script: a failed run, not a finished one
            if code not in (0, None):
                lifecycle.exit_status = ("crashed", f"exit status {code}")
            original_exit(code)

        sys.exit = exit  # type: ignore[assignment]


def interrupted_at_exit() -> bool:
    """Is a script ending because a KeyboardInterrupt reached its top level?

    The interpreter stores the exception in ``sys.last_type`` before it prints
    the traceback.  Interactive sessions keep old exceptions there, so they
    never count.
    """
    if sys.flags.interactive or hasattr(sys, "ps1") or "ipykernel" in sys.modules:
        return False
    last = getattr(sys, "last_type", None)
    return isinstance(last, type) and issubclass(last, KeyboardInterrupt)


def keep_sigint_exit() -> None:
    """Make the interpreter die by SIGINT at the end of this exit, as it would have without gpulens."""
    try:
        exec("raise KeyboardInterrupt", {})  # a constant string; sets the flag as it fails
    except KeyboardInterrupt:
        pass
