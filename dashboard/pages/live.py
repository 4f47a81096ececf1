"""Follow a run while it is written: new points within ~1.5 s, zoom kept, bounded browser memory.

The first update sends the last few minutes as a full figure; every later one
sends only the points recorded since (``extendData``), capped per trace with
``maxPoints`` so the browser holds a bounded window however long the run
goes on.  The poll interval is disabled while an update runs, so slow disks
never pile callbacks up.  A change in the set of lines (a GPU metric that
appears later) rebuilds the figure with the same ``uirevision``, which keeps
the user's zoom.
"""
from __future__ import annotations

import secrets
import threading
import time
from collections import OrderedDict
from typing import Any

import numpy as np
from dash import ClientsideFunction, Input, Output, State, callback, clientside_callback, ctx, dcc, html, no_update

from gpulens import fmt
from gpulens.dashboard import components as ui
from gpulens.dashboard import data, figures, on_demand
from gpulens.dashboard import theme as th
from gpulens.dashboard.pages import register
from gpulens.dashboard.panels import PANELS, timeseries
from gpulens.profiler import GpulensError, RunReader

POLL_MS = 1000
WINDOWS = {60: "1 min", 300: "5 min", 900: "15 min"}
MAX_POINTS_CAP = 20_000


class _Builds:
    """What each live figure was built from (its traces, origin, caps), kept here, keyed by a random token.

    The browser only echoes the token and how far each trace has got: a
    forged cursor can name no other source, and asks for at most one
    window of points per trace, so an update costs what a real one does.
    """

    def __init__(self, size: int = 256) -> None:
        self.size = size
        self._lock = threading.Lock()
        self._builds: OrderedDict[str, dict[str, Any]] = OrderedDict()

    def add(self, build: dict[str, Any]) -> str:
        token = secrets.token_urlsafe(12)
        with self._lock:
            self._builds[token] = build
            while len(self._builds) > self.size:
                self._builds.popitem(last=False)
        return token

    def get(self, token: Any) -> dict[str, Any] | None:
        if not isinstance(token, str):
            return None
        with self._lock:
            build = self._builds.get(token)
            if build is not None:
                self._builds.move_to_end(token)
            return build


_builds = _Builds()


def _positions(cursor: Any, build: dict[str, Any], now: float) -> list[float] | None:
    """The client's per-trace positions, if they fit its build; none earlier than the build's window."""
    last = cursor.get("last") if isinstance(cursor, dict) else None
    if not isinstance(last, list) or len(last) != len(build["sources"]):
        return None
    floor = now - build["window_s"] - 60.0
    out = []
    for value in last:
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not np.isfinite(value):
            return None
        out.append(max(float(value), floor))
    return out


def layout(run_id: str | None = None, **_: Any) -> html.Div:
    try:
        run = data.reader(run_id)
    except GpulensError as exc:
        return ui.error_page("Cannot follow this run", str(exc))
    info = run.info
    return html.Div([
        dcc.Store(id="live-id", data=info.id),
        dcc.Store(id="live-cursor", data=None),
        dcc.Store(id="live-new", data=None),
        dcc.Store(id="live-applied", data=None),
        html.Div([
            html.Div([html.H2(f"Live · {info.name}"), html.Span(id="live-status")], className="title-row"),
            html.Div([dcc.RadioItems(id="live-window", options=[{"label": v, "value": k} for k, v in WINDOWS.items()],
                                     value=300, inline=True, className="radio"),
                      dcc.Link("Run view", href=f"/run/{info.id}", className="btn")], className="links"),
        ], className="page-head"),
        html.Div(id="live-notice"),
        _profile_row(run),
        html.Div(id="live-cards", className="cards"),
        dcc.Graph(id="live-graph", config={"displaylogo": False}, figure=figures.empty_figure("waiting for data…")),
        html.Section([html.H3("Suggestions so far"), html.Div(id="live-suggestions")]),
        dcc.Interval(id="live-poll", interval=POLL_MS, n_intervals=0),
        dcc.Interval(id="live-advice-poll", interval=15_000, n_intervals=0),
    ], className="page")


