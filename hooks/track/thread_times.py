"""The training thread's CPU time and run-queue time, for splitting its data waits.

A data wait is one of three things: the loader computing in this thread (``num_workers=0``), the
thread runnable but not running (a busy host), or the thread blocked (on workers, storage, the
network).  More workers hide the blocked part whatever the cores; the computed part only where cores
are free; the runnable part nowhere.  The CPU part is the thread's CPU clock (``time.thread_time``,
exact); the run-queue part is the second field of Linux's ``/proc/thread-self/schedstat`` (read with
``pread`` on a descriptor opened once, a few microseconds; current whenever the thread itself reads it,
as it only grows while the thread waits to run -- unlike the first field, the CPU time, which the
kernel brings up to date only at the next scheduler event).  Elsewhere: no run-queue time.
"""
from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable

#: (CPU seconds, run-queue seconds) of the thread that made the reader, since it started.
Reader = Callable[[], tuple[float, float]]


def _cpu_only() -> tuple[float, float]:
    return time.thread_time(), 0.0


class _Schedstat:
    """Reads the schedstat of the thread that opened it (the descriptor names that task, whoever reads)."""

    def __init__(self) -> None:
        self.fd: int | None = os.open("/proc/thread-self/schedstat", os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))

    def __call__(self) -> tuple[float, float]:
        fd = self.fd
        if fd is None:
            raise OSError("closed")
        return time.thread_time(), int(os.pread(fd, 96, 0).split()[1]) / 1e9

    def close(self) -> None:
        fd, self.fd = self.fd, None
        if fd is not None:
            os.close(fd)


def for_this_thread() -> tuple[Reader, Callable[[], None]]:
    """(reader, close) for the calling thread: schedstat where it reads, else the thread's CPU time."""
    if sys.platform.startswith("linux"):
        try:
            reader = _Schedstat()
            reader()  # the file's format is what we expect
            return reader, reader.close
        except (OSError, ValueError, IndexError):
            pass
    return _cpu_only, lambda: None
