"""One clock per process, in epoch seconds but monotonic.

Samplers, steps and events are compared with each other on the same graph, so
they must come from one clock: ``time.time()`` can jump (NTP) and
``perf_counter()`` has no epoch.  We anchor ``perf_counter`` to the wall clock
once at import; processes on one host then agree to within the wall clock's
own accuracy plus their anchors' error (``ANCHOR_ERROR_S``), and nothing inside
a process ever goes backwards.

The anchor reads the wall clock between two ``perf_counter`` readings and keeps
the pair with the shortest gap: two bare readings in a row can be split by
another thread taking the GIL (up to its 5 ms switch interval) or by the OS on a
busy host, and every timestamp of the process would then be late by that gap.
A wall clock stepped between two processes' starts still makes them differ by the
step: ``perf_epoch()`` tells by how much (see hooks/track/clocksync.py).
"""
from __future__ import annotations

import time
from collections.abc import Callable

GOOD_GAP_S = 20e-6  # an anchor this tight is kept at once (a few hundred ns is usual)
TRIES = 100


def anchor(wall: Callable[[], float] = time.time, perf: Callable[[], float] = time.perf_counter,
           tries: int = TRIES, good_gap_s: float = GOOD_GAP_S) -> tuple[float, float, float]:
    """(wall, perf, error): a wall-clock reading, the perf_counter value at the same instant (the middle of
    the two readings around it) and how far that instant can be off (half their gap)."""
    best: tuple[float, float, float] | None = None
    for _ in range(max(1, tries)):
        p1 = perf()
        w = wall()
        p2 = perf()
        if best is None or p2 - p1 < 2 * best[2]:
            best = (w, (p1 + p2) / 2, (p2 - p1) / 2)
        if p2 - p1 <= good_gap_s:
            break
    assert best is not None
    return best


_WALL0, _PERF0, ANCHOR_ERROR_S = anchor()


def now() -> float:
    """Current time in epoch seconds on the process' monotonic clock."""
    return _WALL0 + (time.perf_counter() - _PERF0)


def from_perf(perf: float) -> float:
    """Convert a ``time.perf_counter()`` reading to this clock."""
    return _WALL0 + (perf - _PERF0)


def perf_epoch() -> float:
    """The epoch second at which this process' clock reads ``perf_counter() == 0``.  Processes on one
    host share ``perf_counter`` (the system's monotonic clock), so two of them differ by exactly the
    difference of their perf epochs: what a clock measurement between them must find."""
    return _WALL0 - _PERF0
