"""Trace analysis: PyTorch profiler (Kineto) chrome traces, one analyzer per module.

:func:`load_trace` parses a trace file into a columnar :class:`Trace`; every
analyzer is a pure function of a ``Trace`` (see :mod:`.analysis` for all of
them at once).
"""
from gpulens.profiler.analysis.trace.model import Cat, Trace
from gpulens.profiler.analysis.trace.parse import TraceError, load_trace

__all__ = ["Cat", "Trace", "TraceError", "load_trace"]
