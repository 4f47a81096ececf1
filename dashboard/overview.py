"""Pure helpers of the run view: headline cards, evidence targets, step-phase series, rank means.

They take the run's report (:class:`~gpulens.profiler.analysis.report.Report`) or reader views and
return plain values, so the run page's callbacks stay thin and these are
tested on recorded runs without a browser.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from gpulens import fmt
from gpulens.dashboard.panels import panel_of
from gpulens.profiler.analysis.gpus import mean_over_gpus
from gpulens.profiler.analysis.report import MetricStats, Report, WhatIf, WindowEntry
from gpulens.profiler.store.reader import PHASE_COLUMNS, StepView


@dataclass(frozen=True)
class Card:
    key: str
    label: str
    value: str
    sub: str
    title: str
    available: bool = True


def _gpu_mean(report: Report, metric: str) -> tuple[float | None, str | None]:
    """Mean over GPUs of a metric's run mean, or (None, why it is missing)."""
    if report.run.imported_from:
        return None, "not in an imported trace"
    value = mean_over_gpus(report.gpus, metric)
    if value is not None:
        return value, None
    reasons = [g.not_available[metric] for g in report.gpus if metric in g.not_available]
    if reasons:
        return None, reasons[0]
    if not report.gpus:
        return None, "no NVIDIA GPU in this run"
    return None, "not recorded"


def _cpu_run(report: Report) -> bool:
    """Recorded here without any GPU (not an imported trace, whose GPU figures come from its kernels)."""
    return not report.gpus and not report.run.imported_from


def _mean(metrics: dict[str, MetricStats], name: str) -> float | None:
    m = metrics.get(name)
    return m.mean if m is not None else None


def _cpu_cards(report: Report) -> list[Card]:
    """A run without a GPU: one card says so, and the host and loop figures take the GPU cards' place."""
    why = report.nvml.reason or "no NVIDIA GPU on this machine"
    metrics = report.host.metrics
    cores = report.host.info.get("cpu_count")
    cards = [Card("gpu_busy", "GPU", "none", why[:80], why, False)]
    host = _mean(metrics, "host.cpu")
    cards.append(Card("host_cpu", "Host CPU", fmt.percent(host),
                      f"mean of {cores} cores, all processes" if cores else "all processes",
                      "psutil: share of the host's CPU time in use, every process included", host is not None))
    proc = _mean(metrics, "proc.cpu")
    workers = _mean(metrics, "workers.cpu")
    sub = f"DataLoader workers {workers:.2f} cores" if workers else "no DataLoader workers"
    cards.append(Card("proc_cpu", "Training process CPU", f"{proc:.2f} cores" if proc is not None else "n/a", sub,
                      "CPU time of the training process per second, in cores (1.00: one core busy all the time)",
                      proc is not None))
    data_wait = report.step_time.phases.get("data_wait")
    wait = data_wait.share if data_wait is not None else None
    cards.append(Card("data_wait", "Data wait", fmt.percent(100 * wait) if wait is not None else "n/a",
                      "of the steady steps' time", "time the loop waited for the next batch", wait is not None))
    return cards


