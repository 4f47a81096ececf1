"""The kernel view of a run: per profiler window (or all combined), kernels, categories, launches, copies."""
from __future__ import annotations

from typing import Any
from urllib.parse import quote

import dash_ag_grid as dag
from dash import Input, Output, callback, dcc, html

from gpulens import fmt
from gpulens.dashboard import components as ui
from gpulens.dashboard import data, figures
from gpulens.dashboard import theme as th
from gpulens.dashboard.components import GRID_THEME
from gpulens.dashboard.pages import register
from gpulens.profiler import GpulensError
from gpulens.profiler.analysis.kernel_view import KernelView, combine
from gpulens.profiler.analysis.report import WindowError
from gpulens.profiler.analysis.trace.result import KernelStat, PhaseGpuBusy
from gpulens.profiler.store.reader import Window

ALL_WINDOWS = "all"
CATEGORIES = tuple(th.CATEGORY_COLORS)

KERNEL_COLUMNS = [
    {"field": "name", "headerName": "Kernel", "flex": 1, "minWidth": 360, "tooltipField": "name",
     "filter": "agTextColumnFilter"},
    {"field": "category", "headerName": "Category", "width": 130, "filter": "agTextColumnFilter"},
    {"field": "tensor_core", "headerName": "Tensor cores", "width": 120,
     "headerTooltip": "kernel name matches a tensor-core (HMMA/IMMA/WGMMA) kernel pattern checked on H100",
     "valueFormatter": {"function": "params.value ? 'yes' : 'no'"}},
    {"field": "calls", "headerName": "Calls", "width": 90, "filter": "agNumberColumnFilter"},
    {"field": "total_ms", "headerName": "Total (ms)", "width": 115, "sort": "desc", "filter": "agNumberColumnFilter",
     "valueFormatter": {"function": "d3.format('.4~f')(params.value)"}},
    {"field": "mean_us", "headerName": "Mean (µs)", "width": 110, "filter": "agNumberColumnFilter",
     "valueFormatter": {"function": "d3.format('.4~g')(params.value)"}},
    {"field": "max_us", "headerName": "Max (µs)", "width": 110, "filter": "agNumberColumnFilter",
     "valueFormatter": {"function": "d3.format('.4~g')(params.value)"}},
    {"field": "share_pct", "headerName": "Share of GPU time (%)", "width": 170, "filter": "agNumberColumnFilter",
     "valueFormatter": {"function": "d3.format('.2f')(params.value)"}},
]


def layout(run_id: str | None = None, window: str | None = None, category: str | None = None,
           q: str | None = None, **_: Any) -> html.Div:
    try:
        run = data.reader(run_id)
    except GpulensError as exc:
        return ui.error_page("Cannot open this run", str(exc))
    data.analysis(run_id)  # started now, while the page's scripts load: ready sooner for its callbacks
    windows = run.windows()
    options = [{"label": "All windows combined", "value": ALL_WINDOWS}]
    for w in windows:
        state = "" if w.status != "failed" else f" — failed: {w.error}"
        why = f" · {w.trigger}" if w.trigger else ""
        options.append({"label": f"rank {w.rank} · window {w.index} · steps {w.first_step}–{w.last_step}{why}{state}",
                        "value": f"{w.rank}:{w.index}", "disabled": w.status == "failed"})
    values = {o["value"] for o in options}
    cats = [c for c in (category or "").split(",") if c in CATEGORIES]
    return html.Div([
        dcc.Store(id="k-run-id", data=run.info.id),
        ui.analysis_poll("k-analysis-poll"),
        ui.analysis_poll("k-trace-poll"),  # one per callback: each stops its own once it has the analysis
        html.Div([html.Div([html.H2(f"Kernels · {run.info.name}"), dcc.Link("← run", href=f"/run/{run.info.id}")],
                           className="title-row")], className="page-head"),
        ui.notice("No profiler windows in this run: record with track(profile_every=...) or import a trace "
                  "(gpulens import trace.json).", "info", cid="no-windows") if not windows else html.Div(),
        html.Div([
            dcc.Dropdown(id="k-window", options=options, value=window if window in values else ALL_WINDOWS,
                         clearable=False, style={"minWidth": "420px"}),
            dcc.Dropdown(id="k-category", options=[{"label": c, "value": c} for c in CATEGORIES], value=cats,
                         multi=True, placeholder="all categories", style={"minWidth": "260px"}),
            dcc.Input(id="k-search", type="search", value=q or "", debounce=True, className="input",
                      placeholder="kernel name contains… (Enter to filter)"),
            html.Div(id="k-download"),
        ], className="toolbar"),
        html.Div(id="k-cards", className="cards"),
        dcc.Graph(id="k-breakdown", config={"displaylogo": False}),
        html.Div([dcc.Graph(id="k-categories", config={"displaylogo": False}),
                  dcc.Graph(id="k-temporal", config={"displaylogo": False})], className="two-col"),
        html.Div([html.Div([html.H3("GPU utilization per device"), html.Div(id="k-devices")]),
                  html.Div([html.H3("Where the GPU idles"), html.Div(id="k-idle")])], className="two-col"),
        html.H3("Kernels", id="k-kernels-title"),
        dag.AgGrid(id="k-grid", columnDefs=KERNEL_COLUMNS, rowData=[],
                   defaultColDef={"sortable": True, "resizable": True, "filter": True},
                   dashGridOptions={"pagination": True, "paginationPageSize": 50, "tooltipShowDelay": 300,
                                    "animateRows": False, "rowHeight": 30, "headerHeight": 36,
                                    "theme": GRID_THEME},
                   style={"height": "560px", "width": "100%"}, className="grid"),
        html.Div([html.Div([html.H3("Memory copies"), html.Div(id="k-memcpy")]),
                  html.Div([html.H3("Synchronisation"), html.Div(id="k-sync")])], className="two-col"),
        html.H3("Top CPU operators (self time)"), html.Div(id="k-cpu-ops"),
        html.H3("GEMM shapes"), html.Div(id="k-gemm"),
        html.Div(id="k-problems"),
    ], className="page")


