"""Measurement and analysis, in four sub-packages by job: ``record`` (samplers), ``store`` (the run on
disk: schema, writer, reader, runs root), ``analysis`` (summary, kernel view, advisor: one door,
:class:`RunAnalysis`), ``export`` (Prometheus).

Nothing in here imports Dash or torch: runs are read through :func:`open_run` and understood
through :class:`RunAnalysis`, and viewing a run never needs torch.
"""
from typing import TYPE_CHECKING, Any

from gpulens.profiler.errors import GpulensError, RunError
from gpulens.profiler.store.reader import (
    FlopCount,
    RunReader,
    Series,
    SeriesStats,
    SeriesView,
    StepTable,
    StepView,
    Window,
    open_run,
)
from gpulens.profiler.store.runstore import list_runs, resolve_run, runs_root

if TYPE_CHECKING:  # the type checker sees the class itself; at run time it is imported on first use
    from gpulens.profiler.analysis.run_analysis import RunAnalysis

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
    "RunAnalysis",
]


def __getattr__(name: str) -> Any:
    if name == "RunAnalysis":  # imported on first use: reading a run does not need the analysis modules
        from gpulens.profiler.analysis.run_analysis import RunAnalysis

        return RunAnalysis
    raise AttributeError(f"module 'gpulens.profiler' has no attribute {name!r}")
