"""Run summary: the figures behind ``gpulens report`` and its ``--json`` output.

:func:`summarize_data` is a pure function of arrays and metadata (easy to test
on recorded data); :func:`summarize` only gathers them through the reader.
The JSON keys are a stable, documented interface (README, "report --json").
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from msgspec import to_builtins

from gpulens.profiler.analysis.energy import EnergyCurve, PowerSplit, energy_summary, gpu_energy
from gpulens.profiler.analysis.kernel_view import KernelView, empty
from gpulens.profiler.analysis.peaks import mfu
from gpulens.profiler.analysis.whatif import what_if_result
from gpulens.profiler.store import schema
from gpulens.profiler.store.metrics import CATALOG, THROTTLE_REASONS
from gpulens.profiler.store.reader import Event, FlopCount, Node, RunReader, Series, SeriesInfo, StepTable
from gpulens.profiler.store.schema import FLAG_COMPILE, FLAG_PROFILED, FLAG_WARMUP, FLAG_WHATIF

REPORT_SCHEMA = "gpulens.report/1"
PHASES = schema.PHASES


def stats(values: np.ndarray) -> dict[str, float | int] | None:
    """count, mean, min, p50, p90, p99, max of the finite values (None if none)."""
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return None
    p50, p90, p99 = np.percentile(v, [50, 90, 99])
    return {"count": int(v.size), "mean": float(v.mean()), "min": float(v.min()),
            "p50": float(p50), "p90": float(p90), "p99": float(p99), "max": float(v.max())}


@dataclass
class RunData:
    """Everything the summary needs, read once from a run."""

    info: dict[str, Any]
    meta: dict[str, Any]
    steps: StepTable
    series: list[SeriesInfo]
    metrics: dict[tuple[str, int, int], dict[str, Any] | None]  # metric_entry() per (metric, gpu, rank)
    events: list[Event]
    kernel: KernelView | None = None  # the kernel view (analysis.kernel_view); None = not gathered
    flops: list[FlopCount] | None = None
    nodes: list[Node] = field(default_factory=list)  # empty: one node, described by ``meta``
    rank_durations: dict[int, Any] = field(default_factory=dict)  # rank -> steady step times (s)
    energy_curves: list[EnergyCurve] = field(default_factory=list)  # one per GPU with energy readings
    power_fits: list[PowerSplit | None] = field(default_factory=list)  # watts by phase, per GPU


def metric_entry(series: Series) -> dict[str, Any] | None:
    """Statistics of one series, plus its change (counters) and clock-event shares (throttle mask)."""
    st = stats(series.v)
    if st is None:
        return None
    entry: dict[str, Any] = {"unit": series.unit, **st}
    if series.metric in CATALOG and CATALOG[series.metric].counter:
        entry["change"] = float(series.v[-1] - series.v[0])
    if series.metric == "gpu.throttle":
        masks = series.v[np.isfinite(series.v)].astype(np.int64)
        entry["reasons"] = {name: float(np.mean((masks & bit) != 0))
                            for bit, name in THROTTLE_REASONS.items() if np.any(masks & bit)}
    return entry


def gather(run: RunReader, kernel: KernelView) -> RunData:
    """Read what the summary needs, one series at a time: a day-long 8-GPU run never sits in memory whole."""
    infos = run.series_list()
    nodes = run.nodes()
    speakers = {n.speaker for n in nodes}
    metrics: dict[tuple[str, int, int], dict[str, Any] | None] = {}
    steps = run.steps()
    for s in infos:  # every node's GPUs and host, from the rank that sampled that node
        if s.status == "ok" and s.rank in speakers and (s.metric, s.gpu, s.rank) not in metrics:
            got = run.series(s.metric, s.gpu, rank=s.rank)
            if got is not None:
                metrics[(s.metric, s.gpu, s.rank)] = metric_entry(got)
    curves, fits = gpu_energy(run, steps)
    info = run.info
    return RunData(
        # absolute: the same run prints the same path from any directory and however it was named (and a report
        # kept beside the run is the report of any of them: report_cache)
        info={"id": info.id, "path": os.path.abspath(info.path), "name": info.name, "status": info.status,
              "status_reason": info.status_reason, "start": info.start, "end": info.end,
              "duration_s": info.duration_s, "ranks": info.ranks, "replay": info.replay,
              "records_lost": {str(r): run.meta(r)["records_lost"] for r in info.ranks
                               if run.meta(r).get("records_lost")}},
        meta=info.meta,
        steps=steps,
        series=infos,
        metrics=metrics,
        events=run.events(),
        kernel=kernel,
        flops=run.flops(),
        nodes=nodes,
        rank_durations={r: run.step_durations(r) for r in info.ranks} if len(info.ranks) > 1 else {},
        energy_curves=curves,
        power_fits=fits,
    )


def compile_summary(steps: StepTable, compiling: np.ndarray) -> dict[str, Any] | None:
    """torch.compile's one-off work: how long, in which steps (None when nothing compiled)."""
    where = np.flatnonzero(compiling)
    if not where.size:
        return None
    extra = steps.extra
    seconds = [float(((extra[i] if i < len(extra) else None) or {}).get("@compile", 0.0)) for i in where]
    return {"steps": int(where.size), "seconds": float(sum(seconds)), "first_steps": [int(steps.step[i]) for i in
                                                                                      where[:5]],
            "step_seconds": float(steps.duration[where].sum())}


