"""Freed heap memory handed back to the OS between the big steps of reading a trace.

A trace's columns are built from ~100 KB pieces and its analyzers make many arrays of a few MB.  glibc
raises its mmap threshold once the 4 MB JSON pieces are freed, so all of those live on the malloc heap, and
a freed heap stays mapped until it is trimmed: a 1 GB trace held ~280 MiB of freed pieces beside its
219 MiB of columns after the parse, and the analyzers grew the heap by as much again.  ``malloc_trim``
returns it; nothing else changes (no allocator setting is touched, so a training process that analyses a
trace keeps the allocator its user had).  Elsewhere (musl, macOS) this is a no-op.
"""
from __future__ import annotations

from typing import Any

_trim: Any = None


def return_freed_heap() -> None:
    global _trim
    if _trim is None:
        try:
            import ctypes

            _trim = ctypes.CDLL("libc.so.6").malloc_trim
        except (OSError, AttributeError):
            _trim = False
    if _trim:
        _trim(0)
