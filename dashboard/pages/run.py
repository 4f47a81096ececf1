"""The run view: headline cards, suggestions with evidence links, time series, step breakdown, ranks."""
from __future__ import annotations

import re
import time
from typing import Any

from dash import ALL, ClientsideFunction, Input, Output, State, callback, clientside_callback, ctx, dcc, html, no_update

from gpulens import fmt
from gpulens.dashboard import components as ui
from gpulens.dashboard import data, figures, overview
from gpulens.dashboard.pages import register
from gpulens.dashboard.panels import timeseries
from gpulens.profiler import GpulensError

GRAPH_CONFIG: Any = {"displaylogo": False, "scrollZoom": False,
                     "modeBarButtonsToRemove": ["lasso2d", "select2d", "autoScale2d"],
                     "toImageButtonOptions": {"format": "png", "scale": 2}}
_RANGE_KEY = re.compile(r"^xaxis\d*\.range\[([01])\]$")


def layout(run_id: str | None = None, **_: Any) -> html.Div:
    try:
        run = data.reader(run_id)
    except GpulensError as exc:
        return ui.error_page("Cannot open this run", str(exc))
    info = run.info
    data.analysis(run_id, live=info.status == "running")  # started now, ready sooner for the page's callbacks
    meta = info.meta
    gpus = info.gpus
    gpu_text = (f"{gpus[0].get('name')} × {len(gpus)}" if gpus else "no NVIDIA GPU")
    started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(info.start)) if info.start else "?"
    links = [dcc.Link("Kernels", href=f"/run/{info.id}/kernels", className="btn", id="link-kernels"),
             dcc.Link("Compare…", href=f"/compare?a={info.id}", className="btn")]
    if info.status == "running":
        links.insert(0, dcc.Link("Live ●", href=f"/live/{info.id}", className="btn btn-live"))
    notes = []
    nvml = meta.get("nvml") or {}
    if meta.get("imported"):
        source = str(meta.get("imported_from") or "a profiler trace").rsplit("/", 1)[-1]
        notes.append(ui.notice(f"Imported from {source}: steps, kernels and GPU busy come from the trace. "
                               "A trace holds no NVML/GPM counters, host or process samples, memory or FLOP counts: "
                               "record the script with gpulens run to see those.", "info", cid="imported-note"))
    elif not nvml.get("available"):
        notes.append(ui.notice(f"No NVIDIA GPU data: {nvml.get('reason') or 'NVML not available'}. "
                               "Host and training-loop metrics only.", "info", cid="no-gpu-note"))
    if info.replay:
        notes.append(ui.notice("This run is a replay of recorded data, not a live measurement.", "info"))
    if info.status in ("crashed", "interrupted"):
        notes.append(ui.notice(f"Run {info.status}: {info.status_reason or ''} — everything up to its last "
                               "flush is shown.", "warn"))
    return html.Div([
        dcc.Store(id="run-id", data=info.id),
        dcc.Store(id="ts-range", data=None),
        dcc.Store(id="ts-relayout", data=None),  # the graph's time range after each change (see assets)
        dcc.Store(id="evidence-targets", data=[]),
        ui.analysis_poll("run-analysis-poll"),
        html.Div([
            html.Div([html.H2(info.name, id="run-title"), ui.status_badge(info.status, info.replay,
                                                                         info.status_reason)],
                     className="title-row"),
            html.Div(links, className="links"),
        ], className="page-head"),
        html.Div(f"{gpu_text} · {len(info.ranks)} rank(s) · started {started} · "
                 f"{fmt.seconds(info.duration_s)} · torch {meta.get('torch_version') or '?'} · "
                 f"host {meta.get('host') or '?'}", className="muted small"),
        *notes,
        dcc.Loading(html.Div(id="run-cards", className="cards"), type="dot"),
        html.Section([html.H3("Suggestions"), dcc.Loading(html.Div(id="run-suggestions"), type="dot")],
                     id="suggestions-section"),
        html.Section([
            html.Div([html.H3("Time series"),
                      html.Span(id="ts-level", className="muted small"),
                      html.Button("Whole run", id="ts-reset", className="btn btn-ghost")], className="section-head"),
            html.Div([dcc.Graph(id="ts-graph", config=GRAPH_CONFIG, figure=figures.empty_figure("loading…")),
                      html.Div(id="ts-anchors")], className="graph-wrap"),
            html.Div(id="ts-unavailable", className="muted small"),
        ], id="ts-section"),
        html.Section([html.H3("Step time breakdown"),
                      dcc.Graph(id="steps-graph", config=GRAPH_CONFIG, figure=figures.empty_figure("loading…"))],
                     id="steps-section"),
        html.Section([html.H3("Ranks"), html.Div(id="run-nodes"), dcc.Graph(id="ranks-graph", config=GRAPH_CONFIG),
                      html.Div(id="ranks-table")], id="ranks-section",
                     style={} if len(info.ranks) > 1 else {"display": "none"}),
        html.Section([html.H3("Events"), html.Div(id="run-events")], id="events-section"),
    ], className="page")


