"""Pure comparisons of two runs' summaries: headline deltas, kernel deltas, configuration changes."""
from __future__ import annotations

from typing import Any

import numpy as np

from gpulens import fmt


def _gpu_mean(s: dict[str, Any], metric: str) -> float | None:
    vals = [g["metrics"][metric]["mean"] for g in s.get("gpus") or [] if metric in g.get("metrics", {})]
    return float(np.mean(vals)) if vals else None


#: (label, getter, formatter, higher is better)
HEADLINE = (
    ("Samples/s", lambda s: (s.get("throughput") or {}).get("samples_per_s"), lambda v: f"{v:,.1f}", True),
    ("Steps/s", lambda s: (s.get("throughput") or {}).get("steps_per_s"), lambda v: f"{v:.3f}", True),
    ("Step time (median)", lambda s: (s.get("step_time") or {}).get("median_s"), fmt.seconds, False),
    ("Data wait share", lambda s: (((s.get("step_time") or {}).get("phases") or {}).get("data_wait") or {})
     .get("share"), lambda v: fmt.share(v), False),
    ("GPU busy (NVML)", lambda s: _gpu_mean(s, "gpu.util"), fmt.percent, True),
    ("SM activity (GPM)", lambda s: _gpu_mean(s, "gpm.sm_active"), fmt.percent, True),
    ("Tensor activity (GPM)", lambda s: _gpu_mean(s, "gpm.tensor_active"), fmt.percent, True),
    ("MFU", lambda s: (s.get("mfu") or {}).get("mfu_pct"), fmt.percent, True),
    ("Tensor-core share of kernel time", lambda s: s.get("tensor_core_share"), lambda v: fmt.share(v), True),
    ("Peak CUDA memory", lambda s: (s.get("memory") or {}).get("cuda_peak_allocated_bytes"), fmt.bytes_, None),
    ("Power (mean)", lambda s: _gpu_mean(s, "gpu.power"), lambda v: f"{v:.0f} W", None),
)


def headline_rows(a: dict[str, Any], b: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per figure: A, B, the change B vs A in %, and whether that change is an improvement."""
    rows = []
    for label, get, show, higher_better in HEADLINE:
        va, vb = get(a), get(b)
        change = None
        better = None
        if va is not None and vb is not None and va != 0:
            change = (vb - va) / abs(va) * 100
            if higher_better is not None and abs(change) >= 1.0:
                better = (change > 0) == higher_better
        rows.append({"metric": label, "a": show(va) if va is not None else "n/a",
                     "b": show(vb) if vb is not None else "n/a",
                     "change": f"{change:+.1f}%" if change is not None else "", "better": better})
    return rows


def _steps_in_windows(s: dict[str, Any]) -> int:
    return sum(w["last_step"] - w["first_step"] + 1 for w in s.get("windows") or []) or 0


def kernel_deltas(a: dict[str, Any], b: dict[str, Any], limit: int = 25) -> list[dict[str, Any]]:
    """Kernel time per profiled step in A and B, largest absolute change first."""
    na, nb = _steps_in_windows(a), _steps_in_windows(b)
    if not na or not nb:
        return []
    ka = {k["name"]: k for k in a.get("kernels") or []}
    kb = {k["name"]: k for k in b.get("kernels") or []}
    rows = []
    for name in set(ka) | set(kb):
        ta = ka[name]["total_us"] / na if name in ka else 0.0
        tb = kb[name]["total_us"] / nb if name in kb else 0.0
        cat = (ka.get(name) or kb[name])["category"]
        rows.append({"name": name, "category": cat, "a_us_per_step": ta, "b_us_per_step": tb, "delta_us": tb - ta,
                     "only": "A" if name not in kb else "B" if name not in ka else ""})
    rows.sort(key=lambda r: -abs(r["delta_us"]))
    return rows[:limit]


def _flat(prefix: str, value: Any, out: dict[str, Any]) -> None:
    if isinstance(value, dict):
        for k, v in value.items():
            _flat(f"{prefix}.{k}" if prefix else str(k), v, out)
    else:
        out[prefix] = value


def config_of(s: dict[str, Any]) -> dict[str, Any]:
    """What describes how a run was set up: user config, batch, world size, versions, GPU."""
    run = s.get("run") or {}
    out: dict[str, Any] = {}
    _flat("config", run.get("config") or {}, out)
    out["batch_size"] = run.get("batch_size")
    out["world_size"] = run.get("world_size")
    out["torch"] = run.get("torch_version")
    out["gpulens"] = run.get("gpulens_version")
    gpus = s.get("gpus") or []
    out["gpu"] = f"{gpus[0]['name']} × {len(gpus)}" if gpus else "none"
    out["driver"] = (s.get("nvml") or {}).get("driver_version")
    out["host"] = run.get("host")
    cmd = run.get("command")
    out["command"] = " ".join(cmd) if isinstance(cmd, list) else cmd
    mfu = s.get("mfu") or {}
    if mfu.get("by_dtype"):
        out["dtypes (FLOPs)"] = ", ".join(sorted(k for k, v in mfu["by_dtype"].items() if v))
    return out


def config_diff(a: dict[str, Any], b: dict[str, Any]) -> list[dict[str, Any]]:
    ca, cb = config_of(a), config_of(b)
    rows = []
    for key in sorted(set(ca) | set(cb), key=lambda k: (not k.startswith("config."), k)):
        va, vb = ca.get(key), cb.get(key)
        if va is None and vb is None:
            continue
        rows.append({"key": key, "a": "" if va is None else str(va), "b": "" if vb is None else str(vb),
                     "changed": va != vb})
    return sorted(rows, key=lambda r: not r["changed"])


def histogram(values: np.ndarray, bins: int = 20) -> tuple[np.ndarray, np.ndarray]:
    """Share of samples per 0-100 bin (percent metrics)."""
    v = values[np.isfinite(values)]
    edges = np.linspace(0, 100, bins + 1)
    counts, _ = np.histogram(np.clip(v, 0, 100), bins=edges)
    return edges, counts / max(int(v.size), 1)