class Analysing(GpulensError):
    """The run's analysis is being computed: the page says so and asks again (see ui.analysis_poll)."""

    def __init__(self) -> None:
        super().__init__("analysing this run… (this page fills in by itself)")


def window_analysis(run_id: str, window: str) -> tuple[KernelView, list[WindowError], Window | None]:
    """The combined analysis of one window (``rank:index``) or of all; plus unreadable windows and the window."""
    a = data.analysis(run_id)
    if a is None:
        raise Analysing()
    if a.error:
        raise GpulensError(a.error)
    if window == ALL_WINDOWS:
        return combine([an for _, an in a.windows]), a.problems, None
    rank, _, index = window.partition(":")
    for w, an in a.windows:
        if str(w.rank) == rank and str(w.index) == index:
            return combine([an]), a.problems, w
    raise GpulensError(f"no readable window {window!r} in this run")


def kernel_rows(kernels: list[KernelStat], categories: list[str] | None, search: str | None) -> list[dict]:
    rows = []
    needle = (search or "").strip().lower()
    for k in kernels:
        if categories and k.category not in categories:
            continue
        if needle and needle not in k.name.lower():
            continue
        rows.append({"name": k.name, "category": k.category, "tensor_core": k.tensor_core, "calls": k.calls,
                     "total_ms": k.total_us / 1e3, "mean_us": k.mean_us, "max_us": k.max_us,
                     "share_pct": k.share * 100})
    return rows


def _table(head: tuple[str, ...], rows: list[list[Any]], cid: str) -> Any:
    if not rows:
        return html.Div("none in this window", className="muted", id=cid)
    return ui.text_table(head, rows, cid)


def breakdown_shares(an: KernelView) -> dict[str, float]:
    """The TensorBoard-style step breakdown as % of the profiled step (the report's "Kernel view" bar)."""
    sb = an.step_breakdown_us
    total = sb.get("Total") or sum(v for k, v in sb.items() if k != "Total")
    if not total:
        return {}
    return {k: v / total * 100 for k, v in sb.items() if k != "Total" and v}


def device_rows(an: KernelView) -> list[list[Any]]:
    return [[f"rank {g.rank}", f"GPU {g.device}", str(g.steps), fmt.percent(g.gpu_utilization_pct),
             fmt.percent(g.sm_efficiency_pct), fmt.percent(g.achieved_occupancy_pct), fmt.percent(g.tensor_core_pct)]
            for g in an.gpu_summary]


def idle_rows(an: KernelView) -> list[list[Any]]:
    out = []
    for r in an.idle:
        idle = r.idle_us

        def part(us: float, idle: float = idle) -> str:
            return f"{fmt.seconds(us / 1e6)} ({fmt.share(us / idle if idle else None)})"

        out.append([f"rank {r.rank} GPU {r.device} stream {r.stream}", fmt.seconds(idle / 1e6),
                    part(r.host_wait_us), part(r.kernel_wait_us), part(r.other_us)])
    return out