def _access() -> Any:
    from flask import current_app

    return current_app.config.get(on_demand.ACCESS_KEY)


def _store() -> str | None:
    from flask import current_app

    return current_app.config.get(on_demand.STORE_KEY)


def _profile_row(run: RunReader) -> html.Div:
    """"Profile next N steps": a window of the running job's next steps on every rank (gpulens profile)."""
    why = on_demand.why_not(_access(), run.path, run.info.status, _store())
    return html.Div([
        dcc.Store(id="live-prof-request", data=None),
        dcc.Interval(id="live-prof-poll", interval=POLL_MS, disabled=True),  # only while a request is answered
        dcc.Input(id="live-prof-steps", type="number", min=1, max=on_demand.MAX_STEPS, step=1, value=5,
                  disabled=why is not None, style={"width": "4.5em"}),
        html.Button("Profile next steps", id="live-prof-go", className="btn", disabled=why is not None,
                    title=why or "record a torch.profiler window of the next N steps on every rank, without a "
                                 "restart (gpulens profile)"),
        html.Span(why or "", id="live-prof-status", className="muted small"),
    ], className="links", id="live-prof-row")


def _signature(run: RunReader, window_s: int, theme: str) -> list:
    wanted = {line.metric for spec in PANELS for line in spec.lines}
    sig = sorted([s.metric, s.gpu, s.rank] for s in run.series_list()
                 if s.metric in wanted and s.status == "ok" and s.count > 0)
    return [window_s, theme, len(run.ranks), *sig]


def _max_points(x: np.ndarray, window_s: float) -> int:
    if x.size < 3:
        return 3000
    step = float(np.median(np.diff(x))) or 0.1
    return int(min(max(window_s / max(step, 1e-3) * 1.2, 600), MAX_POINTS_CAP))


def new_points(run: RunReader, src: dict[str, Any], after: float) -> tuple[np.ndarray, np.ndarray]:
    """Raw points of one trace recorded after ``after`` (epoch seconds)."""
    if src["metric"] == "step":
        view = run.step_view(src["rank"], after + 1e-6, None, max_points=10**9)
        return view.t, view.dur / src["scale"]
    if src["metric"] == "loss":
        return run.loss_view(src["rank"], after + 1e-6, None, max_points=10**6)
    s = run.series(src["metric"], src["gpu"], src["rank"], t0=after + 1e-6)
    if s is None:
        return np.zeros(0), np.zeros(0)
    return s.t, s.v / src["scale"]


def phase_split(view: Any) -> list[str]:
    """'data wait 71%', 'forward 12%', ...: each phase's share of the steps in ``view``, largest first."""
    if not len(view):
        return []
    n = view.n.astype(np.float64)
    means = {p: float(np.nansum(v * n)) for p, v in view.phases.items()}
    total = sum(means.values())
    if total <= 0:
        return []
    order = sorted(means.items(), key=lambda kv: -kv[1])
    return [f"{th.PHASE_LABELS.get(p, p).lower()} {fmt.share(v / total, 0)}" for p, v in order if v > 0]


