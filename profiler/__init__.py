"""Measurement and analysis: samplers, run store, reader API, summaries.

Nothing in here imports Dash or torch: the dashboard and the advisor read runs
through :func:`open_run` alone, and viewing a run must work without torch.
"""
from gpulens.profiler.errors import GpulensError, RunError
from gpulens.profiler.reader import FlopCount, RunReader, Series, SeriesStats, SeriesView, StepTable, StepView, Window, open_run
from gpulens.profiler.runstore import list_runs, resolve_run, runs_root

__all__ = [
    "GpulensError",
    "RunError",
    "RunReader",
    "Series",
    "SeriesView",
    "SeriesStats",
    "StepView",
    "StepTable",
    "Window",
    "FlopCount",
    "open_run",
    "list_runs",
    "resolve_run",
    "runs_root",
]
