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

from dataclasses import dataclass, field, fields
from functools import cached_property
from typing import Any

from gpulens.profiler.analysis import window_cache
from gpulens.profiler.analysis.advisor.engine import advise_measurements
from gpulens.profiler.analysis.advisor.measure import Measurements, measure
from gpulens.profiler.analysis.advisor.model import Advice
from gpulens.profiler.analysis.kernel_view import kernel_view
from gpulens.profiler.analysis.summary import RunData, gather, summarize_data
from gpulens.profiler.analysis.trace import load_trace
from gpulens.profiler.analysis.trace.analysis import analyze
from gpulens.profiler.errors import RunError
from gpulens.profiler.store.reader import RunReader, Window


@dataclass(frozen=True)
class WindowAnalysis:
    """One profiler window and the analysis of its trace (:func:`analyze`'s keys)."""

    window: Window
    analysis: dict[str, Any]


@dataclass(frozen=True)
class WindowProblem:
    """A window whose trace could not be read, and why (``window_errors`` in the report)."""

    rank: int
    window: int
    error: str

    def as_dict(self) -> dict[str, Any]:
        return {"rank": self.rank, "window": self.window, "error": self.error}


@dataclass
class Report:
    """``gpulens report --json`` (schema ``gpulens.report/1``): one field per documented key, in its order.

    The nested values keep the shapes the README's key table describes;
    :meth:`as_dict` is what is printed.
    """

    schema: str
    run: dict[str, Any]
    status: str
    status_reason: str | None
    records_lost: dict[str, dict[str, int]]
    duration_s: float | None
    steps: int
    step_time: dict[str, Any]
    throughput: dict[str, Any]
    loss: dict[str, Any] | None
    gpus: list[dict[str, Any]]
    nvml: dict[str, Any]
    host: dict[str, Any]
    memory: dict[str, Any]
    samples: dict[str, Any]
    events: list[dict[str, Any]]
    mfu: dict[str, Any]
    trace_analysis: dict[str, Any]
    windows: list[dict[str, Any]]
    window_errors: list[dict[str, Any]]
    kernels: list[dict[str, Any]]
    categories_us: dict[str, float]
    tensor_core_share: float | None
    tc_eligible_share: float | None
    temporal_breakdown: list[dict[str, Any]]
    gpu_summary: list[dict[str, Any]]
    step_breakdown_us: dict[str, float]
    launch: dict[str, Any] | None
    sync: dict[str, Any]
    memcpy: list[dict[str, Any]]
    idle: list[dict[str, Any]]
    top_cpu_ops: list[dict[str, Any]]
    gemm_shapes: list[dict[str, Any]]
    suggestions: dict[str, Any] | None = field(default=None)

    @classmethod
    def from_parts(cls, summary: dict[str, Any], advice: Advice | None) -> Report:
        names = {f.name for f in fields(cls)}
        extra = set(summary) - names
        if extra:  # the summary and this record must name the same keys: a new key is documented here first
            raise ValueError(f"summary keys without a Report field: {sorted(extra)}")
        return cls(**summary, suggestions=advice.as_dict() if advice is not None else None)

    def as_dict(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        if out["suggestions"] is None:
            del out["suggestions"]
        return out


class RunAnalysis:
    """Everything gpulens concludes about one run, each part computed once, on demand."""

    def __init__(self, run: RunReader, persist: bool = True) -> None:
        """``persist``: keep window analyses beside their traces (best effort; off: never write to the run)."""
        self.run = run
        self.persist = persist

    @cached_property
    def _windows(self) -> tuple[list[WindowAnalysis], list[WindowProblem]]:
        done: list[WindowAnalysis] = []
        problems: list[WindowProblem] = []
        for w in self.run.windows():
            if w.path is None or w.status == "failed":
                problems.append(WindowProblem(w.rank, w.index, w.error or "no trace file"))
                continue
            try:
                done.append(WindowAnalysis(w, self._analysis_of(w)))
            except RunError as exc:
                problems.append(WindowProblem(w.rank, w.index, str(exc)))
        return done, problems

    def _analysis_of(self, w: Window) -> dict[str, Any]:
        assert w.path is not None
        cached = window_cache.load(w.path, w.rank)
        if cached is not None:
            return cached
        analysis = window_cache.normalised(analyze(load_trace(w.path, rank=w.rank)))
        if self.persist:
            window_cache.store(w.path, w.rank, analysis)
        return analysis

    @property
    def windows(self) -> list[WindowAnalysis]:
        """Every readable profiler window with its trace analysis."""
        return self._windows[0]

    @property
    def window_problems(self) -> list[WindowProblem]:
        """Windows whose trace could not be read."""
        return self._windows[1]

    @cached_property
    def kernel_view(self) -> dict[str, Any]:
        """All windows combined (the report's kernel keys, with ``windows`` and ``window_errors``)."""
        return kernel_view([(a.window, a.analysis) for a in self.windows],
                           [p.as_dict() for p in self.window_problems])

    @cached_property
    def data(self) -> RunData:
        return gather(self.run, self.kernel_view)

    @cached_property
    def summary(self) -> dict[str, Any]:
        """The report's figures, without the suggestions."""
        return summarize_data(self.data)

    @cached_property
    def measurements(self) -> Measurements:
        return measure(self.run, [(a.window, a.analysis) for a in self.windows], self.summary)

    @cached_property
    def advice(self) -> Advice:
        return advise_measurements(self.measurements)

    def report(self, suggestions: bool = True) -> Report:
        return Report.from_parts(self.summary, self.advice if suggestions else None)
