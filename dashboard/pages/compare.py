"""Two runs side by side: throughput, step breakdown, utilization distributions, kernels, configuration."""
from __future__ import annotations

import time
from typing import Any

from dash import Input, Output, callback, dcc, html

from gpulens.dashboard import comparison, data, figures
from gpulens.dashboard import components as ui
from gpulens.dashboard import theme as th
from gpulens.dashboard.pages import register
from gpulens.profiler import GpulensError
from gpulens.profiler.store.reader import PHASE_COLUMNS

AB_COLORS = ["#0072B2", "#E69F00"]


def _options() -> list[dict[str, str]]:
    try:
        rows, _ = data.runs(wait=0.0)
    except GpulensError:
        return []
    return [{"label": run_label(r), "value": r.id} for r in rows if not r.error]


def run_label(r: data.RunRow) -> str:
    """``base-2 · train · 2026-12-05 14:02 · finished``: the id first (two runs of one script share a
    name), the name where it says more, the start."""
    parts = [r.id]
    if r.name and r.name != r.id:
        parts.append(r.name)
    if r.start:
        parts.append(time.strftime("%Y-%m-%d %H:%M", time.localtime(r.start)))
    return " · ".join([*parts, r.status])


def layout(a: str | None = None, b: str | None = None, **_: Any) -> html.Div:
    options = _options()
    ids = [o["value"] for o in options]
    if a not in ids:
        a = ids[0] if ids else None
    if b not in ids:
        b = next((i for i in ids if i != a), None)
    return html.Div([
        html.Div([html.H2("Compare runs")], className="page-head"),
        html.Div([
            html.Div([html.Label("A", className="ab ab-a"), dcc.Dropdown(id="cmp-a", options=options, value=a,
                                                                           clearable=False)], className="ab-pick"),
            html.Div([html.Label("B", className="ab ab-b"), dcc.Dropdown(id="cmp-b", options=options, value=b,
                                                                           clearable=False)], className="ab-pick"),
        ], className="two-col"),
        ui.analysis_poll("cmp-analysis-poll"),
        dcc.Loading(html.Div(id="cmp-body"), type="dot"),
    ], className="page")


def _table(rows: list[dict[str, Any]], cols: list[tuple[str, str]], cid: str, row_class=None) -> html.Table:
    return html.Table([
        html.Thead(html.Tr([html.Th(label) for _, label in cols])),
        html.Tbody([html.Tr([html.Td(str(r.get(k, ""))) for k, _ in cols],
                            className=row_class(r) if row_class else "") for r in rows]),
    ], className="table", id=cid)


@callback(Output("cmp-body", "children"), Output("cmp-analysis-poll", "max_intervals"), Input("cmp-a", "value"),
          Input("cmp-b", "value"), Input("theme", "data"), Input("cmp-analysis-poll", "n_intervals"))
def compare(a_id: str | None, b_id: str | None, theme: str | None, poll: int | None) -> tuple[Any, int]:
    if not a_id or not b_id:
        return ui.notice("Pick two runs to compare (the runs root needs at least two).", "info"), ui.POLL_DONE
    try:
        ra, rb = data.reader(a_id), data.reader(b_id)
        aa, ab = data.analysis(a_id), data.analysis(b_id)  # both started at once, neither waited for
    except GpulensError as exc:
        return ui.notice(str(exc), "error", cid="cmp-error"), ui.POLL_DONE
    if aa is None or ab is None:
        return ui.analysing("these runs"), ui.poll_again(poll)
    for run, an in ((ra, aa), (rb, ab)):
        if an.report is None:
            return ui.notice(f"{run.info.name}: {an.error}", "error", cid="cmp-error"), ui.POLL_DONE
    return _comparison(ra, aa, rb, ab, theme or "light"), ui.POLL_DONE


