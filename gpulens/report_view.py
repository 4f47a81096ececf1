"""Terminal rendering of a run summary (``gpulens report``) with rich."""
from __future__ import annotations

import datetime as dt
import os
import sys
from typing import Any

from msgspec import UNSET
from rich import box
from rich.console import Console, Group
from rich.padding import Padding
from rich.table import Table
from rich.text import Text

from gpulens import fmt
from gpulens.profiler.analysis.kernel_view import steps_in_windows
from gpulens.profiler.analysis.report import (
    CompileWork,
    Energy,
    MetricStats,
    NodeEntry,
    Report,
    StepTime,
    WhatIf,
    read_section,
)
from gpulens.profiler.analysis.summary import PHASES, metric_label
from gpulens.profiler.store.writer import describe_lost
from gpulens.tables import NODE_COLUMNS, comparison_value, node_rows

_STATUS_STYLE = {"finished": "green", "running": "cyan", "crashed": "red", "interrupted": "yellow"}
_GPU_ORDER = ("gpu.util", "gpm.sm_active", "gpm.sm_occupancy", "gpm.tensor_active", "gpm.dram_bw",
              "gpu.mem_util", "gpu.mem_used", "gpu.proc_mem", "gpu.power", "gpu.temp", "gpu.sm_clock",
              "gpu.mem_clock", "gpu.pcie_rx", "gpu.pcie_tx", "gpu.nvlink_rx", "gpu.nvlink_tx")
_HOST_ORDER = ("host.cpu", "proc.cpu", "workers.cpu", "workers.count", "children.cpu", "children.count",
               "proc.rss", "workers.rss", "children.rss",
               "host.mem_used", "host.swap_used", "host.disk_read", "host.disk_write")


def compile_line(comp: CompileWork) -> str:
    """torch.compile's one-off work, named (it is in no phase and no figure)."""
    steps = ", ".join(str(k) for k in comp.first_steps) + (", …" if comp.steps > len(comp.first_steps) else "")
    return (f"torch.compile compiled for {fmt.seconds(comp.seconds)} in {comp.steps} "
            f"step{'s' if comp.steps != 1 else ''} (step {steps}): one-off work, left out of the phases")


def _when(t: float | None) -> str:
    if t is None:
        return "n/a"
    return dt.datetime.fromtimestamp(t).strftime("%Y-%m-%d %H:%M:%S")


def _bar(share: float | None, width: int = 24) -> str:
    if not fmt.is_num(share):
        return ""
    n = int(round(max(0.0, min(1.0, float(share))) * width))  # type: ignore[arg-type]
    return "█" * n + "·" * (width - n)


def terminal(piped_width: int | None = None) -> Console:
    """A console that prints text as text: no rich markup or emoji codes read out of run or kernel names.

    ``piped_width``: the width when the output is not a terminal and ``COLUMNS`` says none (a CI log is a
    pipe, where rich would assume 80 columns and cut a wide table)."""
    if piped_width is not None and not sys.stdout.isatty() and not os.environ.get("COLUMNS"):
        return Console(markup=False, emoji=False, width=piped_width)
    return Console(markup=False, emoji=False)


def sanitized(value: Any) -> Any:
    """``value`` with every string made safe for a terminal (:func:`gpulens.fmt.safe_text`).

    Names come from files and traces -- a run name, a host, a kernel -- and
    may hold escape sequences or bytes that are not UTF-8.
    """
    if isinstance(value, str):
        return fmt.safe_text(value)
    if isinstance(value, dict):
        return {sanitized(k): sanitized(v) for k, v in value.items()}
    if isinstance(value, list):
        return [sanitized(v) for v in value]
    if isinstance(value, tuple):
        return tuple(sanitized(v) for v in value)
    return value


def render(report: Report, console: Console | None = None) -> None:
    console = console or terminal()
    safe = read_section(sanitized(report.as_dict()), Report)  # every name from the run made safe to print
    console.print(Group(*_blocks(safe, console.width)))


