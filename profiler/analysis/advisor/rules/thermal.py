"""Power and thermal throttling."""
from __future__ import annotations

from gpulens import fmt
from gpulens.profiler.analysis.advisor.measure import Measurements
from gpulens.profiler.analysis.advisor.model import Evidence, Suggestion
from gpulens.profiler.analysis.advisor.rules._shared import busy_fraction

HARMFUL = ("sw_power_cap", "hw_slowdown", "sw_thermal", "hw_thermal", "hw_power_brake")


def throttling(m: Measurements) -> Suggestion | None:
    """Only when the clocks really drop: a power cap that costs < 5% of the clock is the board at work."""
    reasons = {k: v for k, v in m.throttle.items() if k in HARMFUL and v >= 0.1}
    if not reasons or m.sm_clock_ratio is None or m.sm_clock_ratio >= 0.95:
        return None
    text = ", ".join(f"{k} in {fmt.share(v, 0)} of samples" for k, v in reasons.items())
    thermal = any("thermal" in k or k == "hw_slowdown" for k in reasons)
    gain = (1.0 - m.sm_clock_ratio) * busy_fraction(m)
    return Suggestion(
        id="throttling", severity="medium" if thermal else "low",
        title="The GPU's clocks are held back",
        finding=f"mean SM clock at {fmt.share(m.sm_clock_ratio, 0)} of its maximum; NVML clock-event reasons: {text}",
        action=("Thermal: check cooling and airflow, and neighbours heating the node." if thermal else
                "Power: the board runs at its power limit, which is expected at full load; if the limit is below "
                "the board's default (nvidia-smi -q -d POWER), ask your administrator."),
        expected_gain=f"up to {fmt.share(gain, 0)} of step time at full clocks",
        gain_estimate="(1 - clock ratio) x GPU-busy share: compute-bound kernels speed up with the clock, "
                      "memory-bound ones less", confidence="medium",
        evidence=[Evidence("metric", "clock-event reasons", {"metric": "gpu.throttle", "gpu": 0}),
                  Evidence("metric", "SM clock", {"metric": "gpu.sm_clock", "gpu": 0})],
        gain_fraction=gain)