def step_summary(steps: StepTable) -> tuple[dict[str, Any], dict[str, Any]]:
    """Step-time statistics and throughput over the steady steps."""
    n = len(steps)
    flags = steps.flags if n else np.zeros(0, dtype=np.int64)
    compiling = flags & FLAG_COMPILE != 0
    excluded = {"warmup": int(np.count_nonzero(flags & FLAG_WARMUP)),
                "profiled": int(np.count_nonzero(flags & FLAG_PROFILED)),
                "what_if": int(np.count_nonzero(flags & FLAG_WHATIF)),
                "compiling": int(np.count_nonzero(compiling))}
    steady = steps.counted()
    durations = steps.duration[steady] if n else np.zeros(0)
    step_time: dict[str, Any] = {"count": int(durations.size), "steady": int(np.count_nonzero(flags == 0)),
                                 "excluded": excluded,
                                 "compile": compile_summary(steps, compiling)}
    throughput: dict[str, Any] = {"steps_per_s": None, "samples_per_s": None, "tokens_per_s": None}
    if durations.size == 0:
        step_time.update({"mean_s": None, "median_s": None, "p90_s": None, "p99_s": None, "phases": {}})
        return step_time, throughput
    total = float(durations.sum())
    st = stats(durations)
    assert st is not None
    step_time.update({"mean_s": st["mean"], "median_s": st["p50"], "p90_s": st["p90"],
                      "p99_s": st["p99"], "max_s": st["max"]})
    phases = {}
    for name in PHASES:
        col = getattr(steps, name)[steady]
        phases[name] = {"mean_s": float(col.mean()), "share": float(col.sum() / total) if total > 0 else None}
    step_time["phases"] = phases
    gpu_step = steps.gpu_step[steady]
    timed = np.isfinite(gpu_step)
    if timed.any():
        gpu_total = float(gpu_step[timed].sum())
        step_time["gpu_phases"] = {
            "steps_timed": int(timed.sum()),
            "mean_step_s": float(gpu_step[timed].mean()),
            **{name: {"mean_s": float(getattr(steps, f"gpu_{name}")[steady][timed].mean()),
                      "share": float(getattr(steps, f"gpu_{name}")[steady][timed].sum() / gpu_total)
                      if gpu_total > 0 else None}
               for name in PHASES},
        }
    custom: dict[str, float] = {}
    comm: list[float] = []
    for extra, keep in zip(steps.extra, steady):
        if keep:
            for key, value in extra.items():
                if key == "@comm":
                    comm.append(value)
                elif not key.startswith("@"):  # '@' keys are measurements, not phases
                    custom[key] = custom.get(key, 0.0) + value
    if custom:
        step_time["custom_phases"] = {k: {"mean_s": v / durations.size, "share": v / total}
                                      for k, v in sorted(custom.items())}
    if comm:
        # DDP all-reduce wall time (gloo, communication hook): overlaps backward, so not a phase
        step_time["comm"] = {"steps": len(comm), "mean_s": float(np.mean(comm)), "share": float(np.sum(comm)) / total}
    if total > 0:
        throughput["steps_per_s"] = durations.size / total
        samples = steps.samples[steady]
        if np.isfinite(samples).any():
            known = np.isfinite(samples)
            throughput["samples_per_s"] = float(samples[known].sum() / durations[known].sum())
        tokens = steps.tokens[steady]
        if np.isfinite(tokens).any():
            known = np.isfinite(tokens)
            throughput["tokens_per_s"] = float(tokens[known].sum() / durations[known].sum())
    return step_time, throughput