def _blocks(s: Report, width: int = 120) -> list[Any]:
    run = s.run
    out: list[Any] = []
    status = s.status
    title = Text.assemble(("gpulens report", "bold"), "  ", (run.name, "bold cyan"), "  ",
                          (status, f"bold {_STATUS_STYLE.get(status, 'white')}"))
    if run.replay:
        title.append("  (replay)", style="magenta")
    out.append(title)

    head = Table.grid(padding=(0, 2))
    head.add_column(style="dim")
    head.add_column()
    head.add_row("run", f"{run.id}  ({run.path})")
    if s.status_reason:
        head.add_row("status", f"{status}: {s.status_reason}")
    host = s.host.info
    if run.imported_from:
        head.add_row("imported", f"from {run.imported_from} (trace only: no NVML or host samples)")
    else:
        memory_total = host.get("memory_total")
        host_line = f"{run.host or 'n/a'} · {host.get('cpu_count', '?')} CPUs · " \
                    f"{fmt.bytes_(memory_total if isinstance(memory_total, (int, float)) else None)} RAM · " \
                    f"Python {host.get('python', '?')}"
        head.add_row("host", host_line + (f" · torch {run.torch_version}" if run.torch_version else ""))
    nvml = s.nvml
    if s.gpus:
        names: dict[str | None, int] = {}
        for g in s.gpus:
            names[g.name] = names.get(g.name, 0) + 1
        gpu_line = ", ".join(f"{n} × {name}" for name, n in names.items())
        gpu_line += f" · driver {nvml.driver_version or '?'} · CUDA {nvml.cuda_driver_version or '?'}"
        head.add_row("GPUs", gpu_line)
    else:
        head.add_row("GPUs", Text(f"none recorded: {nvml.reason or 'no GPU'}", style="yellow"))
    head.add_row("started", f"{_when(run.start)} · duration {fmt.seconds(s.duration_s)}")
    st = s.step_time
    tp = s.throughput
    ex = st.excluded
    steps_line = f"{s.steps} steps"
    if ex.warmup or ex.profiled or ex.what_if or ex.compiling:
        left = f"{ex.warmup} warm-up, {ex.profiled} profiled"
        left += f", {ex.compiling} compiling" if ex.compiling else ""
        left += f", {ex.what_if} what-if" if ex.what_if else ""
        steps_line += f" ({left} left out of the figures)"
    head.add_row("steps", steps_line)
    if st.compile is not None:
        head.add_row("compile", compile_line(st.compile))
    if s.what_if is not None:
        head.add_row("what-if", what_if_line(s.what_if))
    for rank, lost in s.records_lost.items():
        head.add_row("lost", Text(f"rank {rank}: {describe_lost(lost)}; the figures cover the rest",
                                  style="yellow"))
    parts = [fmt.rate(tp.steps_per_s, "steps")]
    if tp.samples_per_s is not None:
        parts.append(fmt.rate(tp.samples_per_s, "samples"))
    if tp.tokens_per_s is not None:
        parts.append(fmt.rate(tp.tokens_per_s, "tokens"))
    head.add_row("throughput", " · ".join(parts))
    if s.energy.available:
        head.add_row("energy", energy_line(s.energy))
    if s.loss is not None:
        head.add_row("loss", f"{s.loss.first:.4g} → {s.loss.last:.4g}")
    out.append(head)

    if s.suggestions is not UNSET:
        out.append(Text(""))
        out.extend(_advice_blocks(s.suggestions, full=False))
    out.append(Text(""))
    out.append(_step_table(st))
    if run.imported_from:
        out.append(Text("  phases of an imported trace: data wait from DataLoader spans, optimizer from "
                        "Optimizer.step spans; forward and backward are not separated (in other)", style="dim"))
    nodes = s.nodes
    if len(nodes) > 1:
        out.append(Text(""))
        out.append(_node_table(nodes))
    for gpu in s.gpus:
        out.append(Text(""))
        where = f"node {gpu.node_rank} · " if len(nodes) > 1 else ""
        if not gpu.metrics and not gpu.not_available:
            out.append(Text(f"{where}GPU {gpu.index} · {gpu.name}: no NVML samples "
                            f"({nvml.reason or 'none'})", style="dim"))
            continue
        out.append(_metric_table(f"{where}GPU {gpu.index} · {gpu.name} · "
                                 f"{fmt.bytes_(gpu.memory_total_bytes)}"
                                 + (f" · {gpu.energy_j / 3600:.2f} Wh" if gpu.energy_j else ""),
                                 gpu.metrics, gpu.not_available, _GPU_ORDER, width))
    if s.host.metrics or not run.imported_from:
        out.append(Text(""))
        out.append(_metric_table("Host and training process", s.host.metrics, s.host.not_available,
                                 _HOST_ORDER, width))
    out.append(Text(""))
    out.extend(_kernel_blocks(s))
    mem = s.memory
    out.append(Text(""))
    mem_table = Table(title="Memory peaks", title_justify="left", show_header=False, box=None)
    mem_table.add_column(style="dim")
    mem_table.add_column(justify="right")
    mem_table.add_row("CUDA allocated (torch)", fmt.bytes_(mem.cuda_peak_allocated_bytes)
                      if mem.cuda_peak_allocated_bytes is not None else "not available (no CUDA in this run)")
    mem_table.add_row("CUDA reserved (torch)", fmt.bytes_(mem.cuda_peak_reserved_bytes)
                      if mem.cuda_peak_reserved_bytes is not None else "not available (no CUDA in this run)")
    for idx, used in mem.gpu_memory_used_max_bytes.items():
        mem_table.add_row(f"GPU {idx} used (NVML, all processes)", fmt.bytes_(used))
    mem_table.add_row("process RSS", fmt.bytes_(mem.process_rss_max_bytes))
    mem_table.add_row("worker processes RSS", fmt.bytes_(mem.workers_rss_max_bytes))
    out.append(mem_table)
    if s.events:
        out.append(Text(""))
        ev = Table(title=f"Events ({len(s.events)})", title_justify="left", box=None)
        ev.add_column("time", style="dim")
        ev.add_column("kind")
        ev.add_column("message")
        for e in s.events[:20]:
            ev.add_row(_when(e.t)[11:], e.kind, e.message)
        out.append(ev)
    return out


