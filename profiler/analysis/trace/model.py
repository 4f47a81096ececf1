"""A parsed trace: one numpy array per event field, names interned once.

Traces run to millions of events; holding them as Python dicts (what the
JSON parser produces) costs ~1 KB each.  The columnar form costs ~100 bytes
per event and lets every analyzer work with numpy masks and sorts.
"""
from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np


class Cat(enum.IntEnum):
    """Event categories, unifying the old (``Kernel``) and new (``kernel``) Kineto names."""

    OTHER = 0
    CPU_OP = 1
    USER_ANNOTATION = 2
    PROFILER_STEP = 3  # a user_annotation / Operator named ProfilerStep#N
    RUNTIME = 4  # cudaLaunchKernel, cudaMemcpyAsync, ...
    DRIVER = 5  # cuLaunchKernel, ...
    KERNEL = 6
    MEMCPY = 7
    MEMSET = 8
    GPU_ANNOTATION = 9  # gpu_user_annotation: a span on a GPU stream, not work
    PYTHON_FUNCTION = 10
    PYTHON = 11
    TRACE = 12  # "PyTorch Profiler (0)": the profiling span


CATEGORY_NAMES = {
    "cpu_op": Cat.CPU_OP,
    "operator": Cat.CPU_OP,
    "user_annotation": Cat.USER_ANNOTATION,
    "gpu_user_annotation": Cat.GPU_ANNOTATION,
    "cuda_runtime": Cat.RUNTIME,
    "runtime": Cat.RUNTIME,
    "cuda_driver": Cat.DRIVER,
    "kernel": Cat.KERNEL,
    "gpu_memcpy": Cat.MEMCPY,
    "memcpy": Cat.MEMCPY,
    "gpu_memset": Cat.MEMSET,
    "memset": Cat.MEMSET,
    "python_function": Cat.PYTHON_FUNCTION,
    "python": Cat.PYTHON,
    "trace": Cat.TRACE,
}

GPU_WORK = (Cat.KERNEL, Cat.MEMCPY, Cat.MEMSET)


@dataclass
class Trace:
    """Complete ('X') events of one rank's trace, as parallel arrays.

    Times are microseconds as in the file (``ts`` since the epoch for Kineto
    traces); absent integer fields are -1 and absent float fields NaN.
    """

    path: str
    rank: int
    meta: dict[str, Any]  # schemaVersion, deviceProperties, distributedInfo, ...
    names: list[str]
    cat: np.ndarray  # int8 Cat
    name: np.ndarray  # int32 index into names
    pid: np.ndarray  # int64
    tid: np.ndarray  # int64
    ts: np.ndarray  # float64 µs
    dur: np.ndarray  # float64 µs
    corr: np.ndarray  # int64 correlation id (runtime <-> GPU work)
    ext: np.ndarray  # int64 external id (CPU op <-> runtime)
    stream: np.ndarray  # int64
    device: np.ndarray  # int64
    blocks_per_sm: np.ndarray  # float64
    occupancy: np.ndarray  # float64, est. achieved occupancy %
    nbytes: np.ndarray  # float64, memcpy/memset bytes
    input_dims: dict[int, bytes] = field(default_factory=dict)  # event index -> JSON shapes (GEMM-like ops)
    input_types: dict[int, bytes | None] = field(default_factory=dict)
    cache: dict[str, Any] = field(default_factory=dict, repr=False)  # results shared by analyzers

    def __len__(self) -> int:
        return int(self.ts.size)

    @property
    def end(self) -> np.ndarray:
        """Every event's end: a new array of the trace's length (prefer :meth:`ends` for a selection)."""
        return np.asarray(self.ts + self.dur)

    def ends(self, sel: Any) -> Any:
        """The ends of the selected events (mask, indices or one index): the same values as ``end[sel]``
        without first building the whole trace's ends -- 8 bytes per event, ~80 MB for a 4 GB trace, per call."""
        return self.ts[sel] + self.dur[sel]

    def mask(self, *cats: Cat) -> np.ndarray:
        """Events of any of ``cats``: one comparison per category (np.isin sorts; the analyzers ask ~50 times)."""
        out = np.zeros(self.cat.shape, dtype=bool)
        for c in cats:
            out |= self.cat == int(c)
        return out

    def gpu_work(self) -> np.ndarray:
        """Kernels, memcpys and memsets: everything that occupies a GPU stream."""
        return self.mask(*GPU_WORK)

    def name_of(self, idx: int) -> str:
        return self.names[int(self.name[idx])]

    def shapes(self, idx: int) -> tuple[Any, Any]:
        """(Input Dims, Input type) of a GEMM-like op event, decoded on demand."""
        import json

        dims = self.input_dims.get(idx)
        types = self.input_types.get(idx)
        return (json.loads(dims) if dims else None, json.loads(types) if types else None)

    def name_flags(self, predicate: Callable[[str], bool]) -> np.ndarray:
        """``predicate`` of each event's name, evaluated once per distinct name (thousands, not millions)."""
        per_name = np.fromiter((bool(predicate(n)) for n in self.names), dtype=bool, count=len(self.names))
        return per_name[self.name] if self.name.size else np.zeros(0, dtype=bool)

    def names_where(self, mask: np.ndarray) -> list[str]:
        names = self.names
        return [names[i] for i in self.name[mask]]

    @property
    def epoch_offset_us(self) -> float:
        """Add to ``ts`` for epoch µs: recent Kineto writes ts relative to baseTimeNanoseconds."""
        base = self.meta.get("baseTimeNanoseconds")
        return float(base) / 1000.0 if isinstance(base, (int, float)) else 0.0

    @property
    def has_gpu(self) -> bool:
        return bool(self.gpu_work().any())

    @property
    def device_properties(self) -> list[dict[str, Any]]:
        return list(self.meta.get("deviceProperties") or [])

    def device_name(self, device: int = 0) -> str | None:
        for prop in self.device_properties:
            if prop.get("id", 0) == device:
                return prop.get("name")
        return None