def live_cards(run: RunReader, now: float | None = None) -> list[Any]:
    info = run.info
    now = time.time() if now is None else now
    origin = info.start or now
    cards = [ui.card("Elapsed", fmt.seconds(((info.end or now) if info.status != "running" else now) - origin),
                     info.status, cid="live-elapsed")]
    recent = run.step_view(None, now - 30.0, None, max_points=10**6)
    total = run.step_view(None, None, None, max_points=100)
    n_total = int(total.n.sum()) if len(total) else 0
    if len(recent) >= 2:
        span = max(float(recent.t[-1] - recent.t[0]), 1e-9)
        rate = (len(recent) - 1) / span
        cards.append(ui.card("Steps", f"{n_total:,}", f"{rate:.2f} steps/s (last 30 s) · last "
                             f"{fmt.seconds(float(recent.dur[-1]))}", cid="live-steps"))
    else:
        cards.append(ui.card("Steps", f"{n_total:,}", "no step in the last 30 s", cid="live-steps"))
    split = phase_split(recent)
    if split:
        cards.append(ui.card("Phases (last 30 s)", split[0], " · ".join(split[1:]), cid="live-phases",
                             title="share of step time in each phase over the last 30 s of steps"))
    last_t = 0.0
    for s in run.series_list():
        if s.t_last:
            last_t = max(last_t, s.t_last)
    for gpu in run.gpus_recorded()[:8]:
        util = run.series("gpu.util", gpu, t0=now - 5.0)
        mem = run.series("gpu.mem_used", gpu, t0=now - 5.0)
        u = f"{util.v[-1]:.0f}%" if util is not None and len(util) else "n/a"
        m = fmt.bytes_(mem.v[-1]) if mem is not None and len(mem) else "n/a"
        cards.append(ui.card(f"GPU {gpu}", u, f"busy now · {m} used", cid=f"live-gpu-{gpu}"))
    cpu = run.series("host.cpu", -1, t0=now - 5.0)
    if cpu is not None and len(cpu):
        cards.append(ui.card("Host CPU", f"{cpu.v[-1]:.0f}%", "now", cid="live-cpu"))
    age = now - last_t if last_t else None
    cards.append(ui.card("Last sample", fmt.ago(age) if age is not None else "none yet",
                         "recorded → shown within ~1.5 s", cid="live-age"))
    return cards


@callback(
    Output("live-graph", "figure"),
    Output("live-new", "data"),
    Output("live-cursor", "data"),
    Output("live-cards", "children"),
    Output("live-status", "children"),
    Output("live-notice", "children"),
    Output("live-poll", "max_intervals"),
    Input("live-poll", "n_intervals"),
    Input("live-window", "value"),
    Input("theme", "data"),
    State("live-id", "data"),
    State("live-cursor", "data"),
    State("viewport", "data"),
    running=[(Output("live-poll", "disabled"), True, False)],
)
def live_update(n: int, window_s: int | None, theme: str | None, run_id: str, cursor: dict | None,
                viewport: dict | None) -> tuple:
    theme = theme or "light"
    window_s = int(window_s or 300)
    try:
        run = data.reader(run_id)
    except GpulensError as exc:
        return (figures.empty_figure(str(exc), theme), no_update, None, [], "",
                ui.notice(str(exc), "error", cid="live-error"), n)
    info = run.info
    status = ui.status_badge(info.status, info.replay, info.status_reason)
    stop = -1 if info.status == "running" else n + 1  # one last update after the run ends, then stop
    notice: Any = []
    if info.status != "running":
        notice = ui.notice(f"The run is {info.status}: live updates stopped. The run view has the full analysis.",
                           "info", cid="live-ended")
    now = time.time()
    origin = info.start or now
    cards = live_cards(run, now)
    sig = _signature(run, window_s, theme)
    token = cursor.get("token") if isinstance(cursor, dict) else None
    build = _builds.get(token)
    last = _positions(cursor, build, now) if build is not None and build["run"] == run_id else None
    if last is None or build is None or build["sig"] != sig:
        width = int((viewport or {}).get("width") or 1400)
        end = max((info.end or now), now if info.status == "running" else 0.0) - origin
        ts = timeseries(run, max(end - window_s, 0.0), None, width)
        fig = figures.timeseries_figure(ts, theme, uirevision=f"live-{run_id}", duration_s=1.0 * window_s,
                                        typed_arrays=False)
        fig["layout"]["xaxis"]["title"]["text"] = "time since start (s)"
        sources = [{"metric": t.metric, "gpu": t.gpu, "rank": t.rank, "scale": p.spec.scale}
                   for p in ts.panels for t in p.traces]
        last, maxpts = [], []
        for panel_trace in (t for p in ts.panels for t in p.traces):
            x = panel_trace.x
            # float() first: float32 + an epoch time stays float32 (NEP 50) and loses minutes of precision
            last.append(origin + float(np.nanmax(x)) if x.size and np.isfinite(x).any() else origin)
            maxpts.append(_max_points(x[np.isfinite(x)] if x.size else x, window_s))
        token = _builds.add({"run": run_id, "sig": sig, "sources": sources, "max": maxpts, "origin": origin,
                             "window_s": window_s})
        fig["layout"]["meta"]["live_token"] = token
        return fig, no_update, {"token": token, "last": last}, cards, status, notice, stop
    xs, ys, idx, maxpts = [], [], [], []
    for i, src in enumerate(build["sources"]):
        t, v = new_points(run, src, last[i])
        if not t.size:
            continue
        t, v = t[-build["max"][i]:], v[-build["max"][i]:]  # never more than the trace keeps
        last[i] = float(t[-1])
        xs.append(np.round(t - build["origin"], 3).tolist())
        ys.append([None if not np.isfinite(y) else float(y) for y in v])
        idx.append(i)
        maxpts.append(build["max"][i])
    cursor = {"token": token, "last": last}
    if not idx:
        return no_update, no_update, cursor, cards, status, notice, stop
    update = {"token": cursor["token"], "x": xs, "y": ys, "idx": idx, "max": maxpts, "n": n}
    return no_update, update, cursor, cards, status, notice, stop