def _node_table(nodes: list[NodeEntry]) -> Table:
    """One row per machine, so a slow or hot node stands out."""
    table = Table(title=f"Nodes ({len(nodes)})", title_justify="left", box=None)
    for name in NODE_COLUMNS:
        table.add_column(name, justify="left" if name in ("node", "host", "ranks") else "right")
    for row in node_rows(nodes):
        table.add_row(*row)
    return table


def energy_line(e: Energy) -> str:
    """GPU energy: whole run, per steady step, per sample or token, and by phase where readings split it."""
    parts = [f"{e.wh or 0:,.2f} Wh ({e.gpus} GPU{'s' if e.gpus != 1 else ''}, mean {e.mean_power_w:,.0f} W)"
             if e.mean_power_w else f"{e.wh or 0:,.2f} Wh"]
    if e.step_j_median is not None:
        parts.append(f"{e.step_j_median:,.1f} J/step")
    if e.per_sample_j is not None:
        parts.append(f"{e.per_sample_j:,.3g} J/sample")
    if e.per_token_j is not None:
        parts.append(f"{e.per_token_j * 1000:,.3g} mJ/token")
    split = [f"{fmt.phase(name)} {p.watts:,.0f} W" for name, p in e.phases.items() if name != "outside"]
    if split:
        parts.append("power while the host was in " + ", ".join(split))
    if e.source == "power-integration":
        parts.append("from integrated power readings (no energy counter)")
    return " · ".join(parts)


def what_if_line(w: WhatIf) -> str:
    """A measured what-if in one line: what ran, and what it measured against the run's steady steps."""
    label = (f"batch size {w.batch_size}" if w.kind == "batch-size" else
             f"{w.num_workers} DataLoader workers (the run has {w.base_workers})" if w.kind == "num-workers" else
             "bf16 autocast (the model's forward)" if w.kind == "autocast" else
             "channels-last (the model and its image inputs)" if w.kind == "channels-last" else
             f"the {w.implementation} optimizer implementation" if w.kind == "optimizer" else
             "synthetic data (replayed batches)")
    if w.status not in ("done", "cut short"):
        return f"{label}: {w.status}" + (f" ({w.reason})" if w.reason else "")
    if w.step_time_change is None:
        return f"{label}: no steps measured"
    what = ("compute (no data wait)" if w.kind == "batch-size" else
            f"step ({w.measure.split(', ')[1]})" if w.measure and ", " in w.measure else "step")
    steps = f"steps {w.first_step}-{w.last_step}"
    if w.measured_from_step is not None and w.measured_from_step != w.first_step:
        steps += f" (measured from {w.measured_from_step}: the workers start first)"
    line = (f"{label}, {steps}: {what} {fmt.seconds(w.step_time_median_s)} vs "
            f"{fmt.seconds(w.baseline_step_time_median_s)} ({w.step_time_change:+.1%}")
    ci = w.step_time_change_ci
    line += f", 95% CI {ci[0]:+.1%} to {ci[1]:+.1%})" if ci else ")"
    if w.kind == "batch-size" and w.samples_per_s_change is not None:
        line += (f"; {fmt.rate(w.samples_per_s, 'samples')} vs {fmt.rate(w.baseline_samples_per_s, 'samples')}"
                 f" ({w.samples_per_s_change:+.1%})")
    if w.status == "cut short":
        line += " (cut short)"
    return line