def phase_busy_rows(busy: PhaseGpuBusy) -> list[list[Any]]:
    """GPU busy while the host was in each phase: gpulens' ranges in the window's trace against its kernels."""
    return [[fmt.phase(name), fmt.seconds(row.host_us / 1e6), fmt.seconds(row.gpu_busy_us / 1e6),
             fmt.share(row.gpu_busy_share)] for name, row in busy.phases.items()]


def cpu_op_rows(an: KernelView, limit: int = 25) -> list[list[Any]]:
    ops = sorted(an.top_cpu_ops, key=lambda o: -o.self_us)[:limit]
    return [[o.name, str(o.calls), f"{o.self_us / 1e3:.2f} ms", f"{o.total_us / 1e3:.2f} ms"] for o in ops]


def gemm_rows(an: KernelView) -> list[list[Any]]:
    return [[g.op, f"{g.m}×{g.n}×{g.k}", g.dtype, str(g.calls), f"{g.kernel_us:.1f} µs",
             ", ".join(g.misaligned) or "—"] for g in an.gemm_shapes]


def kernel_cards(an: KernelView) -> list[Any]:
    launch = an.launch
    gs = an.gpu_summary[0] if an.gpu_summary else None
    sync_calls = sum(v.calls for k, v in an.sync.items() if not k.startswith("Memcpy"))
    return [
        ui.card("GPU busy in window", fmt.percent(gs.gpu_utilization_pct if gs else None),
                "kernel time over window span", cid="kc-busy"),
        ui.card("Tensor-core share", fmt.share(an.tensor_core_share),
                f"eligible (GEMM/conv): {fmt.share(an.tc_eligible_share)}", cid="kc-tc"),
        ui.card("Kernels per step", f"{launch.kernels_per_step:.0f}" if launch and launch.kernels_per_step else "n/a",
                f"{launch.kernels} kernels in {launch.steps} steps" if launch else "", cid="kc-per-step"),
        ui.card("Median kernel", f"{launch.median_kernel_us:.1f} µs" if launch and launch.median_kernel_us else "n/a",
                f"{fmt.share(launch.short_kernel_share)} shorter than 10 µs" if launch else "", cid="kc-median"),
        ui.card("Launch (CPU)", f"{launch.median_launch_us:.1f} µs" if launch and launch.median_launch_us else "n/a",
                f"{fmt.share(launch.shorter_than_launch_share)} of kernels shorter than their launch"
                if launch else "", cid="kc-launch"),
        ui.card("Sync calls", str(sync_calls), "cudaDeviceSynchronize, cudaStreamSynchronize, …", cid="kc-sync"),
    ]


@callback(
    Output("k-breakdown", "figure"),
    Output("k-devices", "children"),
    Output("k-idle", "children"),
    Output("k-cpu-ops", "children"),
    Output("k-gemm", "children"),
    Output("k-kernels-title", "children"),
    Output("k-trace-poll", "max_intervals"),
    Input("k-run-id", "data"),
    Input("k-window", "value"),
    Input("theme", "data"),
    Input("k-trace-poll", "n_intervals"),
)
def trace_analysis_view(run_id: str, window: str, theme: str | None, poll: int | None) -> tuple:
    """What `gpulens report` prints from the windows besides the kernel table: the step breakdown,
    per-device utilization, idle-time attribution, CPU operators, GEMM shapes."""
    theme = theme or "light"
    try:
        an, _, _ = window_analysis(run_id, window or ALL_WINDOWS)
    except GpulensError as exc:
        none = html.Div(str(exc), className="muted")
        return (figures.empty_figure(str(exc), theme, 150), none, none, none, none, "Kernels",
                ui.poll(not isinstance(exc, Analysing), poll))
    fig = figures.share_bar_figure(breakdown_shares(an), th.BREAKDOWN_COLORS,
                                   "Profiled step time by kind, % of the step (TensorBoard profiler breakdown)", theme)
    devices = _table(("rank", "device", "steps", "GPU utilization", "est. SM efficiency", "est. occupancy",
                      "tensor-core kernels"), device_rows(an), "k-devices-table")
    busy = an.phase_gpu_busy
    idle = html.Div([
        _table(("stream", "idle", "waiting for the host", "waiting for other kernels", "other"),
               idle_rows(an), "k-idle-table"),
        html.H4("GPU busy while the host was in each phase"),
        html.Div(busy.reason, className="muted", id="k-phase-busy-table") if busy and busy.reason else
        _table(("phase (host)", "host time", "GPU busy", "share"), phase_busy_rows(busy), "k-phase-busy-table")
        if busy else
        html.Div(_no_phase_busy_reason(an), className="muted", id="k-phase-busy-table")])
    ops = _table(("operator", "calls", "self", "total"), cpu_op_rows(an), "k-cpu-ops-table")
    gemm = _table(("op", "m×n×k", "dtype", "calls", "kernel time", "not a multiple of 8/16"), gemm_rows(an),
                  "k-gemm-table")
    title = "Kernels" if an.kernels else "Kernels — none: a CPU run (its operators are listed below)"
    return fig, devices, idle, ops, gemm, title, ui.POLL_DONE


