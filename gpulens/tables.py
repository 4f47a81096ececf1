"""Rows of text that the terminal report and the dashboard both show: one definition each, so the two
never disagree about a figure's wording."""
from __future__ import annotations

from gpulens import fmt
from gpulens.profiler.analysis.compare import Metric
from gpulens.profiler.analysis.report import NodeEntry

NODE_COLUMNS = ("node", "host", "ranks", "GPUs", "GPU busy", "host CPU", "median step", "vs fastest", "clock")


def node_rows(nodes: list[NodeEntry]) -> list[tuple[str, ...]]:
    """One row of text per machine (``NODE_COLUMNS``): its step time against the fastest node's, its clock
    against rank 0's.  The terminal report and the run page print the same rows."""
    times = [n.step_time_median_s for n in nodes if n.step_time_median_s]
    fastest = min(times) if times else None
    rows: list[tuple[str, ...]] = []
    for n in nodes:
        step = n.step_time_median_s
        offset, err = n.clock_offset_s, n.clock_uncertainty_s
        rows.append((str(n.node_rank), str(n.hostname), ", ".join(str(r) for r in n.ranks),
                     str(len(n.gpus)), fmt.percent(n.gpu_busy_pct), fmt.percent(n.host_cpu_pct),
                     fmt.seconds(step), f"+{(step / fastest - 1) * 100:.1f}%" if step and fastest else "",
                     f"{offset * 1e3:+.2f}±{err * 1e3:.2f} ms" if offset is not None and err is not None else "NTP"))
    return rows


def comparison_value(m: Metric, value: float | None) -> str:
    """A compared figure as the terminal and the dashboard show it."""
    if value is None:
        return "n/a"
    if m.name in ("step_time", "median_step", "wall_per_step"):
        return fmt.seconds(value)
    if m.name == "peak_memory":
        return fmt.bytes_(value)
    if m.unit == "pp" or m.name == "mfu":
        return f"{value:.1f}%"
    if m.name.startswith("energy"):
        return f"{value:,.3g} J"
    if m.name == "power":
        return f"{value:,.0f} W"
    return f"{value:,.0f}/s" if value >= 100 else f"{value:.3g}/s"
