"""The advisor: ranked, evidence-backed suggestions from a run's measurements.

Rules are pure functions of :class:`Measurements` (one module per family under
``rules/``); :func:`advise` gathers the measurements from a run through the
reader API and ranks what the rules say.  No Dash, no torch.
"""
from gpulens.profiler.analysis.advisor.engine import advise, advise_measurements
from gpulens.profiler.analysis.advisor.measure import Measurements, measure
from gpulens.profiler.analysis.advisor.model import Advice, Evidence, NotEvaluated, Suggestion

__all__ = ["advise", "advise_measurements", "measure", "Measurements", "Advice", "Suggestion", "Evidence",
           "NotEvaluated"]
