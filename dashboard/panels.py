"""What the run view's time-series figure shows, read through the profiler reader.

A panel is one y axis: a quantity with one unit (GPU busy %, memory GiB,
power W ...), holding one line per GPU (or per host metric).  This module
turns a run and a time range into plain arrays per panel (:class:`PanelData`),
downsampled to the figure's pixel width; :mod:`figures` turns those into a
Plotly figure.  Keeping the two apart lets tests check the numbers without a
browser and the figure code without a run.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from gpulens import fmt
from gpulens.dashboard.downsample import for_plot, steps_for_plot
from gpulens.profiler import RunReader
from gpulens.profiler.store.metrics import CATALOG
from gpulens.profiler.store.reader import SeriesInfo


@dataclass(frozen=True)
class Line:
    metric: str
    label: str  # short, shown after the GPU name in hovers
    dash: str = "solid"


@dataclass(frozen=True)
class PanelSpec:
    key: str
    title: str  # y axis title, with the unit
    unit: str
    lines: tuple[Line, ...]
    scale: float = 1.0  # stored value / scale = plotted value
    percent: bool = False  # fixed 0-100 axis
    host: bool = False  # host/process metrics (one line each), not per GPU


GIB = float(2**30)
MIB = float(2**20)

PANELS: tuple[PanelSpec, ...] = (
    PanelSpec("util", "Utilization (%)", "%", (Line("gpu.util", "busy (NVML)"),
                                              Line("gpm.sm_active", "SM active (GPM)", "dot")), percent=True),
    PanelSpec("tensor", "Tensor cores (%)", "%", (Line("gpm.tensor_active", "tensor active (GPM)"),), percent=True),
    PanelSpec("dram", "DRAM bandwidth (%)", "%", (Line("gpm.dram_bw", "DRAM BW (GPM)"),), percent=True),
    PanelSpec("memory", "GPU memory (GiB)", "GiB", (Line("gpu.mem_used", "memory used"),
                                                    Line("gpu.proc_mem", "this run", "dot")), scale=GIB),
    PanelSpec("power", "Power (W)", "W", (Line("gpu.power", "power"),
                                          Line("gpu.power_limit", "power limit", "dash"))),
    PanelSpec("clock", "SM clock (MHz)", "MHz", (Line("gpu.sm_clock", "SM clock"),)),
    PanelSpec("temp", "Temperature (°C)", "°C", (Line("gpu.temp", "temperature"),)),
    PanelSpec("pcie", "PCIe (MiB/s)", "MiB/s", (Line("gpu.pcie_rx", "PCIe RX"), Line("gpu.pcie_tx", "PCIe TX", "dot")),
              scale=MIB),
    PanelSpec("host_cpu", "Host CPU (%)", "%", (Line("host.cpu", "host CPU (all cores)"),), percent=True, host=True),
    PanelSpec("proc_cpu", "Process CPU (cores)", "cores", (Line("proc.cpu", "training process"),
                                                           Line("workers.cpu", "DataLoader workers", "dot"),
                                                           Line("children.cpu", "other children (compile, "
                                                                "subprocesses)", "dash")),
              host=True),
    PanelSpec("disk", "Disk (MiB/s)", "MiB/s", (Line("host.disk_read", "disk read"),
                                                Line("host.disk_write", "disk write", "dot")), scale=MIB, host=True),
)

#: Metrics that have no line of their own but whose evidence is best seen on a panel.
EVIDENCE_PANEL = {"gpu.throttle": "clock", "gpu.mem_clock": "clock", "proc.rss": "memory", "workers.count": "proc_cpu"}


def panel_of(metric: str) -> str | None:
    """The panel key showing ``metric`` (advisor evidence links scroll there)."""
    for spec in PANELS:
        if any(line.metric == metric for line in spec.lines):
            return spec.key
    return EVIDENCE_PANEL.get(metric)
STEP_PANEL = PanelSpec("step", "Step time (ms)", "ms", (Line("step", "step time"),), scale=1e-3)
LOSS_PANEL = PanelSpec("loss", "Loss (as passed to run.step)", "", (Line("loss", "loss"),))


@dataclass(frozen=True)
class Mark:
    """A stretch of the run marked on the time axis: a profiler window, the FLOP-counted step, a what-if."""

    kind: str  # "window" | "flops" | "what_if"
    t0: float  # seconds since the run start
    t1: float
    label: str


@dataclass
class Trace:
    name: str  # legend/hover name, e.g. "GPU 0 busy (NVML)"
    group: str  # legend group: one per GPU, "host", or "rank N"
    color_index: int  # index into the GPU palette; -1 = host colours
    dash: str
    x: np.ndarray  # float32 seconds since the run start
    y: np.ndarray  # float32, plotted unit
    metric: str  # "step" for the step-time lines
    gpu: int = -1
    rank: int = 0


@dataclass
class PanelData:
    spec: PanelSpec
    traces: list[Trace] = field(default_factory=list)


@dataclass
class Timeseries:
    """Everything the time-series figure needs; x is seconds since ``origin`` (the run start)."""

    origin: float
    t0: float  # shown range, seconds since origin
    t1: float
    panels: list[PanelData]
    unavailable: list[str]  # "Tensor cores: not available on this GPU (reason)"
    level: str  # "raw" or "10 s buckets" etc.: how the visible data was read
    marks: list[Mark] = field(default_factory=list)


def gpu_sources(series: list[SeriesInfo]) -> list[tuple[int, int]]:
    """(rank, gpu) of every GPU that was sampled, in a stable order; its position picks its colour."""
    return sorted({(s.rank, s.gpu) for s in series if s.gpu >= 0}, key=lambda rg: (rg[0], rg[1]))


def gpu_label(rank: int, gpu: int, many_ranks: bool) -> str:
    return f"r{rank} GPU {gpu}" if many_ranks else f"GPU {gpu}"


def unavailable(series: list[SeriesInfo], panels: tuple[PanelSpec, ...] = PANELS) -> list[str]:
    """One line per panel metric that a GPU could not provide, with the reason NVML gave."""
    wanted = {line.metric: (p, line) for p in panels for line in p.lines}
    seen: dict[tuple[str, str], list[int]] = {}
    for s in series:
        if s.metric in wanted and s.status != "ok":
            reason = s.reason or s.status
            seen.setdefault((s.metric, reason), []).append(s.gpu)
    out = []
    for (metric, reason), gpus in sorted(seen.items()):
        label = CATALOG[metric].label if metric in CATALOG else metric
        where = "this GPU" if len(gpus) == 1 else f"GPUs {', '.join(str(g) for g in sorted(gpus))}"
        out.append(f"{label}: not available on {where} ({reason})")
    return out


#: Points one figure may carry in all (~10.7 bytes each as base64 float32 x and y): ~640 KB.
POINT_BUDGET = 60_000
#: Fewer points per line than this would be visibly coarse, whatever the budget says.
MIN_POINTS_PER_LINE = 300


def points_per_line(width: int, lines: int) -> int:
    """About one point per pixel, shared out when many lines (8 GPUs x 12 metrics) would exceed the budget."""
    plot_px = max(int(width) - 100, 200)  # the axis titles and margins take ~100 px
    return max(MIN_POINTS_PER_LINE, min(plot_px, POINT_BUDGET // max(lines, 1)))


def timeseries(run: RunReader, t0: float | None = None, t1: float | None = None, width: int = 1200,
               panels: tuple[PanelSpec, ...] = PANELS, steps: bool = True) -> Timeseries:
    """Read every panel's lines over [t0, t1] (seconds since the run start; None = whole run).

    ``width`` is the browser's width in pixels: each line gets up to one point
    per pixel (:func:`points_per_line`), from rollup buckets over long ranges
    and raw points in a zoom.
    """
    origin = float(run.info.start or 0.0)
    a = None if t0 is None else origin + float(t0)
    b = None if t1 is None else origin + float(t1)
    series = run.series_list()
    ok = {(s.metric, s.gpu, s.rank) for s in series if s.status == "ok" and s.count > 0}
    sources = gpu_sources(series)
    many = len({r for r, _ in sources}) > 1
    wanted = {line.metric for spec in panels for line in spec.lines}
    n_lines = sum(1 for m, _, _ in ok if m in wanted) + (len(run.ranks) if steps else 0)
    width = points_per_line(width, n_lines)
    levels: set[str] = set()
    out: list[PanelData] = []
    for spec in panels:
        pd = PanelData(spec)
        if spec.host:
            host_rank = min((s.rank for s in series if s.gpu < 0 and s.status == "ok"), default=None)
            for i, line in enumerate(spec.lines):
                if host_rank is None or (line.metric, -1, host_rank) not in ok:
                    continue
                view = run.series_view(line.metric, -1, a, b, width, rank=host_rank)
                if view is None or not len(view):
                    continue
                levels.add(_level(view.kind, view.level))
                x, y = for_plot(view.t, view.v, width, vmin=view.vmin, vmax=view.vmax, bucket=view.level,
                                origin=origin)
                pd.traces.append(Trace(line.label, "host", -1 - i, line.dash, x, (y / spec.scale).astype(np.float32),
                                       line.metric, -1, host_rank))
        else:
            for ci, (rank, gpu) in enumerate(sources):
                name = gpu_label(rank, gpu, many)
                for line in spec.lines:
                    if (line.metric, gpu, rank) not in ok:
                        continue
                    view = run.series_view(line.metric, gpu, a, b, width, rank=rank)
                    if view is None or not len(view):
                        continue
                    levels.add(_level(view.kind, view.level))
                    x, y = for_plot(view.t, view.v, width, vmin=view.vmin, vmax=view.vmax, bucket=view.level,
                                    origin=origin)
                    pd.traces.append(Trace(f"{name} {line.label}", name, ci, line.dash, x,
                                           (y / spec.scale).astype(np.float32), line.metric, gpu, rank))
        if pd.traces:
            out.append(pd)
    if steps:
        sp = step_panel(run, a, b, width, origin, levels)
        if sp.traces:
            out.append(sp)
        lp = loss_panel(run, a, b, width, origin)
        if lp.traces:
            out.append(lp)
    end = (run.info.end or origin) - origin
    return Timeseries(origin, 0.0 if t0 is None else float(t0), end if t1 is None else float(t1), out,
                      unavailable(series, panels), ", ".join(sorted(levels)) or "no samples",
                      marks(run, origin) if steps else [])


def loss_panel(run: RunReader, a: float | None, b: float | None, width: int, origin: float) -> PanelData:
    """The loss each rank passed to ``run.step(loss=...)`` (the primary rank's only: ranks share a loss)."""
    pd = PanelData(LOSS_PANEL)
    if not run.ranks:
        return pd
    rank = run.primary_rank
    t, loss = run.loss_view(rank, a, b, width)
    if t.size:
        pd.traces.append(Trace("loss", "loss", -2, "solid", (t - origin).astype(np.float32),
                               loss.astype(np.float32), "loss", -1, rank))
    return pd


def marks(run: RunReader, origin: float) -> list[Mark]:
    """Profiler windows and FLOP-counted steps, so a user sees where the kernel view's figures come from."""
    out = [Mark("window", w.t_start - origin, w.t_end - origin,
                f"profiler window {w.index}" + (f" (rank {w.rank})" if len(run.ranks) > 1 else "")
                + (f", {w.trigger}" if w.trigger else ""))
           for w in run.windows() if w.status != "failed"]
    for f in run.flops():
        span = run.step_span(f.step, f.rank)
        if span is not None:
            out.append(Mark("flops", span[0] - origin, span[1] - origin, f"FLOPs counted (step {f.step})"))
    what_if = run.info.meta.get("what_if")
    if isinstance(what_if, dict) and what_if.get("status") in ("done", "cut short"):
        first = run.step_span(int(what_if.get("first_step") or 0))
        last = run.step_span(int(what_if.get("last_step") or 0))
        if first is not None and last is not None:
            label = "what-if: " + fmt.what_if(what_if.get("kind"), what_if.get("batch_size"),
                                              what_if.get("num_workers"), what_if.get("implementation"))
            out.append(Mark("what_if", first[0] - origin, last[1] - origin, label))
    return out


def step_panel(run: RunReader, a: float | None, b: float | None, width: int, origin: float,
               levels: set[str] | None = None) -> PanelData:
    """Step time per rank: every step in a zoom, the min/max envelope of rollup buckets otherwise."""
    pd = PanelData(STEP_PANEL)
    many = len(run.ranks) > 1
    for ci, rank in enumerate(run.ranks):
        view = run.step_view(rank, a, b, width)
        if not len(view):
            continue
        if levels is not None:
            levels.add(_level(view.kind, view.level))
        if view.kind == "buckets":
            x, y = for_plot(view.t, view.dur, width, vmin=view.dur_min, vmax=view.dur_max,
                            bucket=float(view.level or 1), origin=origin)
        else:
            x, y = steps_for_plot(view.t, view.dur, width, origin=origin)
        name = f"rank {rank} step time" if many else "step time"
        pd.traces.append(Trace(name, f"rank {rank}" if many else "steps", ci if many else -3, "solid", x,
                               (y / STEP_PANEL.scale).astype(np.float32), "step", -1, rank))
    return pd


def _level(kind: str, level: int | None) -> str:
    return "raw samples" if kind == "raw" else f"{level} s buckets"