def _comparison(ra: Any, aa: data.Analysis, rb: Any, ab: data.Analysis, theme: str) -> Any:
    assert aa.report is not None and ab.report is not None
    sa, sb = aa.report, ab.report
    na, nb = f"A: {ra.info.name}", f"B: {rb.info.name}"
    head, fixes = comparison.headline_rows(ra, sa, rb, sb, aa.advice)
    head_table = _table(head, [("metric", ""), ("a", na), ("b", nb), ("change", "B vs A"), ("ci", "95% CI"),
                               ("verdict", "verdict")], "cmp-headline",
                        lambda r: r["verdict"] if r["verdict"] in ("better", "worse") else "")
    fix_part: list[Any] = []
    if fixes:
        fix_part = [html.H3("Predicted and got"),
                    html.Div("Changes A's suggestions proposed that B applied: the median step's predicted shortening "
                             "beside what B got (95% CI).", className="muted"),
                    _table(fixes, [("suggestion", "suggestion"), ("applied", "applied in B"),
                                   ("predicted", "predicted"), ("got", "got"), ("held", "")], "cmp-fixes",
                           lambda r: "better" if r["held"] == "inside" else "worse" if r["held"] == "outside" else "")]
    phases_a, phases_b = sa.step_time.phases, sb.step_time.phases
    steps_fig = figures.grouped_bars_figure(
        [th.PHASE_LABELS[p] for p in PHASE_COLUMNS],
        {na: [(ph.mean_s if (ph := phases_a.get(p)) else 0.0) * 1e3 for p in PHASE_COLUMNS],
         nb: [(ph.mean_s if (ph := phases_b.get(p)) else 0.0) * 1e3 for p in PHASE_COLUMNS]},
        AB_COLORS, "ms per step", "Step time by phase (mean per steady step)", theme)
    metric = "gpm.sm_active" if all(comparison.gpu_mean(s, "gpm.sm_active") is not None for s in (sa, sb)) \
        else "gpu.util"
    dists = {}
    for name, run in ((na, ra), (nb, rb)):
        gpus = run.gpus_recorded()
        if gpus:
            view = run.series_view(metric, gpus[0], max_points=4000)
            if view is not None and len(view):
                dists[name] = comparison.histogram(view.v)
    what = "SM activity" if metric.startswith("gpm") else "GPU busy"
    dist_fig = figures.distribution_figure(dists, AB_COLORS, f"{what} "
                                           f"(%) of GPU 0", theme) if dists else \
        figures.empty_figure("no GPU utilization recorded in these runs", theme)
    kd = comparison.kernel_deltas(sa, sb)
    kd_rows = [{"name": r["name"][:120], "category": r["category"], "a": f"{r['a_us_per_step']:.1f}",
                "b": f"{r['b_us_per_step']:.1f}", "delta": f"{r['delta_us']:+.1f}", "only": r["only"]} for r in kd]
    kd_table = _table(kd_rows, [("name", "kernel"), ("category", "category"), ("a", "A µs/step"), ("b", "B µs/step"),
                                ("delta", "Δ µs/step"), ("only", "only in")], "cmp-kernels") if kd_rows else \
        html.Div("Kernel deltas need profiler windows in both runs.", className="muted")
    cfg = comparison.config_diff(sa, sb)
    cfg_table = _table(cfg, [("key", "setting"), ("a", na), ("b", nb)], "cmp-config",
                       lambda r: "changed" if r["changed"] else "")
    notes = []
    bs_a, bs_b = sa.run.batch_size, sb.run.batch_size
    if bs_a and bs_b and bs_a != bs_b:
        notes.append(ui.notice(f"Batch sizes differ ({bs_a} vs {bs_b}): compare samples/s, not steps/s or step time.",
                               "info", cid="cmp-batch-note"))
    return html.Div([
        html.H3("Headline"), *notes,
        html.Div("Each change has a 95% interval from resampling blocks of steady steps (or readings); a change "
                 "whose interval includes zero gets no verdict. The same rows as gpulens compare A B, whose "
                 "--fail-on turns them into a CI gate.", className="muted"),
        head_table, *fix_part,
        html.Div([dcc.Graph(figure=steps_fig, id="cmp-steps", config={"displaylogo": False}),
                  dcc.Graph(figure=dist_fig, id="cmp-dist", config={"displaylogo": False})], className="two-col"),
        html.Div([html.H3("Over the run"),
                  dcc.RadioItems(id="cmp-align", value="step", inline=True, className="radio",
                                 options=[{"label": "aligned by step", "value": "step"},
                                          {"label": "by time since start", "value": "time"}])],
                 className="section-head"),
        dcc.Graph(id="cmp-overlay", config={"displaylogo": False}, figure=figures.empty_figure("loading…", theme)),
        html.H3("Kernel time per profiled step"), kd_table,
        html.H3("What changed in the setup"), cfg_table,
    ])


@callback(Output("cmp-overlay", "figure"), Input("cmp-a", "value"), Input("cmp-b", "value"),
          Input("cmp-align", "value"), Input("theme", "data"))
def overlay_figure(a_id: str | None, b_id: str | None, align: str | None, theme: str | None) -> Any:
    """Both runs' step time and utilisation on one axis: where one run got slow, the other did not."""
    theme = theme or "light"
    align = "time" if align == "time" else "step"
    try:
        ra, rb = data.reader(a_id), data.reader(b_id)
    except GpulensError as exc:
        return figures.empty_figure(str(exc), theme)
    chosen = comparison.overlay_metric([ra, rb])
    metric, title = chosen if chosen is not None else (None, "")
    lines = {f"{ab}: {r.info.name}": comparison.overlay(r, align, metric) for ab, r in (("A", ra), ("B", rb))}
    panels = [("Step time (ms)", {k: v["step"] for k, v in lines.items() if "step" in v})]
    if metric is not None:
        panels.append((title, {k: v["metric"] for k, v in lines.items() if "metric" in v}))
    xtitle = "steps done" if align == "step" else "time since start (s)"
    return figures.overlay_figure(panels, AB_COLORS, xtitle, theme, uirevision=f"{a_id}-{b_id}-{align}")


register(__name__, path="/compare", title="gpulens · compare", name="Compare", order=1, layout=layout)
