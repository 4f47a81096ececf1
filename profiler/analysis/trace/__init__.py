"""Trace analysis: PyTorch profiler (Kineto) chrome traces, one analyzer per module.

:func:`load_trace` parses a trace file into a columnar :class:`Trace`; every
analyzer is a pure function of a ``Trace`` (see :mod:`.analysis` for all of
them at once).  The names below are imported on first use: reading a kept
analysis (a report, the kernels page) imports this package's result types,
and should not pay for the parser.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from gpulens.lazy import lazy_getattr

if TYPE_CHECKING:
    from gpulens.profiler.analysis.trace.model import Cat, Trace
    from gpulens.profiler.analysis.trace.parse import load_trace
    from gpulens.profiler.analysis.trace.source import TraceError

__all__ = ["Cat", "Trace", "TraceError", "load_trace"]

_LAZY = {"Cat": "gpulens.profiler.analysis.trace.model", "Trace": "gpulens.profiler.analysis.trace.model",
         "TraceError": "gpulens.profiler.analysis.trace.source",
         "load_trace": "gpulens.profiler.analysis.trace.parse"}


__getattr__ = lazy_getattr(__name__, globals(), _LAZY)
