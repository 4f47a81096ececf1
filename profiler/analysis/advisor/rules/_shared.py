"""What several rules read the same way: how the run was recorded, how busy the GPU was and how to say
it, whether the profiled steps were typical (numbers are formatted by :mod:`gpulens.fmt`)."""
from __future__ import annotations

from typing import TYPE_CHECKING

from gpulens import fmt

if TYPE_CHECKING:  # measure.py imports the rules' engine at run time: the type only, for the checker
    from gpulens.profiler.analysis.advisor.measure import Measurements
    from gpulens.profiler.analysis.advisor.model import Prediction


def how(m: Measurements, in_track: str, in_run: str) -> str:
    """The hint that fits how the run was recorded: code calling gpulens, or ``gpulens run`` without code."""
    return in_run if m.recorded_by == "gpulens run" else in_track


def predicted_gain(prediction: Prediction, bound: str) -> str:
    """A suggestion's expected gain with its prediction first: ``58% shorter steps predicted (44% to 73%; up to
    84% shorter steps)`` -- the point estimate, its interval, then the upper bound ``bound`` it never exceeds."""
    return (f"{fmt.share(prediction.gain_fraction, 0)} {fmt.gain_words(prediction.measure)} predicted "
            f"({fmt.share(prediction.low, 0)} to {fmt.share(prediction.high, 0)}; {bound})")


#: A measured what-if's change is proposed from this shortening of the median step.
WORTH_PROPOSING = 0.05
#: How far a run with a measured change applied strays from the step its what-if measured (bench/predictions.py
#: --what-if, docs/advisor.md): the measured worker count took 0.85-1.09 times it in 14 pairs over five loading
#: scenarios and 0.94-1.12 in 13 more that checked it (one slow applied run: 1.34); the fused optimizer
#: 0.96-1.07 in 3 pairs.  A prediction's interval takes 0.85-1.15 times the stretch's own, on the step ratio.
WHAT_IF_STEP_ERROR = (0.85, 1.15)


def measured_what_if(m: Measurements, kind: str, what: str,
                     step_error: tuple[float, float] = (1.0, 1.0)) -> tuple[str, Prediction] | None:
    """(finding, prediction) of an ``--what-if autocast=bf16``, ``channels-last`` or ``optimizer=…`` stretch
    (``kind``) that measured a change: the run's own steps with ``what``, against its steady steps (their 95 %
    interval, times ``step_error`` on the step ratio where a test set has measured how far applied runs stray;
    autocast and channels-last have not run on a GPU yet, so theirs is the measurement's only)."""
    from gpulens.profiler.analysis.advisor.model import Prediction

    w = m.what_if
    if w is None or w.kind != kind or w.step_time_change is None:
        return None
    gain = -w.step_time_change
    ci = w.step_time_change_ci or [w.step_time_change, w.step_time_change]
    low, high = 1.0 - (1.0 + ci[1]) * step_error[1], 1.0 - (1.0 + ci[0]) * step_error[0]
    label = fmt.what_if(kind, implementation=w.implementation)
    finding = (f"measured (--what-if {label}, steps {w.first_step}-{w.last_step}): with {what} a step took "
               f"{fmt.seconds(w.step_time_median_s)} against {fmt.seconds(w.baseline_step_time_median_s)} "
               f"({-gain:+.0%})")
    basis = (f"what-if measured: {what} for steps {w.first_step}-{w.last_step} of this run, against its steady "
             + ("steps (95% block-bootstrap interval)" if step_error == (1.0, 1.0) else
                "steps (their 95% interval, widened by the test set's run-to-run error)"))
    return finding, Prediction(gain, min(low, gain), max(high, gain), basis)


def busy_fraction(m: Measurements) -> float:
    """Share of time the GPU runs kernels (kernel view if present, else NVML), 1.0 on CPU runs."""
    if m.kernel_busy_pct is not None:
        return m.kernel_busy_pct / 100.0
    if m.gpu_busy_pct is not None and m.device == "cuda":
        return m.gpu_busy_pct / 100.0
    return 1.0


def busy_words(m: Measurements, outside_data: bool = False) -> str:
    """The GPU's busy share, named as the report and the dashboard's cards name it.

    Two figures exist and differ (kernel time in the profiled steps; NVML's
    "a kernel ran" over the whole run): a finding says which one it uses and
    shows the other beside it, never a bare "busy N%".
    """
    from gpulens import fmt

    nvml = f"GPU busy (NVML, whole run) {fmt.percent(m.gpu_busy_pct)}" if m.gpu_busy_pct is not None else None
    if m.kernel_busy_pct is not None:
        where = "of the profiled steps' time outside data waits" if outside_data else "of the profiled steps' time"
        text = f"kernels run {fmt.share(busy_fraction(m) if not outside_data else _outside(m))} {where}"
        return f"{text} ({nvml})" if nvml else text
    return nvml or "GPU busy unknown"


def _outside(m: Measurements) -> float:
    data = m.phase_share.get("data_wait", 0.0) if m.phase_share else 0.0
    return min(1.0, busy_fraction(m) / max(1e-6, 1.0 - data))


def windows_typical(m: Measurements) -> tuple[bool, str]:
    """Are the profiled steps typical of the run?  (GPM SM activity inside vs outside the windows.)"""
    inside, outside = m.sm_active_windows
    if inside is None or outside is None:
        return True, ""
    typical = abs(inside - outside) <= max(5.0, 0.33 * max(inside, outside))
    return typical, f"GPM SM activity {inside:.0f}% in the profiled steps vs {outside:.0f}% outside them"