def _step_table(st: StepTime) -> Table:
    title = "Step time"
    if st.count:
        title += (f" (steady steps: {st.count} · mean {fmt.seconds(st.mean_s)} · "
                  f"median {fmt.seconds(st.median_s)} · p90 {fmt.seconds(st.p90_s)} · "
                  f"p99 {fmt.seconds(st.p99_s)})")
    table = Table(title=title, title_justify="left")
    table.add_column("phase (host)")
    table.add_column("mean", justify="right")
    table.add_column("share", justify="right")
    table.add_column("", no_wrap=True)
    gpu = st.gpu_phases if st.gpu_phases is not UNSET else None
    if gpu is not None:
        table.add_column("GPU stream share", justify="right")
    if not st.count:
        table.add_row("no steps recorded", "", "", "")
        return table
    for name in PHASES:
        ph = st.phases[name]
        row = [fmt.phase(name), fmt.seconds(ph.mean_s), fmt.share(ph.share), _bar(ph.share)]
        if gpu is not None:
            row.append(fmt.share(getattr(gpu, name).share))
        table.add_row(*row)
    for name, ph in (st.custom_phases if st.custom_phases is not UNSET else {}).items():
        row = [f"  {name} (in other)", fmt.seconds(ph.mean_s), fmt.share(ph.share), ""]
        if gpu is not None:
            row.append("")
        table.add_row(*row, style="dim")
    if st.comm is not UNSET:
        row = ["  all-reduce (overlaps)", fmt.seconds(st.comm.mean_s), fmt.share(st.comm.share), ""]
        if gpu is not None:
            row.append("")
        table.add_row(*row, style="dim")
    return table


#: Statistics of a metric table, dropped from the right of this list when the terminal is too narrow.
_STATS = ("mean", "p50", "p90", "p99", "max")
_DROP_ORDER = ("p99", "p50", "p90")


def _metric_table(title: str, metrics: dict[str, MetricStats], missing: dict[str, str], order: tuple[str, ...],
                  width: int = 120) -> Any:
    names = [m for m in order if m in metrics] + sorted(m for m in metrics if m not in order)
    notes: list[Text] = []
    rows: list[tuple[str, dict[str, str]]] = []
    for name in names:
        m = metrics[name]
        if name == "gpu.energy":
            continue  # shown as energy used in the title
        if m.change is not UNSET:  # cumulative counter: what happened during the run matters
            notes.append(Text(f"  {metric_label(name)}: +{fmt.value(m.change, m.unit)} during the run"))
            continue
        if name == "gpu.throttle":
            reasons = ", ".join(f"{r} {share * 100:.0f}% of samples"
                                for r, share in (m.reasons if m.reasons is not UNSET else {}).items()
                                if r != "gpu_idle")
            notes.append(Text(f"  clocks held back by: {reasons}" if reasons
                              else "  clocks held back by: nothing (no power or thermal throttling)"))
            continue
        rows.append((metric_label(name), {k: fmt.value(getattr(m, k), m.unit) for k in _STATS}))
    stats = _fitting_stats(rows, width)
    table = Table(title=title, title_justify="left")
    table.add_column("metric", no_wrap=True)
    for col in stats:
        table.add_column(col, justify="right", no_wrap=True)
    for label, values in rows:
        table.add_row(label, *(values[k] for k in stats))
    shown = len(rows)
    if not shown:
        table.add_row(Text("nothing recorded", style="dim"), *("" for _ in stats))
    by_reason: dict[str, list[str]] = {}
    for name, reason in sorted(missing.items()):
        by_reason.setdefault(reason, []).append(metric_label(name))
    notes += [Text(f"  not available: {', '.join(labels)} ({reason})", style="dim yellow")
              for reason, labels in by_reason.items()]
    return Group(table, *notes) if notes else table


