"""The advisor: ranked, evidence-backed suggestions from a run's measurements.

Rules are pure functions of :class:`Measurements` (one module per family under
``rules/``); :func:`measure` gathers the measurements from a run's report and
reader, :func:`advise_measurements` ranks what the rules say; ``RunAnalysis(run).advice``
(:mod:`gpulens.profiler.analysis.run_analysis`) does both for a run.  No Dash, no torch.
"""
from gpulens.profiler.analysis.advisor.engine import advise_measurements
from gpulens.profiler.analysis.advisor.measure import Measurements, measure
from gpulens.profiler.analysis.advisor.model import Advice, Evidence, NotEvaluated, Suggestion

__all__ = ["advise_measurements", "measure", "Measurements", "Advice", "Suggestion", "Evidence",
           "NotEvaluated"]
