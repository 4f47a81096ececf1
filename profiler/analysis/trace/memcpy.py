"""Memory copies by direction (HtoD, DtoH, DtoD, PtoP) and host memory kind."""
from __future__ import annotations

import re
from typing import Any

import numpy as np

from gpulens.profiler.analysis.trace.model import Cat, Trace

_DIR = re.compile(r"Memcpy\s+(\w+)(?:\s*\(([^)]*)\))?")


def memcpy_stats(trace: Trace) -> list[dict[str, float | int | str]]:
    mask = trace.mask(Cat.MEMCPY)
    if not mask.any():
        return []
    rows: dict[str, dict[str, Any]] = {}
    for i in np.flatnonzero(mask):
        m = _DIR.match(trace.names[trace.name[i]])
        direction = m.group(1) if m else "unknown"
        kinds = (m.group(2) or "") if m else ""
        key = f"{direction} ({kinds})" if kinds else direction
        row = rows.setdefault(key, {"direction": direction, "memory": kinds, "count": 0, "bytes": 0.0,
                                    "total_us": 0.0})
        row["count"] += 1
        nb = trace.nbytes[i]
        row["bytes"] += 0.0 if np.isnan(nb) else float(nb)
        row["total_us"] += float(trace.dur[i])
    out = []
    for row in rows.values():
        us = float(row["total_us"])
        row["gb_per_s"] = float(row["bytes"]) / (us * 1e3) if us > 0 else None
        out.append(row)
    return sorted(out, key=lambda r: -float(r["total_us"]))