# ---------------------------------------------------------------------- cards and suggestions
@callback(
    Output("run-cards", "children"),
    Output("run-suggestions", "children"),
    Output("evidence-targets", "data"),
    Output("run-events", "children"),
    Output("run-analysis-poll", "max_intervals"),
    Input("run-id", "data"),
    Input("run-analysis-poll", "n_intervals"),
)
def run_overview(run_id: str, poll: int | None) -> tuple[Any, Any, Any, Any, int]:
    try:
        run = data.reader(run_id)
        a = data.analysis(run_id, live=run.info.status == "running")
    except GpulensError as exc:
        return ui.notice(str(exc), "error"), [], [], [], ui.POLL_DONE
    if a is None:
        return ui.analysing(), [], no_update, [], ui.poll_again(poll)
    if a.error or a.report is None:
        return (ui.notice(f"cannot analyse this run: {a.error}", "error", cid="analysis-error"), [], [], [],
                ui.POLL_DONE)
    cards = [ui.card(c.label, c.value, c.sub, cid=f"card-{c.key}", title=c.title, muted=not c.available)
             for c in overview.headline(a.report)]
    targets: list[dict[str, Any]] = []
    items: list[Any] = []
    for i, s in enumerate((a.advice or {}).get("suggestions") or []):
        buttons: list[Any] = []
        for t in overview.evidence_targets(s, a.report, run.info.id, run.info.start):
            if t.href:
                buttons.append(dcc.Link(t.label, href=t.href, className="ev-link"))
            else:
                buttons.append(html.A(t.label, href=f"#{t.anchor}", className="ev-link",
                                      id={"type": "evidence", "index": len(targets)}))
                targets.append({"t0": t.t0, "t1": t.t1})
        items.append(ui.suggestion_card(s, i, buttons))
    waiting = (a.advice or {}).get("waiting")
    if waiting:
        items = [ui.notice(waiting.capitalize() + ".", "info", cid="no-suggestions")]
    elif not items:
        items = [ui.notice("No suggestions: nothing found holding this run back.", "ok", cid="no-suggestions")]
    combined = (a.advice or {}).get("combined_gain_fraction")
    if combined and len(items) > 1:
        items.append(html.P(f"Together: up to {fmt.share(combined, 0)} shorter steps (suggestions that reclaim "
                            "the same time counted once).", className="muted", id="combined-gain"))
    missing = (a.advice or {}).get("not_evaluated") or []
    if missing:
        items.append(html.Details([
            html.Summary(f"{len(missing)} rule(s) not evaluated — what they need"),
            html.Ul([html.Li([html.Code(m["id"]), ": ", m["needs"]]) for m in missing]),
        ], className="not-evaluated"))
    events = a.report.events
    if events:
        start = run.info.start or 0.0
        ev: Any = ui.text_table(("t", "kind", "GPU", "message"),
                                [[f"+{e.t - start:.1f} s", e.kind, "" if e.gpu is None or e.gpu < 0 else str(e.gpu),
                                  e.message] for e in events[:200]])
    else:
        ev = html.Div("No events (XID errors, clock events, profiler problems) recorded.", className="muted small")
    return cards, items, targets, ev, ui.POLL_DONE