def headline(report: Report) -> list[Card]:
    """The cards at the top of the run view, with the reason where a figure is not available."""
    cards: list[Card] = []
    if _cpu_run(report):
        cards = _cpu_cards(report)
        _loop_cards(report, cards, gpu=False)
        return cards
    n_gpus = len(report.gpus)
    busy, why = _gpu_mean(report, "gpu.util")
    kernel = next((g.gpu_utilization_pct for g in report.gpu_summary if g.gpu_utilization_pct is not None), None)
    sub = why or (f"mean of {n_gpus} GPUs" if n_gpus > 1 else "NVML, whole run")
    if busy is None and kernel is not None:  # an imported trace: its kernels are all we know of the GPU
        cards.append(Card("gpu_busy", "GPU busy", fmt.percent(kernel), "from the trace: kernels run this share "
                          "of the profiled steps (no NVML samples)",
                          "share of the profiled steps' time in which a kernel ran on the GPU (trace timeline)"))
    else:
        if kernel is not None:  # the advisor's other figure, named as its findings name it
            sub += f" · kernels run {fmt.percent(kernel)} of the profiled steps"
        cards.append(Card("gpu_busy", "GPU busy", fmt.percent(busy), sub,
                          "NVML utilization.gpu: share of time at least one kernel ran. 100% does not mean all SMs "
                          "worked: see SM activity.", busy is not None))
    for key, metric, label, title in (
            ("sm_active", "gpm.sm_active", "SM activity", "GPM: share of SMs busy over time (Hopper+)"),
            ("tensor_active", "gpm.tensor_active", "Tensor activity", "GPM: time the tensor cores issued work"),
            ("dram_bw", "gpm.dram_bw", "DRAM bandwidth", "GPM: DRAM bandwidth used over its peak")):
        value, why = _gpu_mean(report, metric)
        cards.append(Card(key, label, fmt.percent(value), "GPM mean" if value is not None else f"n/a: {why}", title,
                          value is not None))
    mfu = report.mfu
    if mfu.mfu_pct is not None:
        cards.append(Card("mfu", "MFU", fmt.percent(mfu.mfu_pct),
                          f"{mfu.achieved_tflops or 0:.1f} TFLOP/s of {mfu.peak.gpu if mfu.peak else 'peak'}",
                          f"model FLOPs ({mfu.source}) per second over the dense peak of the dtypes used"))
    else:
        cards.append(Card("mfu", "MFU", "n/a", (mfu.reason or "no FLOPs recorded")[:80], mfu.reason or "", False))
    _loop_cards(report, cards, gpu=True)
    return cards


def _loop_cards(report: Report, cards: list[Card], gpu: bool) -> None:
    """Throughput, step time, (GPU energy,) peak memory and a what-if: every run has them."""
    tp = report.throughput
    if tp.samples_per_s:
        rate, rate_sub = f"{tp.samples_per_s:,.0f}/s", f"samples · {tp.steps_per_s or 0:.2f} steps/s"
    elif tp.steps_per_s:
        rate, rate_sub = f"{tp.steps_per_s:.2f}/s", "steps (no batch size recorded)"
    else:
        rate, rate_sub = "n/a", "no steady steps recorded"
    if tp.tokens_per_s:
        rate_sub += f" · {tp.tokens_per_s:,.0f} tokens/s"
    cards.append(Card("throughput", "Throughput", rate, rate_sub, "steady steps only: warm-up, profiled, compiling "
                      "and what-if steps are left out", rate != "n/a"))
    st = report.step_time
    cards.append(Card("step_time", "Step time", fmt.seconds(st.mean_s),
                      f"median {fmt.seconds(st.median_s)} · p90 {fmt.seconds(st.p90_s)}",
                      "wall time of the steady steps over their count (1 / steps/s, as throughput and MFU); the "
                      "median is the typical step", st.mean_s is not None))
    if gpu:
        cards.append(energy_card(report))
    mem = report.memory
    used = [v for v in mem.gpu_memory_used_max_bytes.values() if v is not None]
    if mem.cuda_peak_allocated_bytes:
        total = report.gpus[0].memory_total_bytes if report.gpus else None
        sub = f"CUDA allocated peak · reserved {fmt.bytes_(mem.cuda_peak_reserved_bytes)}"
        if total:
            sub += f" of {fmt.bytes_(total)}"
        cards.append(Card("memory", "Peak memory", fmt.bytes_(mem.cuda_peak_allocated_bytes), sub,
                          "torch.cuda.max_memory_allocated since the run started"))
    elif used:
        cards.append(Card("memory", "Peak memory", fmt.bytes_(max(used)), "GPU memory used (NVML)",
                          "device memory in use by all processes, maximum"))
    elif mem.process_rss_max_bytes:
        cards.append(Card("memory", "Peak memory", fmt.bytes_(mem.process_rss_max_bytes),
                          "process RSS (CPU run)", "resident memory of the training process, maximum"))
    else:
        cards.append(Card("memory", "Peak memory", "n/a", "not recorded", "", False))
    if report.what_if is not None:
        cards.append(what_if_card(report.what_if))


