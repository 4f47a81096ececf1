"""Step time that changes during the run: a slowdown at a step, and what changed with it."""
from __future__ import annotations

from gpulens import fmt
from gpulens.profiler.analysis.advisor.measure import Measurements
from gpulens.profiler.analysis.advisor.model import Evidence, Suggestion
from gpulens.profiler.analysis.shifts import Change, Shift
from gpulens.profiler.store.metrics import CATALOG, unit_of

#: What to look at for a slowdown, by the phase that moved.
PHASE_HINTS = {
    "data_wait": "the input pipeline (a cache that stopped fitting, slower storage, workers that died or starved)",
    "forward": "the model's inputs (longer sequences, a new code path) or the device (clocks, memory pressure)",
    "backward": "the model's inputs or the device (clocks, memory pressure, all-reduce waits)",
    "optimizer": "the optimizer (state that moved to the CPU, growing parameter groups, a scheduler's hook)",
    "other": "code outside the timed phases (logging, checkpointing, evaluation inside the step)",
}


def _value(metric: str, v: float) -> str:
    unit = unit_of(metric)
    if unit == "B":
        return fmt.gib(v)
    if unit == "B/s":
        return f"{v / 2**20:.1f} MiB/s"
    if unit == "%":
        return fmt.percent(v, 0)
    return f"{v:.1f} {unit}".strip()


def _changes(changes: list[Change]) -> str:
    out = []
    for c in changes[:3]:
        label = CATALOG[c.metric].label if c.metric in CATALOG else c.metric
        out.append(f"{label} {_value(c.metric, c.before)} -> {_value(c.metric, c.after)}")
    return ", ".join(out)


def _recovery(shifts: list[Shift], s: Shift) -> Shift | None:
    """The later shift that brings the step time back past the middle of ``s`` (a slow episode, not a lasting
    change); a further slowdown or a partial easing right after ``s`` does not end it."""
    mid = (s.before_s * s.after_s) ** 0.5
    later = [x for x in shifts if x.step > s.step and x.after_s <= mid]
    return min(later, key=lambda x: x.step) if later else None


def _slow_steps(shifts: list[Shift], s: Shift) -> int:
    """How many steps ``s``'s slowdown lasted: until it recovered, else to the end of the run."""
    back = _recovery(shifts, s)
    if back is not None:
        return back.step - s.step
    return max(x.step + x.steps_after for x in shifts) - s.step


def _further(shifts: list[Shift], s: Shift, until: int) -> list[Shift]:
    """Later slowdowns on top of ``s`` while it lasted (steps got slower again)."""
    return sorted((x for x in shifts if s.step < x.step < until and x.slower), key=lambda x: x.step)


def step_time_shift(m: Measurements) -> Suggestion | None:
    slow = [s for s in m.shifts if s.slower]
    if not slow:
        return None
    # the slowdown that cost most: its rise times how long the run stayed above its old level, so a
    # slowdown followed by a second one counts for both stretches, not just up to the next change point
    s = max(slow, key=lambda x: (x.after_s - x.before_s) * _slow_steps(m.shifts, x))
    back = _recovery(m.shifts, s)
    n_slow = _slow_steps(m.shifts, s)
    more = _further(m.shifts, s, s.step + n_slow)
    lost = (s.after_s - s.before_s) * n_slow + sum((x.after_s - x.before_s) * (s.step + n_slow - x.step) for x in more)
    total = (m.step_s or s.before_s) * max(m.steps, 1)
    share = min(0.95, lost / total) if total > 0 else 0.0
    t0 = m.t_start or s.t_from
    when = f"at step {s.step} ({fmt.seconds(s.t - t0)} into the run)" if m.t_start else f"at step {s.step}"
    finding = (f"{when} the median step went from {fmt.ms(s.before_s)} to {fmt.ms(s.after_s)} "
               f"({s.ratio:.1f}x)")
    for x in more:
        finding += f", then to {fmt.ms(x.after_s)} at step {x.step}"
    finding += f" for {n_slow} steps, then recovered" if back is not None else f" and stayed there ({n_slow} steps)"
    moved = s.moved
    if moved is not None and s.phases.get(moved):
        a, b = s.phases[moved]
        finding += f"; the {fmt.phase(moved)} phase moved most: {fmt.ms(a)} -> {fmt.ms(b)} per step"
    context = m.shift_context.get(s.step) or []
    if context:
        finding += f"; at the same time: {_changes(context)}"
    events = m.shift_events.get(s.step) or []
    if events:
        finding += f"; events: {'; '.join(events)}"
    look = PHASE_HINTS.get(moved or "other", PHASE_HINTS["other"])
    action = f"Find what changed at step {s.step}: look at {look}."
    captured = m.shift_windows.get(s.step)
    evidence = []
    if captured is not None:  # recorded automatically while the steps were slow
        where = f"window {captured.index}, steps {captured.first_step}-{captured.last_step}" + (
            f", rank {captured.rank}" if captured.rank else "")
        finding += f"; profiled while slow ({where}, captured automatically)"
        action += f" Its kernels and ops while slow are in {where}: compare them with a window before step {s.step}."
        evidence.append(Evidence("window", f"profiled while slow ({where})",
                                 {"rank": captured.rank, "index": captured.index}))
    if any(c.metric in ("host.cpu", "host.cpu_pressure", "host.cpu_steal") and c.after > c.before for c in context):
        action += " The host got busier at that moment: another process may have started (see host contention)."
    if any(c.metric == "gpu.sm_clock" and c.after < c.before for c in context):
        action += " The GPU's clocks dropped at that moment: check its power and temperature."
    severity = "high" if share >= 0.25 else "medium" if share >= 0.05 else "low"
    before_pad = max(5.0, 0.2 * (s.t - s.t_from))
    after_pad = max(5.0, 0.2 * (s.t_to - s.t))
    return Suggestion(
        id="step_time_shift", severity=severity, title=f"Steps got {s.ratio:.1f}x slower at step {s.step}",
        finding=finding, action=action,
        expected_gain=f"up to {fmt.share(share, 0)} of the run's step time",
        gain_estimate="the extra time of the slow steps over the run's total step time",
        confidence="medium",
        evidence=[Evidence("time_range", f"around step {s.step}",
                           {"t0": max(s.t_from, s.t - before_pad), "t1": min(s.t_to, s.t + after_pad)}),
                  Evidence("steps", "step times", {"step": s.step}), *evidence],
        gain_fraction=share)
