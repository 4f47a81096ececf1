"""The runs list: every run under the root, sortable and filterable, broken ones with their error."""
from __future__ import annotations

import time
from typing import Any

import dash_ag_grid as dag
from dash import Input, Output, callback, dcc, html

from gpulens import fmt
from gpulens.dashboard import data
from gpulens.dashboard.components import GRID_THEME
from gpulens.dashboard.pages import register
from gpulens.profiler import GpulensError

#: While any analysis is pending or a run is live, the list refreshes this often.
POLL_MS = 2000

COLUMNS = [
    {"field": "run", "headerName": "Run", "cellRenderer": "markdown", "width": 190, "pinned": "left",
     "filter": "agTextColumnFilter", "tooltipField": "id"},
    {"field": "status", "headerName": "Status", "width": 88, "filter": "agTextColumnFilter",
     "cellClassRules": {"status-bad": "['crashed', 'broken', 'interrupted'].includes(params.value)",
                        "status-live": "params.value == 'running'"}},
    {"field": "gpu", "headerName": "GPU", "width": 130, "filter": "agTextColumnFilter", "tooltipField": "gpu"},
    {"field": "started", "headerName": "Started", "width": 128, "sort": "desc", "cellDataType": "text",
     "filter": "agTextColumnFilter"},
    {"field": "duration_s", "headerName": "Duration", "width": 80, "filter": "agNumberColumnFilter",
     "valueFormatter": {"function": "params.value == null ? '' : (params.value >= 3600 ? "
                                    "(params.value/3600).toFixed(1) + ' h' : params.value >= 60 ? "
                                    "(params.value/60).toFixed(1) + ' min' : params.value.toFixed(1) + ' s')"}},
    {"field": "steps_per_s", "headerName": "Steps/s", "width": 72, "filter": "agNumberColumnFilter",
     "valueFormatter": {"function": "params.value == null ? '' : d3.format('.3~g')(params.value)"}},
    {"field": "samples_per_s", "headerName": "Samples/s", "width": 88, "filter": "agNumberColumnFilter",
     "valueFormatter": {"function": "params.value == null ? '' : d3.format(',.4~g')(params.value)"}},
    {"field": "gpu_busy", "headerName": "Busy %", "width": 70, "filter": "agNumberColumnFilter",
     "headerTooltip": "NVML utilization.gpu, mean over the run and GPUs: share of time any kernel ran",
     "valueFormatter": {"function": "params.value == null ? 'n/a' : params.value.toFixed(1)"}},
    {"field": "sm_active", "headerName": "SM %", "width": 64, "filter": "agNumberColumnFilter",
     "headerTooltip": "GPM SM activity, mean (Hopper and newer)",
     "valueFormatter": {"function": "params.value == null ? 'n/a' : params.value.toFixed(1)"}},
    {"field": "mfu", "headerName": "MFU %", "width": 66, "filter": "agNumberColumnFilter",
     "headerTooltip": "model FLOPs per second over the GPU's dense peak for the dtypes used",
     "valueFormatter": {"function": "params.value == null ? 'n/a' : params.value.toFixed(1)"}},
    {"field": "top", "headerName": "Top suggestion / problem", "minWidth": 240, "flex": 1,
     "filter": "agTextColumnFilter", "tooltipField": "top", "wrapText": False},
]


def layout(**_: Any) -> html.Div:
    return html.Div([
        html.Div([html.H2("Runs"), html.Span(id="runs-root", className="muted small")], className="page-head"),
        dag.AgGrid(
            id="runs-grid",
            columnDefs=COLUMNS,
            rowData=[],
            defaultColDef={"sortable": True, "resizable": True, "filter": True, "floatingFilter": True},
            dashGridOptions={"domLayout": "autoHeight", "tooltipShowDelay": 300, "animateRows": False,
                             "rowHeight": 32, "headerHeight": 36, "theme": GRID_THEME,
                             "rowClassRules": {"row-broken": "params.data.status == 'broken'"}},
            getRowId="params.data.id",
            className="grid",
            style={"width": "100%"},
        ),
        html.Div(id="runs-note", className="muted small"),
        dcc.Interval(id="runs-poll", interval=POLL_MS, n_intervals=0, disabled=False),
    ], className="page")


