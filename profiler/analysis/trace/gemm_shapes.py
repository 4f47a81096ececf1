"""GEMM shapes and their alignment: tensor cores want M, N, K in multiples of 8 (fp16/bf16).

Needs ``record_shapes`` (on in gpulens' profiler windows).  Each GEMM op
(``aten::mm``, ``addmm``, ``bmm``, ``baddbmm``, scaled and int8 matmuls) is
read as (M, N, K) from its input shapes and charged the GPU time of the
kernels it launched.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from gpulens.profiler.analysis.trace.linking import launcher_of
from gpulens.profiler.analysis.trace.model import Cat, Trace

GEMM_OPS = {"aten::mm": (0, 1), "aten::addmm": (1, 2), "aten::bmm": (0, 1), "aten::baddbmm": (1, 2),
            "aten::_scaled_mm": (0, 1), "aten::_int_mm": (0, 1)}
HALF_TYPES = ("c10::BFloat16", "c10::Half", "BFloat16", "Half", "c10::Float8_e4m3fn", "c10::Float8_e5m2")


def kernel_time_by_ext(trace: Trace) -> dict[int, float]:
    """External id of the launching op -> GPU time of the kernels it launched (µs)."""
    kern = trace.mask(Cat.KERNEL)
    if not kern.any():
        return {}
    launch = launcher_of(trace, kern)
    ok = launch >= 0
    ext = trace.ext[launch[ok]]
    dur = trace.dur[kern][ok]
    keep = ext >= 0
    uniq, inv = np.unique(ext[keep], return_inverse=True)
    total = np.bincount(inv, weights=dur[keep])
    return {int(e): float(t) for e, t in zip(uniq, total)}


def mnk(op: str, dims: list[Any]) -> tuple[int, int, int] | None:
    a_i, b_i = GEMM_OPS[op]
    try:
        a, b = dims[a_i], dims[b_i]
        if len(a) < 2 or len(b) < 2:
            return None
        return int(a[-2]), int(b[-1]), int(a[-1])
    except (IndexError, TypeError, ValueError):
        return None


def gemm_shapes(trace: Trace) -> list[dict[str, Any]]:
    """One row per (op, M, N, K, dtype): calls, kernel time, and which dimensions break alignment."""
    if not trace.input_dims:
        return []
    ktime = kernel_time_by_ext(trace)
    rows: dict[tuple[Any, ...], dict[str, Any]] = {}
    keys: dict[tuple[str, bytes, bytes | None], tuple[Any, ...] | None] = {}  # a training loop repeats its shapes
    # the events' columns gathered once (numpy scalars one by one cost more than the rest of the loop)
    idxs = np.fromiter(trace.input_dims, dtype=np.int64, count=len(trace.input_dims))
    names = trace.names
    ops = [names[i] for i in trace.name[idxs].tolist()]
    cpu = (trace.cat[idxs] == int(Cat.CPU_OP)).tolist()
    exts = trace.ext[idxs].tolist()
    for (idx, raw_dims), op, is_cpu_op, ext in zip(trace.input_dims.items(), ops, cpu, exts):
        if op not in GEMM_OPS or not is_cpu_op:
            continue
        seen = (op, raw_dims, trace.input_types.get(idx))
        if seen not in keys:
            keys[seen] = _shape_key(op, *trace.shapes(idx))
        key = keys[seen]
        if key is None:
            continue
        row = rows.get(key)
        if row is None:
            _, shape, dtype = key
            multiple = 8 if dtype in HALF_TYPES else 4  # tf32 tiles want multiples of 4
            bad = [name for name, v in zip("MNK", shape) if v % multiple]
            row = rows[key] = {"op": op, "m": shape[0], "n": shape[1], "k": shape[2], "dtype": dtype, "calls": 0,
                               "kernel_us": 0.0, "multiple": multiple, "misaligned": bad}
        row["calls"] += 1
        row["kernel_us"] += ktime.get(ext, 0.0)
    return sorted(rows.values(), key=lambda r: -r["kernel_us"])


def _shape_key(op: str, dims: Any, types: Any) -> tuple[Any, ...] | None:
    """(op, (M, N, K), dtype) of one call's recorded shapes, or None when they are not a GEMM's."""
    shape = mnk(op, dims or [])
    if shape is None:
        return None
    dtype = ""
    if isinstance(types, list) and len(types) > GEMM_OPS[op][0]:
        dtype = str(types[GEMM_OPS[op][0]])
    return op, shape, dtype