def _fitting_stats(rows: list[tuple[str, dict[str, str]]], width: int) -> list[str]:
    """The statistics whose columns fit ``width`` without cutting a label or a value short."""
    label_w = max([len("metric"), *(len(label) for label, _ in rows)])
    value_w = {k: max([len(k), *(len(v[k]) for _, v in rows)]) for k in _STATS}
    stats = list(_STATS)
    for drop in (None, *_DROP_ORDER):
        if drop is not None:
            stats.remove(drop)
        if label_w + sum(value_w[k] for k in stats) + 3 * (len(stats) + 1) + 1 <= width:
            break
    return stats


def _kernel_blocks(s: Report) -> list[Any]:
    ta = s.trace_analysis
    windows = s.windows
    out: list[Any] = []
    head = f"Kernel view ({len(windows)} profiler window{'s' if len(windows) != 1 else ''}"
    n_steps = steps_in_windows(windows)
    head += f", {n_steps} profiled steps)" if windows else ")"
    out.append(Text(head, style="bold"))
    if not ta.available or not ta.has_gpu:
        out.append(Text(f"  {ta.reason}", style="yellow"))
    for err in s.window_errors[:3]:
        out.append(Text(f"  window {err.window} (rank {err.rank}) unreadable: {err.error}", style="red"))
    asked = [w for w in windows if w.trigger]
    if asked:
        out.append(Text("  " + "; ".join(f"window {w.index} (rank {w.rank}, steps {w.first_step}-{w.last_step}): "
                                         f"{w.trigger}" for w in asked[:4])
                        + (f"; {len(asked) - 4} more" if len(asked) > 4 else "")))
    mfu = s.mfu
    if mfu.available:
        by_dtype = ", ".join(f"{k} {v / 1e9:.3g}" for k, v in mfu.by_dtype.items())
        line = f"  FLOPs per step {(mfu.flops_per_step or 0) / 1e9:.3g} GFLOP ({by_dtype}; {mfu.source})"
        out.append(Text(line))
        ach = mfu.achieved_tflops
        ach_s = f"{ach:.3g} TFLOP/s achieved" if ach is not None else "achieved n/a"
        if mfu.mfu_pct is not None and mfu.peak is not None:
            out.append(Text(f"  {ach_s} · MFU {mfu.mfu_pct:.1f}% of {mfu.peak.gpu} dense peak"))
        else:
            out.append(Text(f"  {ach_s} · MFU not available: {mfu.reason}", style="dim"))
    else:
        out.append(Text(f"  MFU not available: {mfu.reason}", style="dim"))
    if s.gpu_summary:
        t = Table(title="GPU summary (TensorBoard-plugin definitions, profiled steps)", title_justify="left")
        for col in ("rank", "device", "GPU utilization", "est. SM efficiency", "est. occupancy", "tensor cores"):
            t.add_column(col, justify="right")
        for g in s.gpu_summary:
            t.add_row(str(g.rank), str(g.device), fmt.percent(g.gpu_utilization_pct),
                      fmt.percent(g.sm_efficiency_pct), fmt.percent(g.achieved_occupancy_pct),
                      fmt.percent(g.tensor_core_pct))
        out.append(t)
    sb = s.step_breakdown_us
    if sb.get("Total"):
        t = Table(title=f"Profiled step breakdown (mean step {fmt.us(sb['Total'])})", title_justify="left")
        t.add_column("category")
        t.add_column("time", justify="right")
        t.add_column("share", justify="right")
        t.add_column("", no_wrap=True)
        for k, v in sb.items():
            if k == "Total" or v <= 0:
                continue
            t.add_row(k, fmt.us(v), fmt.share(v / sb["Total"]), _bar(v / sb["Total"]))
        out.append(t)
    if s.temporal_breakdown:
        t = Table(title="Temporal breakdown (HTA definitions)", title_justify="left")
        for col in ("rank", "idle", "compute", "non-compute", "GPU span"):
            t.add_column(col, justify="right")
        for r in s.temporal_breakdown:
            t.add_row(str(r.rank), fmt.percent(r.idle_pct), fmt.percent(r.compute_pct),
                      fmt.percent(r.non_compute_pct), fmt.us(r.span_us))
        out.append(t)
    if s.kernels:
        tc = s.tensor_core_share
        elig = s.tc_eligible_share
        title = f"Top kernels ({len(s.kernels)} in all · tensor cores {fmt.share(tc)} of kernel time"
        title += f" · {fmt.share(elig)} launched by tensor-core-eligible ops)" if elig is not None else ")"
        t = Table(title=title, title_justify="left")
        t.add_column("kernel", no_wrap=True, max_width=46)
        t.add_column("category", no_wrap=True)
        for col in ("TC", "calls", "total", "mean", "share"):
            t.add_column(col, justify="right", no_wrap=True)
        for kr in s.kernels[:12]:
            t.add_row(fmt.short_name(kr.name, 46), kr.category, "yes" if kr.tensor_core else "-",
                      str(kr.calls), fmt.us(kr.total_us), fmt.us(kr.mean_us), fmt.share(kr.share))
        out.append(t)
        cats = s.categories_us
        total = sum(cats.values()) or 1.0
        out.append(Text("  by category: " + ", ".join(f"{c} {100 * v / total:.0f}%" for c, v in cats.items()
                                                       if v / total >= 0.005)))
    launch = s.launch
    if launch is not None:
        kps = launch.kernels_per_step
        out.append(Text(
            f"  launches: {kps:.0f} kernels/step · median kernel {fmt.us(launch.median_kernel_us)} · "
            f"{fmt.share(launch.short_kernel_share)} shorter than 10 µs · "
            f"{fmt.share(launch.shorter_than_launch_share)} shorter than their launch call · "
            f"{launch.launch_delay_outliers} launch delays > 100 µs" if kps is not None else
            f"  launches: {launch.kernels} kernels · median kernel {fmt.us(launch.median_kernel_us)}"))
    traced = s.phase_gpu_busy
    if traced is not None and traced.reason:
        out.append(Text(f"  GPU busy by host phase: not known ({traced.reason})"))
    elif traced is not None and traced.phases:
        out.append(Text("  GPU busy while the host was in each phase (trace ranges): " + ", ".join(
            f"{fmt.phase(name)} {fmt.share(row.gpu_busy_share, 0)} of {fmt.us(row.host_us)}"
            for name, row in traced.phases.items() if row.gpu_busy_share is not None)))
    if s.sync:
        top = list(s.sync.items())[:4]
        out.append(Text("  synchronisation: " + ", ".join(f"{n} ×{r.calls} ({fmt.us(r.total_us)})"
                                                          for n, r in top)))
    if s.memcpy:
        out.append(Text("  memcpy: " + ", ".join(
            f"{m.direction} {fmt.bytes_(m.bytes)} in {m.count} copies" for m in s.memcpy[:4])))
    if s.top_cpu_ops:
        out.append(Text("  top CPU ops (self time): " + ", ".join(
            f"{o.name} {fmt.us(o.self_us)}" for o in s.top_cpu_ops[:5])))
    return out