def _escape_md(text: str) -> str:
    return "".join("\\" + c if c in "\\`*_{}[]()#+-.!<>|~" else c for c in text)


def run_row(row: data.RunRow) -> dict[str, Any]:
    """One grid row; pure function of a :class:`data.RunRow` (tested on the sample runs)."""
    out: dict[str, Any] = {
        "id": row.id,
        "run": _escape_md(row.id) if row.error else f"[{_escape_md(row.id)}](/run/{row.id})" + (
            f" · {_escape_md(row.name)}" if row.name and row.name != row.id else ""),  # the id tells runs apart
        "status": "replay" if row.replay and row.status == "finished" else row.status,
        "gpu": row.gpu.replace("NVIDIA ", ""),
        "started": time.strftime("%Y-%m-%d %H:%M", time.localtime(row.start)) if row.start else "",
        "duration_s": row.duration_s,
        "steps_per_s": None, "samples_per_s": None, "gpu_busy": None, "sm_active": None, "mfu": None,
        "top": row.error or "",
    }
    a = row.analysis
    if row.error:
        return out
    if a is None:
        out["top"] = "analysing…"
        return out
    if a.error:  # says "analysis failed: ..." or what could not be read
        if a.broken:  # the run opened, but some of its data cannot be read
            out["status"] = "broken"
        out["top"] = a.error
        return out
    f = a.figures
    if f is not None:
        out.update(steps_per_s=f.steps_per_s, samples_per_s=f.samples_per_s, gpu_busy=f.gpu_busy,
                   sm_active=f.sm_active, mfu=f.mfu_pct)
    sugg = (a.advice or {}).get("suggestions") or []
    if sugg:
        top = sugg[0]
        out["top"] = f"[{top['severity']}] {top['title']} — {top.get('expected_gain') or ''}".rstrip(" —")
    else:
        out["top"] = "no suggestions: nothing found holding this run back"
    if row.status in ("crashed", "interrupted") and row.status_reason:
        out["top"] = f"{row.status}: {row.status_reason} · " + out["top"]
    return out


@callback(
    Output("runs-grid", "rowData"),
    Output("runs-poll", "disabled"),
    Output("runs-note", "children"),
    Output("runs-root", "children"),
    Input("runs-poll", "n_intervals"),
)
def refresh_runs(_n: int) -> tuple[list[dict[str, Any]], bool, str, str]:
    try:
        choice = data.root_choice()
        rows, pending = data.runs()  # what is analysed now; the page polls for the rest
    except GpulensError as exc:
        return [], True, str(exc), ""
    where = root_note(choice)
    pending = pending or choice.showing_samples  # keep polling: the first run of the user's root takes over
    broken = sum(1 for r in rows if r.error)
    note = f"{len(rows)} run(s)" + (f", {broken} unreadable (listed with their error)" if broken else "")
    if pending:
        note += " · updating…"
    return [run_row(r) for r in rows], not pending, note, where


def root_note(choice: data.RootChoice) -> str:
    """Where the list comes from, and how to look elsewhere."""
    root, preferred = fmt.shown_path(choice.root), fmt.shown_path(choice.preferred)
    if choice.showing_samples:
        return (f"sample runs in {root}: your runs will appear here once {preferred} has one "
                "(record with: gpulens run -- python train.py); another folder: gpulens dashboard DIR")
    return f"in {root} (another folder: gpulens dashboard DIR, or set GPULENS_DIR)"


register(__name__, path="/", title="gpulens · runs", name="Runs", order=0, layout=layout)
