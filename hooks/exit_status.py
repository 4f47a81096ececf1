"""Keep the training script's exit status its own when gpulens does work at exit.

A Python program that dies of Ctrl-C exits by SIGINT (130 in a shell) only
while CPython's "unhandled KeyboardInterrupt" flag is set, and every
``exec``/``eval`` of a string clears it -- dataclass and namedtuple creation
do that, so a module imported at exit (the end-of-run advice imports the
analysis) would turn 130 into 1.  The flag is set again by running a string
that raises KeyboardInterrupt, which is what :func:`keep_sigint_exit` does.
"""
from __future__ import annotations

import sys


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
        exec("raise KeyboardInterrupt", {})  # noqa: S102 - a constant string; sets the flag as it fails
    except KeyboardInterrupt:
        pass