# ---------------------------------------------------------------------- zoom
def parse_relayout(relayout: dict[str, Any] | None, divisor: float) -> tuple[str, float | None, float | None]:
    """('zoom', t0, t1) in seconds, ('reset', None, None), or ('none', ...) for relayouts that are not x zooms."""
    if not relayout:
        return "none", None, None
    if any(k.startswith("xaxis") and k.endswith("autorange") and v for k, v in relayout.items()):
        return "reset", None, None
    got: dict[int, float] = {}
    for k, v in relayout.items():
        m = _RANGE_KEY.match(k)
        if m:
            got[int(m.group(1))] = float(v)
    for k, v in relayout.items():
        if re.match(r"^xaxis\d*\.range$", k) and isinstance(v, list) and len(v) == 2:
            got = {0: float(v[0]), 1: float(v[1])}
    if 0 in got and 1 in got and got[1] > got[0]:
        return "zoom", got[0] * divisor, got[1] * divisor
    return "none", None, None


clientside_callback(
    ClientsideFunction("gpulens", "timeRelayout"),
    Output("ts-relayout", "data"),
    Input("ts-graph", "relayoutData"),
    State("ts-relayout", "data"),
    prevent_initial_call=True,
)


@callback(
    Output("ts-range", "data"),
    Input("ts-relayout", "data"),
    Input({"type": "evidence", "index": ALL}, "n_clicks"),
    Input("ts-reset", "n_clicks"),
    State("evidence-targets", "data"),
    State("ts-range", "data"),
    State("run-id", "data"),
    prevent_initial_call=True,
)
def set_range(relayout: dict | None, _clicks: list, _reset: int | None, targets: list[dict], current: dict | None,
              run_id: str) -> Any:
    trig = ctx.triggered_id
    n = (current or {}).get("n", 0) + 1
    if trig == "ts-reset":
        return {"t0": None, "t1": None, "source": "reset", "n": n}
    if isinstance(trig, dict) and trig.get("type") == "evidence":
        if not ctx.triggered or not ctx.triggered[0].get("value"):
            return no_update
        t = (targets or [])[trig["index"]] if trig["index"] < len(targets or []) else None
        if not t or t.get("t0") is None:
            return {"t0": None, "t1": None, "source": "evidence", "n": n}
        return {"t0": t["t0"], "t1": t["t1"], "source": "evidence", "n": n}
    try:
        duration = data.reader(run_id).info.duration_s or 0.0
    except GpulensError:
        return no_update
    divisor, _ = figures.time_unit(duration)
    kind, t0, t1 = parse_relayout(relayout, divisor)
    if kind == "none":
        return no_update
    if kind == "reset":
        return {"t0": None, "t1": None, "source": "zoom", "n": (current or {}).get("n", 0)}
    return {"t0": t0, "t1": t1, "source": "zoom", "n": (current or {}).get("n", 0)}


def _range(rng: dict | None) -> tuple[float | None, float | None]:
    if not rng or rng.get("t0") is None or rng.get("t1") is None:
        return None, None
    return float(rng["t0"]), float(rng["t1"])


# ---------------------------------------------------------------------- figures
@callback(
    Output("ts-graph", "figure"),
    Output("ts-level", "children"),
    Output("ts-unavailable", "children"),
    Output("ts-anchors", "children"),
    Input("run-id", "data"),
    Input("ts-range", "data"),
    Input("theme", "data"),
    State("viewport", "data"),
)
def ts_figure(run_id: str, rng: dict | None, theme: str | None, viewport: dict | None) -> tuple[Any, str, Any, Any]:
    try:
        run = data.reader(run_id)
    except GpulensError as exc:
        return figures.empty_figure(str(exc), theme or "light"), "", [], []
    t0, t1 = _range(rng)
    width = int((viewport or {}).get("width") or 1400)
    ts = timeseries(run, t0, t1, width)
    n = (rng or {}).get("n", 0)
    fig = figures.timeseries_figure(ts, theme or "light", uirevision=f"{run_id}-{n}",
                                    xrange=(t0, t1) if t0 is not None and t1 is not None else None,
                                    duration_s=run.info.duration_s or 0.0, span=_xrange(run, None, None))
    shown = "whole run" if t0 is None else f"{t0:.1f}–{t1:.1f} s"
    level = f"{shown} · drawn from {ts.level} · drag to zoom, double-click to reset"
    missing = [html.Div(line) for line in ts.unavailable]
    return fig, level, missing, _anchors(fig)


def _xrange(run: Any, t0: float | None, t1: float | None) -> tuple[float, float] | None:
    """The zoomed range, else the whole run: the panels and the step breakdown share one time axis (the
    panels' figure autoranges over an invisible span of the whole run instead: a range set on it would read
    as a zoom)."""
    if t0 is not None and t1 is not None:
        return t0, t1
    duration = run.info.duration_s
    return (0.0, float(duration)) if duration else None