_SEVERITY_STYLE = {"high": "bold red", "medium": "yellow", "low": "dim"}


def _indented(text: Text, left: int) -> Padding:
    """``text`` wrapped at the terminal's width, every line ``left`` columns in."""
    return Padding(text, (0, 0, 0, left))


def _numbered(number: str, text: Text) -> Table:
    """``number`` then ``text``, whose wrapped lines continue under the text, not under the number."""
    table = Table.grid()
    table.add_column(width=len(number), no_wrap=True)
    table.add_column()
    table.add_row(number, text)
    return table


def render_advice(advice: dict[str, Any], full: bool = True, console: Console | None = None) -> None:
    (console or terminal()).print(Group(*_advice_blocks(sanitized(advice), full)))


def _advice_blocks(advice: dict[str, Any], full: bool) -> list[Any]:
    """Suggestions, most important first; ``full`` adds actions, snippets and how gains were estimated."""
    out: list[Any] = []
    items = advice["suggestions"]
    out.append(Text(f"Suggestions ({len(items)})", style="bold"))
    if advice.get("waiting"):
        out.append(Text(f"  {advice['waiting']}", style="dim"))
    elif not items:
        out.append(Text("  nothing in this run calls for a change", style="green"))
    number = {s["id"]: i for i, s in enumerate(items, 1)}
    for i, s in enumerate(items, 1):
        gain = s["expected_gain"]
        shared = [f"#{number[o]}" for o in s.get("overlaps") or [] if o in number]
        if shared and s.get("expected_gain_fraction"):
            gain += f" (overlaps {', '.join(shared)})"
        line = Text.assemble((f"[{s['severity']}] ", _SEVERITY_STYLE[s["severity"]]), (s["title"], "bold"),
                             f" — {gain}")
        out.append(_numbered(f"{i:>2}. ", line))
        out.append(_indented(Text(s["finding"], style="dim" if not full else ""), 5))
        if full:
            out.append(_indented(Text(f"do: {s['action']}"), 5))
            if s.get("snippet"):
                out.append(_indented(Text(s["snippet"], style="cyan"), 7))
            if s.get("change"):
                out.append(_indented(Text(f"change: {fmt.change(s['change'])}"), 5))
            if s.get("prediction"):
                out.append(_indented(Text(f"predicted: {fmt.prediction(s['prediction'])}"), 5))
            out.append(_indented(Text(f"gain: {s['gain_estimate']} · confidence {s['confidence']} · id {s['id']}",
                                      style="dim"), 5))
    combined = advice.get("combined_gain_fraction")
    if len(items) > 1 and combined:
        out.append(Text(f"  together: up to {fmt.share(combined, 0)} shorter steps (suggestions that reclaim the "
                        "same time counted once)", style="dim"))
    if full and advice.get("not_evaluated"):
        out.append(Text("Not evaluated (missing measurements):", style="bold"))
        for n in advice["not_evaluated"]:
            out.append(Text(f"  {n['id']}: {n['needs']}", style="dim"))
    elif not full and items:
        out.append(Text("  gpulens advise RUN: actions, code and how each gain was estimated", style="dim"))
    return out