def what_if_card(w: WhatIf) -> Card:
    """A measured what-if: the step time its stretch reached, against the run's own steady steps."""
    label = ("What-if: synthetic data" if w.kind == "synthetic-data" else
             f"What-if: {w.num_workers} workers" if w.kind == "num-workers" else
             "What-if: bf16 autocast" if w.kind == "autocast" else
             "What-if: channels-last" if w.kind == "channels-last" else
             f"What-if: {w.implementation} optimizer" if w.kind == "optimizer" else f"What-if: batch {w.batch_size}")
    did = ("replayed cached batches instead of waiting on the DataLoader" if w.kind == "synthetic-data" else
           f"loaded the run's next batches with {w.num_workers} DataLoader workers (the run has {w.base_workers}; "
           f"measured from step {w.measured_from_step}, once they started)" if w.kind == "num-workers" else
           "ran the model's forward under torch.autocast(bfloat16), its outputs back in float32"
           if w.kind == "autocast" else
           "ran the model and its image inputs channels-last (NHWC), its outputs contiguous again"
           if w.kind == "channels-last" else
           f"stepped the optimizer with torch's {w.implementation} implementation" if w.kind == "optimizer" else
           f"trained on batches of {w.batch_size} (compute time: step minus data wait)")
    title = (f"steps {w.first_step}-{w.last_step} of the real loop {did}"
             "; compared with the run's steady steps, 95% block-bootstrap interval")
    if w.step_time_change is None:
        why = w.reason or w.status or "no steps measured"
        return Card("what_if", label, "n/a", str(why)[:80], title, False)
    ci = w.step_time_change_ci
    sub = f"vs {fmt.seconds(w.baseline_step_time_median_s)}"
    sub += f" ({w.step_time_change:+.0%}" + (f", CI {ci[0]:+.0%}..{ci[1]:+.0%})" if ci else ")")
    if w.kind == "batch-size" and w.samples_per_s_change is not None:
        sub += f" · samples/s {w.samples_per_s_change:+.0%}"
    return Card("what_if", label, fmt.seconds(w.step_time_median_s), sub, title)


def energy_card(report: Report) -> Card:
    """GPU energy of the run, per steady step and per sample, and (in the tooltip) per phase."""
    e = report.energy
    if not e.available:
        why = "no NVIDIA GPU in this run" if not report.gpus else "no energy counter or power readings"
        return Card("energy", "GPU energy", "n/a", why, e.reason or why, False)
    sub = []
    if e.step_j_median is not None:
        sub.append(f"{e.step_j_median:,.1f} J/step")
    if e.per_token_j is not None:
        sub.append(f"{e.per_token_j * 1000:,.2f} mJ/token")
    elif e.per_sample_j is not None:
        sub.append(f"{e.per_sample_j:,.2f} J/sample")
    source = "NVML's total-energy counter" if e.source == "nvml-energy-counter" else "integrated power readings"
    lines = [f"{source} of {e.gpus} GPU(s), first reading to last; J/step: its rise inside each steady "
             "step (median)"]
    if e.idle_j is not None:
        lines.append(f"outside steps (start-up, evaluation, checkpoints): {e.idle_j / 3600:,.3f} Wh")
    if e.phases:
        lines.append("GPU power while the host was in each phase (GPU work runs behind its launch):")
        lines += [f"  {fmt.phase(name)}: {p.watts:,.0f} ± {p.watts_se:,.0f} W, {p.j_per_step:,.2f} J/step"
                  for name, p in e.phases.items()]
    return Card("energy", "GPU energy", f"{e.wh or 0:,.2f} Wh", " · ".join(sub) or "whole run", "\n".join(lines))


@dataclass(frozen=True)
class Target:
    """Where an evidence link goes: a zoom of the graphs (seconds since start), a section, or a page."""

    label: str
    anchor: str  # element id to scroll to
    t0: float | None = None
    t1: float | None = None
    href: str | None = None  # another page instead of a zoom


