"""Every analysis of one trace at once, as one typed record (:class:`.result.TraceAnalysis`).

The analyzers compute with numpy and hand back plain rows; :func:`analyze`
checks them against the record's types once, through the same JSON form the
cache beside the trace keeps, so a fresh analysis and a cached one are the
same values (numpy scalars as Python numbers, tuples as lists).
"""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec

from gpulens.profiler.analysis.trace.cpu_ops import cpu_op_table
from gpulens.profiler.analysis.trace.gemm_shapes import gemm_shapes
from gpulens.profiler.analysis.trace.gpu_summary import gpu_summary, step_breakdown
from gpulens.profiler.analysis.trace.heap import return_freed_heap
from gpulens.profiler.analysis.trace.idle import idle_breakdown
from gpulens.profiler.analysis.trace.kernels import category_times, kernel_table, tensor_core_share
from gpulens.profiler.analysis.trace.launch import launch_stats, sync_stats
from gpulens.profiler.analysis.trace.memcpy import memcpy_stats
from gpulens.profiler.analysis.trace.model import Trace
from gpulens.profiler.analysis.trace.phase_busy import phase_gpu_busy
from gpulens.profiler.analysis.trace.result import TraceAnalysis
from gpulens.profiler.analysis.trace.tc_eligible import tc_eligible_share
from gpulens.profiler.analysis.trace.temporal import stream_breakdown, temporal_breakdown

NO_GPU = "no GPU activity in this trace"


def analyze(trace: Trace) -> TraceAnalysis:
    def run(analyzer: Callable[..., Any], *args: Any) -> Any:
        try:
            return analyzer(trace, *args)
        finally:
            return_freed_heap()  # each analyzer's temporaries, before the next makes its own (heap.py)

    kernels = run(kernel_table)
    has_gpu = trace.has_gpu
    out: dict[str, Any] = {
        "rank": trace.rank,
        "path": trace.path,
        "events": len(trace),
        "devices": trace.device_properties,
        "has_gpu": has_gpu,
        "note": None if has_gpu else NO_GPU,
        "kernels": kernels,
        "categories_us": category_times(kernels),
        "tensor_core_share": run(tensor_core_share),
        "tc_eligible_share": run(tc_eligible_share),
        "temporal_breakdown": run(temporal_breakdown),
        "streams": run(stream_breakdown),
        "idle": run(idle_breakdown),
        "launch": run(launch_stats),
        "sync": run(sync_stats),
        "memcpy": run(memcpy_stats),
        "cpu_ops": run(cpu_op_table, 30),
        "gemm_shapes": run(gemm_shapes)[:50],
        "gpu_summary": run(gpu_summary),
        "step_breakdown": run(step_breakdown),
        "phase_gpu_busy": run(phase_gpu_busy),
    }
    return typed(out)


def typed(analysis: dict[str, Any]) -> TraceAnalysis:
    """``analysis`` (the analyzers' rows) as the record, exactly as it reads back from its JSON cache."""
    return msgspec.json.decode(msgspec.json.encode(analysis, enc_hook=plain), type=TraceAnalysis)


def plain(value: Any) -> Any:
    """numpy scalars and paths as JSON values (what json.dumps(default=...) would have written)."""
    if hasattr(value, "item"):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot write a {type(value).__name__} as JSON")