def mfu_summary(data: RunData, step_time: dict[str, Any]) -> dict[str, Any]:
    """FLOPs per step (counted or given), achieved TFLOP/s and MFU against the GPU's dense peak."""
    meta = data.meta
    gpus = meta.get("gpus") or []
    device = gpus[0]["name"] if gpus else None
    step_s = step_time.get("mean_s")  # total over count: MFU moves with steps/s, as throughput does
    flops = [f for f in (data.flops or []) if f.rank == data.steps.rank]
    user = meta.get("user_flops") or {}
    by_dtype: dict[str, float] | None = None
    source = None
    counted_step = None
    given = [f for f in flops if f.source == "user"]
    counted = [f for f in flops if f.source != "user" and f.total > 0]
    if given:
        by_dtype, source = given[-1].by_dtype, "user: flops_per_step"
    elif user.get("flops_per_sample") or user.get("flops_per_token"):
        steady = data.steps.counted()
        per = "samples" if user.get("flops_per_sample") else "tokens"
        counts = getattr(data.steps, per)[steady] if steady.any() else np.zeros(0)
        counts = counts[np.isfinite(counts)]
        if counts.size:
            dtype = user.get("flops_dtype") or "bf16"
            by_dtype = {dtype: float(user[f"flops_per_{per[:-1]}"]) * float(np.median(counts))}
            source = f"user: flops_per_{per[:-1]} x median {per} per step"
    elif counted:
        by_dtype, source, counted_step = counted[-1].by_dtype, counted[-1].source, counted[-1].step
    if by_dtype is None:
        reason = ("an imported trace holds no FLOP counts (record the script with gpulens to count them)"
                  if meta.get("imported") else
                  "no FLOPs recorded (count_flops off, or the run ended before the counted step)")
        return {"available": False, "reason": reason, "flops_per_step": None, "by_dtype": {}, "achieved_tflops": None,
                "mfu_pct": None, "peak": None, "source": None, "device": device}
    out = mfu(by_dtype, step_s, device)
    out.update({"available": True, "source": source, "device": device, "counted_step": counted_step})
    return out


def _metric_block(data: RunData, gpu: int, rank: int,
                  prefixes: tuple[str, ...]) -> tuple[dict[str, Any], dict[str, Any]]:
    metrics: dict[str, Any] = {}
    missing: dict[str, str] = {}
    for s in data.series:
        if s.gpu != gpu or s.rank != rank or not s.metric.startswith(prefixes):
            continue
        if s.status != "ok":
            missing[s.metric] = f"{s.status}: {s.reason}" if s.reason else s.status
            continue
        entry = data.metrics.get((s.metric, s.gpu, s.rank))
        if entry is None:
            missing[s.metric] = "no samples recorded"
            continue
        metrics[s.metric] = entry
    return metrics, missing


