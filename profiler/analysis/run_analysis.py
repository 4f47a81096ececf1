"""``RunAnalysis``: the one door to everything gpulens concludes about a run.

    analysis = RunAnalysis(open_run(path))
    analysis.report()       # what `gpulens report --json` prints (a Report)
    analysis.advice         # ranked suggestions (`gpulens advise`)
    analysis.windows        # each readable profiler window with its trace analysis

Each part is computed once, when first asked for, from the parts before it:
window analyses (parsed traces, kept beside them: :mod:`window_cache`) ->
kernel view -> summary -> measurements -> advice.  The CLI, the dashboard,
the end-of-run advice and the kernels page all come through here.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Any

from gpulens.profiler.analysis import window_cache
from gpulens.profiler.analysis.advisor.engine import advise_measurements
from gpulens.profiler.analysis.advisor.measure import Measurements, measure
from gpulens.profiler.analysis.advisor.model import Advice
from gpulens.profiler.analysis.kernel_view import KernelView, kernel_view
from gpulens.profiler.analysis.report import Report, WindowError
from gpulens.profiler.analysis.summary import RunData, gather, summarize_data
from gpulens.profiler.analysis.trace.result import TraceAnalysis
from gpulens.profiler.errors import RunError
from gpulens.profiler.store.reader import RunReader, Window


@dataclass(frozen=True)
class WindowAnalysis:
    """One profiler window and the analysis of its trace."""

    window: Window
    analysis: TraceAnalysis


class RunAnalysis:
    """Everything gpulens concludes about one run, each part computed once, on demand."""

    def __init__(self, run: RunReader, persist: bool = True) -> None:
        """``persist``: keep window analyses beside their traces (best effort; off: never write to the run)."""
        self.run = run
        self.persist = persist

    @cached_property
    def _windows(self) -> tuple[list[WindowAnalysis], list[WindowError]]:
        done: list[WindowAnalysis] = []
        problems: list[WindowError] = []
        for w in self.run.windows():
            if w.path is None or w.status == "failed":
                problems.append(WindowError(rank=w.rank, window=w.index, error=w.error or "no trace file"))
                continue
            try:
                done.append(WindowAnalysis(w, self._analysis_of(w)))
            except RunError as exc:
                problems.append(WindowError(rank=w.rank, window=w.index, error=str(exc)))
        return done, problems

    def _analysis_of(self, w: Window) -> TraceAnalysis:
        assert w.path is not None
        cached = window_cache.load(w.path, w.rank)
        if cached is not None:
            return cached
        # the parser and the analyzers only on a cache miss: a report of an imported or analysed run reads
        # the analysis kept beside the trace and needs neither
        from gpulens.profiler.analysis.trace.analysis import analyze
        from gpulens.profiler.analysis.trace.parse import load_trace

        analysis = analyze(load_trace(w.path, rank=w.rank))
        if self.persist:
            window_cache.store(w.path, w.rank, analysis)
        return analysis

    @property
    def windows(self) -> list[WindowAnalysis]:
        """Every readable profiler window with its trace analysis."""
        return self._windows[0]

    @property
    def window_problems(self) -> list[WindowError]:
        """Windows whose trace could not be read."""
        return self._windows[1]

    @cached_property
    def kernel_view(self) -> KernelView:
        """All windows combined (the report's kernel keys, with ``windows`` and ``window_errors``)."""
        return kernel_view([(a.window, a.analysis) for a in self.windows],
                           self.window_problems)

    @cached_property
    def data(self) -> RunData:
        return gather(self.run, self.kernel_view)

    @cached_property
    def figures(self) -> Report:
        """The report without its suggestions: what the advisor measures from."""
        return Report.from_parts(summarize_data(self.data), None)

    @cached_property
    def measurements(self) -> Measurements:
        return measure(self.run, [(a.window, a.analysis) for a in self.windows], self.figures)

    @cached_property
    def advice(self) -> Advice:
        return advise_measurements(self.measurements)

    def report(self, suggestions: bool = True) -> Report:
        """``gpulens report --json``; ``suggestions=False`` leaves the advisor out (and never runs it)."""
        if not suggestions:
            return self.figures
        return self.figures.with_advice(self.advice)


def summarize(run: RunReader) -> dict[str, Any]:
    """The report's figures of ``run`` in their JSON form (``report --json`` without ``suggestions``)."""
    return RunAnalysis(run).figures.as_dict()


def advise(run: RunReader) -> Advice:
    """The ranked suggestions for ``run``: a shorthand for ``RunAnalysis(run).advice``."""
    return RunAnalysis(run).advice
