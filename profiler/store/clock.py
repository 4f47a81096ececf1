"""One clock per process, in epoch seconds but monotonic.

Samplers, steps and events are compared with each other on the same graph, so
they must come from one clock: ``time.time()`` can jump (NTP) and
``perf_counter()`` has no epoch.  We anchor ``perf_counter`` to the wall clock
once at import; processes on one host then agree to within the wall clock's
own accuracy, and nothing inside a process ever goes backwards.
"""
from __future__ import annotations

import time

_WALL0 = time.time()
_PERF0 = time.perf_counter()


def now() -> float:
    """Current time in epoch seconds on the process' monotonic clock."""
    return _WALL0 + (time.perf_counter() - _PERF0)


def from_perf(perf: float) -> float:
    """Convert a ``time.perf_counter()`` reading to this clock."""
    return _WALL0 + (perf - _PERF0)
