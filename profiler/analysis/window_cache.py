"""Window analyses kept beside their traces, so a trace is parsed once, not on every report or page.

``traces/<trace>.gpulens-analysis.json`` holds :func:`analyze`'s result with
the trace file's size and modification time and the analysis version: a
changed trace, an analysis gpulens computes differently now, or a file that
is not a :class:`TraceAnalysis` (damaged, foreign) reads as no cache.
Writing is best effort (a read-only run is analysed in memory, every time,
as before) and atomic (a reader never sees half a file).
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import msgspec

from gpulens.profiler.analysis.trace.result import TraceAnalysis

log = logging.getLogger("gpulens")

#: Bump when an analyzer's output changes: every cached analysis is then recomputed.
ANALYSIS_VERSION = 4  # 2-4: phase_gpu_busy (4: counted from the window's first kernel on)
SUFFIX = ".gpulens-analysis.json"


def cache_path(trace: Path) -> Path:
    return trace.with_name(trace.name + SUFFIX)


def _key(trace: Path, rank: int) -> dict[str, Any] | None:
    try:
        st = trace.stat()
    except OSError:
        return None
    from gpulens import __version__

    return {"version": f"{__version__}/{ANALYSIS_VERSION}", "size": st.st_size, "mtime_ns": st.st_mtime_ns,
            "rank": rank}


class _Cached(msgspec.Struct):
    key: dict[str, Any]
    analysis: TraceAnalysis


def load(trace: Path, rank: int) -> TraceAnalysis | None:
    """The cached analysis of ``trace`` if it is still the analysis of that file, else None."""
    key = _key(trace, rank)
    if key is None:
        return None
    try:
        doc = msgspec.json.decode(cache_path(trace).read_bytes(), type=_Cached)
    except (OSError, msgspec.DecodeError):  # ValidationError is a DecodeError: not this version's record
        return None
    return doc.analysis if doc.key == key else None


def store(trace: Path, rank: int, analysis: TraceAnalysis) -> None:
    key = _key(trace, rank)
    if key is None:
        return
    from gpulens.profiler.analysis.trace.analysis import plain  # writing only: reading needs no analyzer

    path = cache_path(trace)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_bytes(msgspec.json.encode(_Cached(key, analysis), enc_hook=plain))
        os.replace(tmp, path)
    except (OSError, TypeError, msgspec.EncodeError) as exc:  # a read-only run: analysed in memory only
        tmp.unlink(missing_ok=True)
        log.debug("gpulens: window analysis not cached (%s)", exc)
