"""The compare page's comparisons: the headline (``gpulens compare``'s rows), kernel deltas and configuration
changes (pure functions of two summaries), utilisation histograms."""
from __future__ import annotations

from typing import Any

import numpy as np

from gpulens import fmt
from gpulens.profiler import RunReader
from gpulens.profiler.analysis.gpus import mean_over_gpus
from gpulens.profiler.analysis.kernel_view import steps_in_windows
from gpulens.profiler.analysis.report import Report


def gpu_mean(s: Report, metric: str) -> float | None:
    return mean_over_gpus(s.gpus, metric)


def headline_rows(run_a: RunReader, a: Report, run_b: RunReader, b: Report,
                  advice_a: dict[str, Any] | None = None) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """``gpulens compare``'s rows for the page, B against A, each change with its interval and verdict; and the
    fixes: A's proposed changes that B applied, their predictions beside what B got (``gpulens compare``'s
    ``fix`` lines)."""
    from gpulens.profiler.analysis.compare import change_text, check_fixes, compare, interval_text, side_of
    from gpulens.tables import comparison_value

    side_a, side_b = side_of(run_a, a), side_of(run_b, b)
    result = compare(side_a, side_b)
    check_fixes(result, (advice_a or {}).get("suggestions") or [], side_a, side_b)
    rows = [{"metric": m.label, "a": comparison_value(m, m.base), "b": comparison_value(m, m.candidate),
             "change": change_text(m, with_interval=False), "ci": interval_text(m),
             "verdict": m.verdict + (f" ({m.note})" if m.note else "")} for m in result.metrics]
    fixes = []
    for f in result.fixes:
        predicted, got, held = fmt.fix_texts(f.predicted, f.low, f.high, f.measure, f.got, f.got_low, f.got_high,
                                             f.inside)
        fixes.append({"suggestion": f.suggestion, "applied": fmt.change(f.applied), "predicted": predicted,
                      "got": got, "held": held})
    return rows, fixes


def kernel_deltas(a: Report, b: Report, limit: int = 25) -> list[dict[str, Any]]:
    """Kernel time per profiled step in A and B, largest absolute change first."""
    na, nb = steps_in_windows(a.windows), steps_in_windows(b.windows)
    if not na or not nb:
        return []
    ka = {k.name: k for k in a.kernels}
    kb = {k.name: k for k in b.kernels}
    rows: list[dict[str, Any]] = []
    for name in set(ka) | set(kb):
        ta = ka[name].total_us / na if name in ka else 0.0
        tb = kb[name].total_us / nb if name in kb else 0.0
        cat = (ka.get(name) or kb[name]).category
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


def config_of(s: Report) -> dict[str, Any]:
    """What describes how a run was set up: user config, batch, world size, versions, GPU."""
    run = s.run
    out: dict[str, Any] = {}
    _flat("config", run.config, out)
    out["batch_size"] = run.batch_size
    out["world_size"] = run.world_size
    out["torch"] = run.torch_version
    out["gpulens"] = run.gpulens_version
    out["gpu"] = f"{s.gpus[0].name} × {len(s.gpus)}" if s.gpus else "none"
    out["driver"] = s.nvml.driver_version
    out["host"] = run.host
    cmd = run.command
    out["command"] = " ".join(cmd) if isinstance(cmd, list) else cmd
    if s.mfu.by_dtype:
        out["dtypes (FLOPs)"] = ", ".join(sorted(k for k, v in s.mfu.by_dtype.items() if v))
    return out


def config_diff(a: Report, b: Report) -> list[dict[str, Any]]:
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


#: Line = (x, y): x in seconds since start or in steps done.
Line = tuple[np.ndarray, np.ndarray]
#: The utilisation line of the overlay: the best metric both runs recorded, in this order.
OVERLAY_METRICS = (("gpm.sm_active", "SM activity (GPM, %)"), ("gpu.util", "GPU busy (NVML, %)"),
                   ("proc.cpu", "Process CPU (cores)"))


def overlay_metric(runs: list[RunReader]) -> tuple[str, str] | None:
    """The utilisation series every run recorded (SM activity before NVML busy before process CPU)."""
    for metric, title in OVERLAY_METRICS:
        if all(any(s.metric == metric and s.status == "ok" and s.count > 0 for s in r.series_list()) for r in runs):
            return metric, title
    return None


def overlay(run: RunReader, align: str, metric: str | None, points: int = 1200) -> dict[str, Line]:
    """One run's step time (ms) and ``metric`` as (x, y), with x = seconds since start (``align="time"``)
    or the step count reached at that moment (``align="step"``: runs of different speed line up by work
    done, not by clock)."""
    origin = float(run.info.start or 0.0)
    view = run.step_view(None, max_points=points)
    steps_done = np.cumsum(view.n.astype(np.float64)) if len(view) else np.zeros(0)
    out: dict[str, Line] = {}

    def x_of(t: np.ndarray) -> np.ndarray:
        if align == "step":
            if steps_done.size == 0:
                return np.full(t.size, np.nan)
            return np.interp(t, view.t, steps_done, left=np.nan, right=np.nan)
        return t - origin

    if len(view):
        out["step"] = (steps_done if align == "step" else view.t - origin, view.dur * 1e3)
    if metric is not None:
        gpus = run.gpus_recorded()
        gpu = gpus[0] if gpus and not metric.startswith("proc.") else -1
        sv = run.series_view(metric, gpu, max_points=points)
        if sv is not None and len(sv):
            x = x_of(sv.t)
            ok = np.isfinite(x)
            out["metric"] = (x[ok], np.asarray(sv.v, dtype=np.float64)[ok])
    return out