def summarize_data(data: RunData) -> dict[str, Any]:
    meta = data.meta
    step_time, throughput = step_summary(data.steps)
    steps = data.steps

    primary_rank = steps.rank if len(data.info.get("ranks") or []) else 0
    nodes = data.nodes or [Node(int(meta.get("node_rank") or 0), str(meta.get("host") or "?"), [primary_rank],
                                primary_rank, list(meta.get("gpus") or []), sampler=primary_rank)]
    multi = len(nodes) > 1
    gpus: list[dict[str, Any]] = []
    for node in nodes:  # every node's GPUs, keyed (node, index): node 1's GPU 0 is not node 0's
        speaker = _speaker(node)
        for gpu in node.gpus:
            idx = int(gpu["index"])
            metrics, missing = _metric_block(data, idx, speaker, ("gpu.", "gpm."))
            energy = data.metrics.get(("gpu.energy", idx, speaker))
            gpus.append({
                "index": idx, "node_rank": node.node_rank, "name": _of(gpu.get("name"), str),
                "uuid": _of(gpu.get("uuid"), str),
                "memory_total_bytes": _of(gpu.get("memory_total"), int),
                "compute_capability": _of(gpu.get("compute_capability"), str),
                "gpm_supported": _of(gpu.get("gpm_supported"), bool),
                "energy_j": energy["change"] if energy is not None and energy["count"] > 1 else None,
                "metrics": metrics,
                "not_available": missing,
            })
    home = next((n for n in nodes if primary_rank in n.ranks), nodes[0])
    host_metrics, host_missing = _metric_block(data, -1, _speaker(home), ("host.", "proc.", "workers.", "children."))

    mem_peak = steps.mem_peak if len(steps) else np.zeros(0)
    mem_reserved = steps.mem_reserved if len(steps) else np.zeros(0)
    memory = {
        "cuda_peak_allocated_bytes": _nanmax(mem_peak),
        "cuda_peak_reserved_bytes": _nanmax(mem_reserved),
        "gpu_memory_used_max_bytes": {(f"{g['node_rank']}:{g['index']}" if multi else str(g["index"])):
                                      g["metrics"].get("gpu.mem_used", {}).get("max") for g in gpus},
        "process_rss_max_bytes": host_metrics.get("proc.rss", {}).get("max"),
        "workers_rss_max_bytes": host_metrics.get("workers.rss", {}).get("max"),
    }

    samples: dict[str, Any] = {}
    for s in data.series:
        key = s.metric if s.gpu < 0 else f"gpu{s.gpu}/{s.metric}"
        if s.rank and key in samples:
            key = f"rank{s.rank}/{key}"
        samples[key] = {"count": s.count, "first": s.t_first, "last": s.t_last, "status": s.status}
    if len(steps):
        samples["steps"] = {"count": len(steps), "first": float(steps.t_start[0]),
                            "last": float(steps.t_end[-1]), "status": "ok"}

    loss = steps.loss[np.isfinite(steps.loss)] if len(steps) else np.zeros(0)
    nvml = _of(meta.get("nvml"), dict) or {}
    kernel = data.kernel if data.kernel is not None else empty("trace analysis not gathered")
    return {
        "schema": REPORT_SCHEMA,
        "run": {**data.info, "host": _of(meta.get("host"), str), "command": _of(meta.get("command"), list, str),
                "torch_version": _of(meta.get("torch_version"), str),
                "gpulens_version": _of(meta.get("gpulens_version"), str),
                "world_size": _of(meta.get("world_size", 1), int) or 1, "batch_size": _of(meta.get("batch_size"), int),
                "imported_from": meta.get("imported_from"),
                "config": _of(meta.get("config"), dict) or {}},
        "status": data.info["status"],
        "status_reason": data.info["status_reason"],
        "records_lost": data.info.get("records_lost") or {},
        "duration_s": data.info["duration_s"],
        "steps": len(steps),
        "step_time": step_time,
        "throughput": throughput,
        "loss": {"first": float(loss[0]), "last": float(loss[-1]), "count": int(loss.size)} if loss.size else None,
        "gpus": gpus,
        "nodes": [_node_entry(data, n, gpus) for n in nodes],
        "ranks": _rank_entries(data, nodes),
        "nvml": {"available": bool(nvml.get("available")), "reason": _of(nvml.get("reason"), str),
                 "driver_version": _of(nvml.get("driver_version"), str),
                 "cuda_driver_version": _of(nvml.get("cuda_driver_version"), str)},
        "host": {"info": _of(meta.get("host_info"), dict) or {}, "metrics": host_metrics,
                 "not_available": host_missing},
        "memory": memory,
        "samples": samples,
        "events": [{"t": e.t, "kind": e.kind, "gpu": e.gpu, "message": e.message, "rank": e.rank}
                   for e in data.events],
        "mfu": mfu_summary(data, step_time),
        "trace_analysis": {"available": kernel.available, "reason": kernel.reason, "has_gpu": kernel.has_gpu},
        "windows": to_builtins(kernel.windows),
        "window_errors": to_builtins(kernel.window_errors),
        "kernels": [{"name": k.name, "calls": k.calls, "total_us": k.total_us, "mean_us": k.mean_us,
                     "max_us": k.max_us, "share": k.share, "category": k.category,
                     "tensor_core": k.tensor_core} for k in kernel.kernels],
        "categories_us": kernel.categories_us,
        "tensor_core_share": kernel.tensor_core_share,
        "tc_eligible_share": kernel.tc_eligible_share,
        **{key: to_builtins(getattr(kernel, key)) for key in (
            "temporal_breakdown", "gpu_summary", "step_breakdown_us", "launch", "sync", "memcpy", "idle",
            "top_cpu_ops", "gemm_shapes", "phase_gpu_busy")},
        "what_if": what_if_result(steps, meta),
        "energy": energy_summary(data.energy_curves, data.power_fits, steps, _per_step_work(steps)),
    }


