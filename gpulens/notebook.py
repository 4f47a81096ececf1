"""Runs in notebooks and scripts: ``gpulens.load(run)`` and ``gpulens.show(run)``.

``load`` returns a :class:`Run`: its tables as pandas DataFrames (``steps``,
``series``, ``kernels``, ``suggestions``), the report and the advice as
dicts, and an inline HTML view in Jupyter (the headline cards, the top
suggestions and a step-time sparkline).  Every access reads the run again, so
a live run's view moves on with it.  ``show`` returns the dashboard's own
plotly figures (the stacked time series and the step-time breakdown).
"""
from __future__ import annotations

import html
from pathlib import Path
from typing import Any

import numpy as np
from msgspec import UNSET

from gpulens.profiler.analysis.report import Report
from gpulens.profiler.errors import GpulensError

#: Points of the inline sparkline (steps are bucketed to this many medians).
SPARK_POINTS = 120


def _path_of(run: Any, runs_dir: str | Path | None) -> Path:
    """A run argument as a path: a Run, a live TrackedRun, a directory, a run id, or STORE_URL/RUN_ID."""
    if isinstance(run, Run):
        return run.path
    if isinstance(run, (str, Path)):
        from gpulens.profiler import resolve_run
        from gpulens.profiler.store.mirror import local_run
        from gpulens.profiler.store.remote import is_url

        text = str(run)
        return local_run(text) if is_url(text) else resolve_run(text, Path(runs_dir) if runs_dir else None)
    path = getattr(run, "path", None)  # gpulens.track()'s TrackedRun
    if path is None:
        raise GpulensError(f"not a run: {run!r} (a run directory, run id, store URL or a recording "
                           "gpulens.track() run)")
    return Path(path)


class Run:
    """One recorded run as tables, figures and an inline view (see :func:`load`)."""

    def __init__(self, path: Path) -> None:
        from gpulens.profiler import open_run

        with open_run(path) as reader:  # fail here, once, on a missing or foreign run
            self.id = reader.info.id
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"gpulens.Run({self.id!r}, path={str(self.path)!r})"

    def _with(self, fn: Any) -> Any:
        from gpulens.profiler import RunAnalysis, open_run

        with open_run(self.path) as reader:
            return fn(reader, RunAnalysis(reader))

    # ------------------------------------------------------------------ dicts
    @property
    def report(self) -> dict[str, Any]:
        """``gpulens report --json`` (with the suggestions)."""
        return self._with(lambda r, a: a.report().as_dict())

    @property
    def advice(self) -> dict[str, Any]:
        return self._with(lambda r, a: a.advice.as_dict())

    # ------------------------------------------------------------------ DataFrames
    @property
    def steps(self) -> Any:
        """One row per step and rank (columns: docs/run-format.md, "Tables")."""
        from gpulens.profiler.export.frames import steps_frame

        return self._with(lambda r, a: steps_frame(r))

    @property
    def series(self) -> Any:
        """Every reading in long format: rank, metric, gpu, unit, t, value."""
        from gpulens.profiler.export.frames import series_frame

        return self._with(lambda r, a: series_frame(r))

    @property
    def kernels(self) -> Any:
        from gpulens.profiler.export.frames import KERNEL_COLUMNS, kernel_rows, rows_frame

        return self._with(lambda r, a: rows_frame(kernel_rows(a.report(suggestions=False)), KERNEL_COLUMNS))

    @property
    def suggestions(self) -> Any:
        from gpulens.profiler.export.frames import SUGGESTION_COLUMNS, rows_frame, suggestion_rows

        return self._with(lambda r, a: rows_frame(suggestion_rows(a.advice.as_dict()), SUGGESTION_COLUMNS))

    # ------------------------------------------------------------------ figures and HTML
    def figures(self) -> dict[str, Any]:
        return show(self)

    def _repr_html_(self) -> str:
        try:
            return self._with(lambda r, a: render_html(a.report(), r.step_durations(r.primary_rank)
                                                       if r.ranks else np.zeros(0)))
        except GpulensError as exc:
            return f"<div class='gpulens-run'><b>gpulens</b>: {html.escape(str(exc))}</div>"


def load(run: Any, runs_dir: str | Path | None = None) -> Run:
    """A recorded (or live) run: a directory, a run id under the runs root, ``STORE_URL/RUN_ID``, or the
    object ``gpulens.track()`` returned."""
    return Run(_path_of(run, runs_dir))