_VERDICT_STYLE = {"better": "green", "worse": "bold red", "changed": "yellow", "same": "dim", "in noise": "dim",
                  "n/a": "dim"}


def render_comparison(comparison: Any, results: list[Any], console: Console | None = None) -> None:
    """``gpulens compare``: the figures side by side, each change with its interval and verdict, then the gate."""
    from gpulens.profiler.analysis.compare import change_text, interval_text, unfinished_sides

    console = console or terminal(piped_width=120)
    base, cand = comparison.base, comparison.candidate
    table = Table(title=Text(f"{sanitized(cand['id'])} vs {sanitized(base['id'])} (base) · steady steps "
                             f"{cand['steps']} vs {base['steps']}"), title_justify="left", box=box.SIMPLE_HEAD,
                  pad_edge=False)
    for col, justify, width in (("figure", "left", 13), ("base", "right", 9), ("candidate", "right", 9),
                                ("change", "right", 8), ("95% CI", "right", 14), ("verdict", "left", 13)):
        # the figure's name wraps in a narrow terminal; the numbers and the verdict never do (nor are cut)
        table.add_column(col, justify=justify, no_wrap=col != "figure", min_width=width)  # type: ignore[arg-type]
    notes = []
    for m in comparison.metrics:
        verdict = Text(m.verdict, style=_VERDICT_STYLE.get(m.verdict, ""))
        if m.note:
            notes.append(m.note)
            verdict.append(f" [{len(notes)}]", style="dim")
        table.add_row(m.label, comparison_value(m, m.base), comparison_value(m, m.candidate),
                      change_text(m, with_interval=False), interval_text(m), verdict)
    console.print(table)
    for i, note in enumerate(notes, 1):
        console.print(Text(f"[{i}] {sanitized(note)}", style="dim"))
    for f in comparison.fixes:
        predicted, got_text, held_word = fmt.fix_texts(f.predicted, f.low, f.high, f.measure, f.got, f.got_low,
                                                       f.got_high, f.inside)
        held = "" if f.inside is None else f" — {held_word} the predicted interval"
        console.print(Text.assemble(
            ("fix ", "bold"), f"{sanitized(f.suggestion)} ({sanitized(fmt.change(f.applied))} applied): predicted "
            f"{predicted}, {got_text if f.got is None else 'got ' + got_text}{held}"))
    for line in unfinished_sides(comparison):  # a crashed run's few steps can look fast: say it, always
        console.print(Text(f"warning: {sanitized(line)}: its figures cover only the steps it recorded "
                           "(--fail-on status makes this fail the gate)", style="bold yellow"))
    for r in results:
        mark = Text("FAIL ", style="bold red") if r.failed else Text("ok   ", style="green")
        console.print(Text.assemble(mark, sanitized(r.message)))
    if results:
        failed = sum(r.failed for r in results)
        console.print(Text(f"gate: {failed} of {len(results)} rule(s) broken" if failed else "gate: passed",
                           style="bold red" if failed else "bold green"))