def evidence_targets(suggestion: dict[str, Any], report: Report, run_id: str,
                     start: float | None) -> list[Target]:
    """Turn a suggestion's evidence into links: time ranges zoom the graphs, kernels open the kernel view."""
    out: list[Target] = []
    origin = start or 0.0
    windows: dict[tuple[object, object], WindowEntry] = {(w.rank, w.index): w for w in report.windows}
    for ev in suggestion.get("evidence") or []:
        kind, label, d = ev.get("kind"), ev.get("label", ""), ev.get("data") or {}
        if kind == "window":
            w = windows.get((d.get("rank"), d.get("index")))
            if w:
                pad = max((w.t_end - w.t_start) * 0.5, 1.0)
                out.append(Target(f"{label} (zoom)", "ts-section", w.t_start - origin - pad, w.t_end - origin + pad))
                out.append(Target(f"{label} (kernels)", "", href=f"/run/{run_id}/kernels?window={w.rank}:{w.index}"))
        elif kind == "time_range" and d.get("t0") is not None:
            out.append(Target(label, "ts-section", float(d["t0"]) - origin, float(d.get("t1", d["t0"])) - origin))
        elif kind == "metric":
            panel = panel_of(str(d.get("metric", "")))
            out.append(Target(label, f"panel-{panel}" if panel else "ts-section"))
        elif kind in ("phase", "steps"):
            out.append(Target(label, "steps-section"))
        elif kind == "rank":
            out.append(Target(label, "ranks-section"))
        elif kind == "kernels":
            query = ""
            if d.get("category"):
                query = "?category=" + ",".join(d["category"])
            elif d.get("names"):
                query = "?q=" + str(d["names"][0])
            elif d.get("window") is not None and report.windows:
                first = report.windows[0]
                query = f"?window={first.rank}:{first.index}"
            out.append(Target(label, "", href=f"/run/{run_id}/kernels{query}"))
        elif kind == "probe":
            out.append(Target(label, "panel-memory"))
    return out


def phase_series(view: StepView, bins: int) -> tuple[np.ndarray, dict[str, np.ndarray], dict[str, float]]:
    """Mean seconds per step in each phase over ~``bins`` time bins, and each phase's share of the range."""
    if not len(view):
        return np.zeros(0), {}, {}
    t, n = view.t, view.n.astype(np.float64)
    if t.size > bins:
        edges = np.linspace(t[0], t[-1] + 1e-9, bins + 1)
        idx = np.clip(np.searchsorted(edges, t, side="right") - 1, 0, bins - 1)
        starts = np.flatnonzero(np.r_[True, idx[1:] != idx[:-1]])
        counts = np.add.reduceat(n, starts)
        tt = np.add.reduceat(t * n, starts) / counts
        phases = {p: np.add.reduceat(view.phases[p] * n, starts) / counts for p in PHASE_COLUMNS}
    else:
        tt, phases = t, {p: view.phases[p] for p in PHASE_COLUMNS}
    total_n = n.sum()
    means = {p: float((view.phases[p] * n).sum() / total_n) for p in PHASE_COLUMNS}
    whole = sum(means.values()) or 1.0
    return tt, phases, {p: v / whole for p, v in means.items()}


def steady_phase_shares(report: Report | None) -> dict[str, float]:
    """Each phase's share of the steady steps, from the report: the figure the advice and report use."""
    if report is None:
        return {}
    return {p: v.share for p, v in report.step_time.phases.items() if v.share is not None}


def rank_means(views: list[StepView]) -> list[dict[str, Any]]:
    """Per rank: mean step time and mean seconds per phase (weighted by steps)."""
    out = []
    for v in views:
        if not len(v):
            continue
        n = v.n.astype(np.float64)
        total = n.sum()
        out.append({"rank": v.rank, "steps": int(total), "step_s": float((v.dur * n).sum() / total),
                    "phases": {p: float((v.phases[p] * n).sum() / total) for p in PHASE_COLUMNS}})
    return out