def show(run: Any, runs_dir: str | Path | None = None, theme: str = "light") -> dict[str, Any]:
    """The dashboard's figures of a run as plotly Figures: ``timeline`` (every panel on one time axis) and
    ``breakdown`` (step time by phase over the run)."""
    import plotly.graph_objects as go

    from gpulens.dashboard import figures, overview, panels
    from gpulens.profiler import RunAnalysis, open_run

    path = _path_of(run, runs_dir)
    with open_run(path) as reader:
        ts = panels.timeseries(reader, width=1200)
        out = {"timeline": go.Figure(figures.timeseries_figure(ts, theme, duration_s=reader.info.duration_s,
                                                               typed_arrays=False))}
        if reader.ranks:
            view = reader.step_view(None, None, None, 1200)
            t, phases, shares = overview.phase_series(view, 400)
            steady = overview.steady_phase_shares(RunAnalysis(reader).figures)
            out["breakdown"] = go.Figure(figures.phase_breakdown_figure(
                t - (reader.info.start or 0.0), phases, steady or shares, theme,
                duration_s=reader.info.duration_s or 0.0,
                share_of="steady steps (as in the advice)" if steady else "all steps"))
    return out


# ---------------------------------------------------------------------------------------------- HTML
def sparkline(durations: np.ndarray, width: int = 240, height: int = 36) -> str:
    """Step time as an inline SVG polyline (medians of equal buckets), slow stretches visible at a glance."""
    d = np.asarray(durations, dtype=np.float64)
    d = d[np.isfinite(d)]
    if d.size < 2:
        return ""
    if d.size > SPARK_POINTS:
        d = np.array([np.median(chunk) for chunk in np.array_split(d, SPARK_POINTS)])
    top = float(np.percentile(d, 99)) or float(d.max()) or 1.0
    x = np.linspace(1, width - 1, d.size)
    y = height - 2 - np.clip(d / top, 0, 1) * (height - 4)
    points = " ".join(f"{a:.1f},{b:.1f}" for a, b in zip(x, y))
    return (f"<svg width='{width}' height='{height}' role='img' aria-label='step time'>"
            f"<polyline fill='none' stroke='#1f77b4' stroke-width='1.2' points='{points}'/></svg>")


def render_html(report: Report, durations: np.ndarray, suggestions: int = 3) -> str:
    """The inline view: title and status, the headline cards, the top suggestions, a step-time sparkline."""
    from gpulens.dashboard.overview import headline

    esc = html.escape
    run = report.run
    cards = "".join(
        f"<div style='border:1px solid #ddd;border-radius:6px;padding:6px 10px;min-width:120px' "
        f"title='{esc(c.title)}'><div style='font-size:11px;color:#666'>{esc(c.label)}</div>"
        f"<div style='font-size:18px;font-weight:600'>{esc(c.value)}</div>"
        f"<div style='font-size:11px;color:#666'>{esc(c.sub)}</div></div>"
        for c in headline(report))
    advice = report.suggestions if report.suggestions is not UNSET else {}
    tips = advice.get("suggestions") or []
    assert isinstance(tips, list)
    items = "".join(f"<li><b>[{esc(s['severity'])}] {esc(s['title'])}</b> — {esc(s['expected_gain'])}"
                    f"<div style='color:#555;font-size:12px'>{esc(s['finding'])}</div></li>"
                    for s in tips[:suggestions])
    median = report.step_time.median_s
    from gpulens import fmt

    spark = sparkline(durations)
    return (
        "<div class='gpulens-run' style='font-family:system-ui,sans-serif;font-size:13px'>"
        f"<div><b>gpulens</b> · {esc(run.name)} · <code>{esc(run.id)}</code> · "
        f"{esc(report.status)} · {report.steps} steps · "
        f"{esc(fmt.seconds(report.duration_s))}"
        "</div>"
        f"<div style='display:flex;flex-wrap:wrap;gap:6px;margin:6px 0'>{cards}</div>"
        + (f"<div>step time (median {esc(fmt.seconds(median))}): {spark}</div>" if spark else "")
        + (f"<ol style='margin:4px 0 0 18px;padding:0'>{items}</ol>" if items
           else "<div>no suggestions: nothing in this run calls for a change</div>")
        + "</div>")