def _anchors(fig: dict[str, Any]) -> list[html.Div]:
    """Invisible markers at each panel's top, so evidence links scroll to the right panel."""
    lay = fig.get("layout", {})
    height = lay.get("height") or 0
    margin = lay.get("margin") or {}
    plot_h = height - margin.get("t", 0) - margin.get("b", 0)
    out = []
    for key, axis in lay.items():
        if not key.startswith("yaxis"):
            continue
        title = (axis.get("title") or {}).get("text", "")
        panel = _panel_key(title)
        if panel:
            top = margin.get("t", 0) + (1.0 - axis["domain"][1]) * plot_h
            out.append(html.Div(id=f"panel-{panel}", className="panel-anchor", style={"top": f"{top:.0f}px"}))
    return out


def _panel_key(title: str) -> str | None:
    from gpulens.dashboard.panels import PANELS, STEP_PANEL

    for spec in (*PANELS, STEP_PANEL):
        if spec.title == title:
            return spec.key
    return None


@callback(
    Output("steps-graph", "figure"),
    Input("run-id", "data"),
    Input("ts-range", "data"),
    Input("theme", "data"),
    Input("evidence-targets", "data"),  # set once the analysis is done: its steady-step shares replace the range's
    State("viewport", "data"),
)
def steps_figure(run_id: str, rng: dict | None, theme: str | None, _analysed: Any, viewport: dict | None) -> Any:
    try:
        run = data.reader(run_id)
    except GpulensError as exc:
        return figures.empty_figure(str(exc), theme or "light")
    t0, t1 = _range(rng)
    origin = run.info.start or 0.0
    width = int((viewport or {}).get("width") or 1400)
    view = run.step_view(None, None if t0 is None else origin + t0, None if t1 is None else origin + t1, width)
    t, phases, shares = overview.phase_series(view, max(width // 3, 50))
    share_of = "all steps in this range"
    if t0 is None:  # the whole run: the shares the cards and the advice use (steady steps), one number each
        a = data.analysis_if_done(run_id)
        steady = overview.steady_phase_shares(a.report if a is not None else None)
        if steady:
            shares, share_of = steady, "steady steps (as in the advice)"
    return figures.phase_breakdown_figure(t - origin, phases, shares, theme or "light",
                                          uirevision=f"{run_id}-{(rng or {}).get('n', 0)}",
                                          duration_s=run.info.duration_s or 0.0,
                                          xrange=_xrange(run, t0, t1), share_of=share_of)


@callback(
    Output("ranks-graph", "figure"),
    Output("ranks-table", "children"),
    Input("run-id", "data"),
    Input("theme", "data"),
)
def ranks_figure(run_id: str, theme: str | None) -> tuple[Any, Any]:
    try:
        run = data.reader(run_id)
    except GpulensError as exc:
        return figures.empty_figure(str(exc), theme or "light"), []
    if len(run.ranks) < 2:
        return figures.empty_figure("one rank only", theme or "light"), []
    ranks = overview.rank_means([run.step_view(r, max_points=200) for r in run.ranks])
    if not ranks:
        return figures.empty_figure("no steps recorded", theme or "light"), []
    fastest = min(r["step_s"] for r in ranks)
    table = ui.text_table(("rank", "steps", "mean step", "vs fastest"),
                          [[f"rank {r['rank']}", str(r["steps"]), fmt.seconds(r["step_s"]),
                            f"+{(r['step_s'] / fastest - 1) * 100:.1f}%" if fastest else ""] for r in ranks])
    return figures.rank_figure(ranks, theme or "light"), table


@callback(
    Output("run-nodes", "children"),
    Input("run-id", "data"),
    Input("evidence-targets", "data"),  # set once the analysis is done
)
def nodes_table(run_id: str, _analysed: Any) -> Any:
    """One row per machine when the run spans several: a slow or hot node stands out."""
    try:
        a = data.analysis_if_done(run_id)
    except GpulensError:
        return []
    nodes = a.report.nodes if a is not None and a.report is not None else []
    if len(nodes) < 2:
        return []
    from gpulens.tables import NODE_COLUMNS, node_rows

    return ui.text_table(NODE_COLUMNS, node_rows(nodes), "nodes-table")


register(__name__, path_template="/run/<run_id>", title="gpulens · run", name="Run", layout=layout)
