"""Measurement and analysis, in four sub-packages by job: ``record`` (samplers), ``store`` (the run on
disk: schema, writer, reader, runs root), ``analysis`` (summary, kernel view, advisor: one door,
:class:`RunAnalysis`), ``export`` (Prometheus).

Nothing in here imports Dash or torch: runs are read through :func:`open_run` and understood
through :class:`RunAnalysis`, and viewing a run never needs torch.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from gpulens.lazy import lazy_getattr

if TYPE_CHECKING:  # the type checker sees the names; at run time each is imported on first use
    from gpulens.profiler.analysis.run_analysis import RunAnalysis
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

# Lazy, because every gpulens command imports a module of this package (its errors at least): the reader and
# its column code are ~30 ms that `gpulens import`, the recorder and the CLI's argument errors never use.
_LAZY = {
    "GpulensError": "gpulens.profiler.errors",
    "RunError": "gpulens.profiler.errors",
    **dict.fromkeys(["FlopCount", "RunReader", "Series", "SeriesStats", "SeriesView", "StepTable", "StepView",
                     "Window", "open_run"], "gpulens.profiler.store.reader"),
    **dict.fromkeys(["list_runs", "resolve_run", "runs_root"], "gpulens.profiler.store.runstore"),
    "RunAnalysis": "gpulens.profiler.analysis.run_analysis",
}


__getattr__ = lazy_getattr(__name__, globals(), _LAZY)
