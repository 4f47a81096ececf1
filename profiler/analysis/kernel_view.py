"""The kernel-level view of a run: all of its profiler windows, analysed and combined.

Each window trace is analysed on its own (:mod:`gpulens.profiler.analysis.trace.analysis`,
through :class:`~gpulens.profiler.analysis.run_analysis.RunAnalysis`) and the
results are combined across windows and ranks: times add up, shares are
recomputed from the sums, per-device GPU figures are averaged weighted by
window length.  Runs without windows get the same keys, empty, with the
reason.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from gpulens.profiler.analysis.report import WindowEntry
from gpulens.profiler.analysis.trace.gpu_summary import ROLES
from gpulens.profiler.analysis.trace.phase_busy import combine_phase_busy
from gpulens.profiler.store.reader import Window


def _merge_named(rows_lists: list[list[dict[str, Any]]], key: str, add: tuple[str, ...]) -> dict[str, dict[str, Any]]:
    merged: dict[str, dict[str, Any]] = {}
    for rows in rows_lists:
        for row in rows:
            cur = merged.get(row[key])
            if cur is None:
                merged[row[key]] = dict(row)
            else:
                for f in add:
                    cur[f] = (cur.get(f) or 0) + (row.get(f) or 0)
                if "max_us" in row:
                    cur["max_us"] = max(cur["max_us"], row["max_us"])
                    cur["min_us"] = min(cur["min_us"], row["min_us"])
    return merged


def combine(analyses: list[dict[str, Any]]) -> dict[str, Any]:
    if not analyses:
        return empty("no profiler windows in this run")
    kernels = _merge_named([a["kernels"] for a in analyses], "name", ("calls", "total_us"))
    grand = sum(k["total_us"] for k in kernels.values()) or 1.0
    for k in kernels.values():
        k["mean_us"] = k["total_us"] / k["calls"]
        k["share"] = k["total_us"] / grand
    kernel_list = sorted(kernels.values(), key=lambda k: -k["total_us"])
    compute_time = sum(k["total_us"] for k in kernel_list if k["category"] not in ("memcpy", "memset"))
    tc_time = sum(k["total_us"] for k in kernel_list if k["tensor_core"])
    categories: dict[str, float] = {}
    for k in kernel_list:
        categories[k["category"]] = categories.get(k["category"], 0.0) + k["total_us"]

    temporal: dict[int, dict[str, float]] = {}
    for a in analyses:
        tb = a["temporal_breakdown"]
        if tb is None:
            continue
        rank_times = temporal.setdefault(tb["rank"], {"idle_us": 0.0, "compute_us": 0.0, "non_compute_us": 0.0,
                                                      "span_us": 0.0})
        for f in rank_times:
            rank_times[f] += tb[f]
    temporal_rows = []
    for rank, t in sorted(temporal.items()):
        span = t["span_us"] or 1.0
        temporal_rows.append({"rank": rank, **t, "idle_pct": round(100 * t["idle_us"] / span, 2),
                              "compute_pct": round(100 * t["compute_us"] / span, 2),
                              "non_compute_pct": round(100 * t["non_compute_us"] / span, 2)})

    gpu: dict[tuple[int, int], dict[str, Any]] = {}  # (rank, device) -> {"w", "sums", "steps"}
    for a in analyses:
        for row in a["gpu_summary"]:
            dev_key = (a["rank"], row["device"])
            dev_acc = gpu.setdefault(dev_key, {"w": 0.0, "sums": {}, "steps": 0})
            w = row["window_us"] or 0.0
            dev_acc["w"] += w
            dev_acc["steps"] += row["steps"]
            for f in ("gpu_utilization_pct", "sm_efficiency_pct", "achieved_occupancy_pct", "tensor_core_pct"):
                if row.get(f) is not None:
                    s, ws = dev_acc["sums"].get(f, (0.0, 0.0))
                    dev_acc["sums"][f] = (s + row[f] * w, ws + w)
    gpu_rows = []
    for (rank, dev), dev_acc in sorted(gpu.items()):
        gpu_rows.append({"rank": rank, "device": dev, "steps": dev_acc["steps"],
                         **{f: (s / ws if ws else None) for f, (s, ws) in dev_acc["sums"].items()}})
        for f in ("gpu_utilization_pct", "sm_efficiency_pct", "achieved_occupancy_pct", "tensor_core_pct"):
            gpu_rows[-1].setdefault(f, None)

    steps = [s for a in analyses for s in a["step_breakdown"]["steps"]]
    labels = (*ROLES, "Other")
    step_breakdown = ({label: float(np.mean([s["breakdown_us"][label] for s in steps])) for label in labels}
                      if steps else {})
    if steps:
        step_breakdown["Total"] = float(np.mean([s["duration_us"] for s in steps]))

    launches = [a["launch"] for a in analyses if a["launch"]]
    launch = None
    if launches:
        n = sum(row["kernels"] for row in launches)
        n_steps = sum(row["steps"] for row in launches)

        def wmean(field: str) -> float | None:
            vals = [(row[field], row["kernels"]) for row in launches if row.get(field) is not None]
            return sum(v * k for v, k in vals) / sum(k for _, k in vals) if vals else None

        launch = {"kernels": n, "steps": n_steps, "kernels_per_step": n / n_steps if n_steps else None,
                  "median_kernel_us": float(np.median([row["median_kernel_us"] for row in launches])),
                  "short_kernel_share": wmean("short_kernel_share"),
                  "shorter_than_launch_share": wmean("shorter_than_launch_share"),
                  "median_launch_us": wmean("median_launch_us"),
                  "median_launch_delay_us": wmean("median_launch_delay_us"),
                  "launch_delay_outliers": sum(row["launch_delay_outliers"] for row in launches),
                  "runtime_outliers": sum(row["runtime_outliers"] for row in launches)}

    sync: dict[str, dict[str, float]] = {}
    for a in analyses:
        for name, row in a["sync"].items():
            sync_row = sync.setdefault(name, {"calls": 0, "total_us": 0.0})
            sync_row["calls"] += row["calls"]
            sync_row["total_us"] += row["total_us"]
    memcpy = list(_merge_named([a["memcpy"] for a in analyses], "direction", ("count", "bytes", "total_us")).values())
    for row in memcpy:
        row.pop("memory", None)
        row["gb_per_s"] = row["bytes"] / (row["total_us"] * 1e3) if row["total_us"] else None
    cpu_ops = sorted(_merge_named([a["cpu_ops"] for a in analyses], "name", ("calls", "total_us", "self_us")).values(),
                     key=lambda r: -r["self_us"])[:30]
    idle: dict[tuple[int, int, int], dict[str, float]] = {}
    for a in analyses:
        for row in a["idle"]:
            stream_key = (row["rank"], row["device"], row["stream"])
            stream_idle = idle.setdefault(stream_key, {"idle_us": 0.0, "host_wait_us": 0.0, "kernel_wait_us": 0.0,
                                                       "other_us": 0.0})
            for f in stream_idle:
                stream_idle[f] += row[f]
    eligible = [(a["tc_eligible_share"], sum(k["total_us"] for k in a["kernels"])) for a in analyses
                if a["tc_eligible_share"] is not None]
    gemms = _merge_named([[dict(g, key=f"{g['op']}|{g['m']}x{g['n']}x{g['k']}|{g['dtype']}")
                           for g in a.get("gemm_shapes", [])]
                          for a in analyses], "key", ("calls", "kernel_us"))
    for g in gemms.values():
        g.pop("key", None)
    has_gpu = any(a["has_gpu"] for a in analyses)
    return {
        "available": True,
        "reason": None if has_gpu else "no GPU activity in the profiler windows (CPU-only run)",
        "has_gpu": has_gpu,
        "kernels": kernel_list,
        "categories_us": dict(sorted(categories.items(), key=lambda kv: -kv[1])),
        "tensor_core_share": tc_time / compute_time if compute_time > 0 else None,
        "tc_eligible_share": (sum(s * w for s, w in eligible) / sum(w for _, w in eligible)
                              if eligible and sum(w for _, w in eligible) > 0 else None),
        "temporal_breakdown": temporal_rows,
        "gpu_summary": gpu_rows,
        "step_breakdown_us": step_breakdown,
        "launch": launch,
        "sync": dict(sorted(sync.items(), key=lambda kv: -kv[1]["total_us"])),
        "memcpy": sorted(memcpy, key=lambda r: -r["total_us"]),
        "idle": [{"rank": k[0], "device": k[1], "stream": k[2], **v} for k, v in sorted(idle.items())],
        "top_cpu_ops": cpu_ops,
        "gemm_shapes": sorted(gemms.values(), key=lambda g: -g["kernel_us"])[:50],
        "phase_gpu_busy": combine_phase_busy([a.get("phase_gpu_busy") for a in analyses]),
    }


def empty(reason: str) -> dict[str, Any]:
    return {"available": False, "reason": reason, "has_gpu": False, "kernels": [], "categories_us": {},
            "tensor_core_share": None, "tc_eligible_share": None, "temporal_breakdown": [], "gpu_summary": [],
            "step_breakdown_us": {}, "launch": None, "sync": {}, "memcpy": [], "idle": [], "top_cpu_ops": [],
            "gemm_shapes": [], "phase_gpu_busy": None}


def steps_in_windows(windows: Sequence[WindowEntry]) -> int:
    """Steps the profiler windows hold, each rank's counted (the report's ``windows``): what the kernel
    view's per-step figures divide by, on every surface."""
    return sum(w.last_step - w.first_step + 1 for w in windows)


def kernel_view(done: list[tuple[Window, dict[str, Any]]], problems: list[dict[str, Any]]) -> dict[str, Any]:
    """The combined kernel view of analysed windows (and the windows that could not be read)."""
    out = combine([a for _, a in done])
    out["windows"] = [{"rank": w.rank, "index": w.index, "first_step": w.first_step, "last_step": w.last_step,
                       "t_start": w.t_start, "t_end": w.t_end, "path": str(w.path) if w.path else None,
                       "status": w.status} for w, _ in done]
    out["window_errors"] = problems
    if not done and problems:
        out["reason"] = "no readable profiler window: " + problems[0]["error"]
    return out