@callback(
    Output("k-grid", "rowData"),
    Output("k-cards", "children"),
    Output("k-categories", "figure"),
    Output("k-temporal", "figure"),
    Output("k-memcpy", "children"),
    Output("k-sync", "children"),
    Output("k-download", "children"),
    Output("k-problems", "children"),
    Output("k-analysis-poll", "max_intervals"),
    Input("k-run-id", "data"),
    Input("k-window", "value"),
    Input("k-category", "value"),
    Input("k-search", "value"),
    Input("theme", "data"),
    Input("k-analysis-poll", "n_intervals"),
)
def kernels_view(run_id: str, window: str, categories: list[str] | None, search: str | None,
                 theme: str | None, poll: int | None) -> tuple:
    theme = theme or "light"
    try:
        an, problems, w = window_analysis(run_id, window or ALL_WINDOWS)
    except Analysing as exc:
        empty = figures.empty_figure(str(exc), theme, 150)
        return [], [ui.analysing()], empty, empty, [], [], [], [], ui.poll_again(poll)
    except GpulensError as exc:
        empty = figures.empty_figure(str(exc), theme, 150)
        return [], [ui.notice(str(exc), "error", cid="k-error")], empty, empty, [], [], [], [], ui.POLL_DONE
    rows = kernel_rows(an.kernels, categories, search)
    cats = an.categories_us
    total = sum(cats.values()) or 1.0
    cat_fig = figures.share_bar_figure({k: v / total * 100 for k, v in cats.items()}, th.CATEGORY_COLORS,
                                       "GPU kernel time by category, % of kernel time", theme)
    temporal = [{**r.as_dict(), "non_compute_pct": max(r.non_compute_pct, 0.0)} for r in an.temporal_breakdown]
    tmp_fig = figures.temporal_figure(temporal, theme)
    memcpy = an.memcpy
    memcpy_table = ui.text_table(
        ("direction", "count", "bytes", "time", "GB/s"),
        [[m.direction, str(m.count), fmt.bytes_(m.bytes), f"{m.total_us:.1f} µs",
          f"{m.gb_per_s:.2f}" if m.gb_per_s is not None else ""] for m in memcpy]) \
        if memcpy else html.Div("none", className="muted")
    sync = an.sync
    sync_table = ui.text_table(("call", "calls", "time"),
                               [[k, str(v.calls), f"{v.total_us:.1f} µs"] for k, v in sync.items()]) \
        if sync else html.Div("none", className="muted")
    download: list[Any] = []
    if w is not None and w.path is not None:
        href = f"/download/trace/{quote(run_id)}/{w.rank}/{w.index}"
        download = [html.A("Download trace (.json.gz)", href=href, className="btn", id="k-trace-link"),
                    html.Span(" opens in ui.perfetto.dev or chrome://tracing", className="muted small")]
    elif w is None and an.kernels:
        download = [html.Span("pick one window to download its trace", className="muted small")]
    probs = [ui.notice(f"rank {p.rank} window {p.window}: {p.error}", "warn") for p in problems]
    if not an.available and an.reason:  # no readable window
        probs.append(ui.notice(an.reason, "info"))
    return rows, kernel_cards(an), cat_fig, tmp_fig, memcpy_table, sync_table, download, probs, ui.POLL_DONE


register(__name__, path_template="/run/<run_id>/kernels", title="gpulens · kernels", name="Kernels", layout=layout)


def _no_phase_busy_reason(an: KernelView) -> str:
    """Why there is no GPU-busy-by-phase table: no GPU at all, or a trace without gpulens' phase ranges."""
    if not an.has_gpu:
        return "no GPU in this run: the GPU's busy time by host phase needs CUDA kernels in the trace"
    return "no gpulens phase ranges in this trace (recorded by another tool, or before gpulens wrote ranges)"