def _per_step_work(steps: StepTable) -> tuple[float | None, float | None]:
    """Mean samples and tokens of a steady step (None where the run does not say)."""
    if not len(steps):
        return None, None
    steady = steps.counted()
    out: list[float | None] = []
    for col in (steps.samples, steps.tokens):
        v = col[steady]
        v = v[np.isfinite(v)]
        out.append(float(v.mean()) if v.size else None)
    return out[0], out[1]


def _speaker(node: Node) -> int:
    """The key whose series describe ``node``: its sampler, else its first rank."""
    return node.speaker


def _median(values: list[Any]) -> float | None:
    v = np.concatenate([np.asarray(x, dtype=np.float64) for x in values]) if values else np.zeros(0)
    v = v[np.isfinite(v)]
    return float(np.median(v)) if v.size else None


def _node_entry(data: RunData, node: Node, gpus: list[dict[str, Any]]) -> dict[str, Any]:
    """One machine: its ranks and GPUs, how busy its GPUs and host were, how long its steps took -- the row
    that makes a slow or hot node stand out."""
    mine = [g for g in gpus if g["node_rank"] == node.node_rank]
    busy = [g["metrics"]["gpu.util"]["mean"] for g in mine if "gpu.util" in g["metrics"]]
    cpu = data.metrics.get(("host.cpu", -1, _speaker(node))) if node.sampler is not None else None
    durations = [data.rank_durations[r] for r in node.ranks if r in data.rank_durations]
    if not data.rank_durations and len(data.steps):  # one rank: the run's own steady steps
        durations = [data.steps.duration[data.steps.counted()]]
    return {"node_rank": node.node_rank, "hostname": node.hostname, "ranks": list(node.ranks),
            "sampling_rank": node.sampling_rank,
            "sampled_by": ("none" if node.sampler is None else "rank" if node.sampling_rank is not None
                           else "node process"),
            "status": node.status, "status_reason": node.status_reason,
            "gpus": [{"index": int(g["index"]), "name": g.get("name"), "uuid": g.get("uuid")} for g in node.gpus],
            "gpu_busy_pct": float(np.mean(busy)) if busy else None,
            "host_cpu_pct": cpu["mean"] if cpu else None,
            "step_time_median_s": _median(durations),
            "steps": int(sum(np.asarray(d).size for d in durations)),
            # this node's clock minus rank 0's, measured through the job's store; None: as NTP keeps them
            "clock_offset_s": _num((node.clock or {}).get("offset_s")),
            "clock_uncertainty_s": _num((node.clock or {}).get("uncertainty_s"))}


def _of(value: Any, *kinds: type) -> Any:
    """A recorded value as the report documents it, or None: a damaged or foreign run's metadata can hold
    anything (``"torch_version": true``), and one wrong value must not cost the whole report."""
    if isinstance(value, bool) and bool not in kinds:  # True is an int to isinstance
        return None
    return value if isinstance(value, kinds) else None


def _num(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _rank_entries(data: RunData, nodes: list[Node]) -> list[dict[str, Any]]:
    node_of = {r: n.node_rank for n in nodes for r in n.ranks}
    out = []
    for rank in data.info.get("ranks") or []:
        d = data.rank_durations.get(rank)
        if d is None:
            d = data.steps.duration[data.steps.counted()] if len(data.steps) else np.zeros(0)
        out.append({"rank": int(rank), "node_rank": node_of.get(rank, 0), "steps": int(np.asarray(d).size),
                    "step_time_median_s": _median([d])})
    return out


def _nanmax(values: np.ndarray) -> float | None:
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    return float(v.max()) if v.size else None


def metric_label(name: str) -> str:
    metric = CATALOG.get(name)
    return metric.label if metric else name