# Applying an update in the browser is idempotent (assets/gpulens.js, liveExtend): only points newer
# than a trace's last x are appended, and updates for another build of the figure are dropped.
clientside_callback(
    ClientsideFunction("gpulens", "liveExtend"),
    Output("live-applied", "data"),
    Input("live-new", "data"),
)


@callback(Output("live-suggestions", "children"), Input("live-advice-poll", "n_intervals"), State("live-id", "data"))
def live_suggestions(_n: int, run_id: str) -> Any:
    try:
        a = data.analysis(run_id, live=True)  # never waited for: asked again at the next poll
    except GpulensError as exc:
        return ui.notice(str(exc), "error")
    if a is None:
        return html.Div("analysing…", className="muted")
    if a.error:
        return ui.notice(a.error, "warn")
    sugg = (a.advice or {}).get("suggestions") or []
    waiting = (a.advice or {}).get("waiting")
    if waiting:
        return html.Div(waiting.capitalize() + ".", className="muted", id="live-advice-waiting")
    if not sugg:
        return html.Div("Nothing found holding this run back so far.", className="muted")
    return html.Ul([html.Li([html.Span(s["severity"], className=f"sev sev-{s['severity']}"), " ", s["title"], " — ",
                             s["finding"]]) for s in sugg[:3]])


@callback(
    Output("live-prof-status", "children"),
    Output("live-prof-request", "data"),
    Output("live-prof-poll", "disabled"),
    Input("live-prof-go", "n_clicks"),
    Input("live-prof-poll", "n_intervals"),
    State("live-prof-steps", "value"),
    State("live-prof-request", "data"),
    State("live-id", "data"),
    prevent_initial_call=True,
)
def profile_next_steps(clicks: int | None, _n: int, steps: Any, request: dict | None, run_id: str) -> tuple:
    return profile_action(bool(clicks) and ctx.triggered_id == "live-prof-go", steps, request, run_id)


def profile_action(clicked: bool, steps: Any, request: dict | None, run_id: str) -> tuple:
    """The button asks (the same checks as gpulens profile); then, once a second until every rank has answered
    for good, the page says how far each got (its own interval: no poll while nothing was asked)."""
    try:
        run = data.reader(run_id)
        if clicked:
            asked, ranks = on_demand.ask(_access(), run.path, run.refresh().status, steps, _store())
            request = {"id": asked.id, "ranks": ranks, "steps": asked.steps, "done": False}
            return f"asked: the next {asked.steps} steps on rank {', '.join(map(str, ranks))}…", request, False
        if not isinstance(request, dict) or request.get("done"):
            return no_update, no_update, True
        text, finished = on_demand.progress(run.path, request, _store())
        return text, ({**request, "done": True} if finished else no_update), finished
    except GpulensError as exc:
        return str(exc), no_update, True


register(__name__, path_template="/live/<run_id>", title="gpulens · live", name="Live", layout=layout)
