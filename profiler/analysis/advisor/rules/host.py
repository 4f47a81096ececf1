"""Host contention: other processes, or the hypervisor, take the CPU the training needs."""
from __future__ import annotations

from typing import Any

from gpulens import fmt
from gpulens.profiler.analysis.advisor.measure import Measurements
from gpulens.profiler.analysis.advisor.model import Evidence, Suggestion

SATURATED_PCT = 85.0  # host CPU busy
PRESSURE_PCT = 20.0  # PSI: some task waited for a CPU this share of the time
STEAL_PCT = 10.0
MIN_OTHERS = 0.5  # cores taken by processes outside the run


def _named(top: dict[str, Any]) -> str:
    """A process name with its PIDs (a name alone may be the user's own script's)."""
    pids = top.get("pids") or []
    if not pids:
        return str(top["name"])
    shown = pids[:3]
    rest = max(int(top.get("processes") or 0), len(pids)) - len(shown)
    return f"{top['name']} (PID {', '.join(str(p) for p in shown)}{f' and {rest} more' if rest else ''})"


def _others_cores(m: Measurements) -> tuple[float | None, str]:
    """Cores used by processes outside this run, and where that figure comes from."""
    if m.others is not None and m.others.get("cores") is not None:
        return float(m.others["cores"]), "per-process scan"
    if m.host_busy_cores is None or m.local_world_size > 1:
        return None, ""  # other ranks of this job would count as others
    ours = (m.proc_cpu_cores or 0.0) + (m.workers_cpu_cores or 0.0)
    return max(0.0, m.host_busy_cores - ours), "host CPU minus this run's"


def host_contention(m: Measurements) -> Suggestion | None:
    if not m.cpu_count:
        return None
    others, source = _others_cores(m)
    steal = m.cpu_steal_pct or 0.0
    busy = m.host_cpu_pct
    pressure = m.cpu_pressure_pct
    saturated = (busy is not None and busy >= SATURATED_PCT) or (pressure is not None and pressure >= PRESSURE_PCT)
    crowded = others is not None and others >= max(MIN_OTHERS, 0.2 * m.cpu_count)
    if not ((saturated and crowded) or steal >= STEAL_PCT):
        return None
    ours = (m.proc_cpu_cores or 0.0) + (m.workers_cpu_cores or 0.0)
    taken = (others or 0.0) + m.cpu_count * steal / 100.0
    parts = []
    if others is not None and crowded:
        parts.append(f"other processes used {others:.1f} of {m.cpu_count} cores ({source}) while this run's "
                     f"training process and workers got {ours:.1f}")
    if steal >= STEAL_PCT:
        parts.append(f"the hypervisor gave {fmt.percent(steal, 0)} of the CPU time to other guests (steal)")
    if busy is not None:
        parts.append(f"host CPU {fmt.percent(busy, 0)} busy")
    if pressure is not None:
        parts.append(f"a runnable task waited for a CPU {fmt.percent(pressure, 0)} of the time (PSI)")
    elif m.runnable is not None:
        parts.append(f"{m.runnable:.1f} runnable tasks on average")
    top = [t for t in (m.others or {}).get("top", []) if t.get("cores", 0) >= 0.05]
    if top:
        parts.append("top: " + ", ".join(f"{_named(t)} {t['cores']:.1f} cores" for t in top[:3]))
    # CPU-bound share of the step: all of it on a CPU run; the data wait (and launch waits) on a GPU run
    launch_wait = (1.0 - (m.kernel_busy_pct or 100.0) / 100.0) * (m.host_wait_share or 0.0)
    bound = 1.0 if m.device != "cuda" else max(m.phase_share.get("data_wait", 0.0) if m.phase_share else 0.0,
                                                launch_wait)
    gain = bound * taken / (ours + taken) if ours + taken > 0 else 0.0
    if gain < 0.02:
        return None
    severity = "high" if gain >= 0.25 else "medium" if gain >= 0.08 else "low"
    names = ", ".join(_named(t) for t in top[:3])
    action = ("Give the training the CPU it needs: run it on a quieter node, or stop or move the other jobs"
              + (f" ({names})" if names else "") + "; on a shared node, reserve cores for it (Slurm --exclusive "
              "or --cpus-per-task, cgroup cpusets, taskset) and size torch threads and num_workers to that "
              "reservation.")
    if steal >= STEAL_PCT:
        action += " Steal comes from the hypervisor: a dedicated or larger instance removes it."
    return Suggestion(
        id="host_contention", severity=severity, title="Other processes take the CPU this run needs",
        finding="; ".join(parts), action=action,
        snippet="torch.set_num_threads(reserved_cores - num_workers)  # threads sized to the cores you own",
        expected_gain=f"up to {fmt.share(gain, 0)} shorter steps",
        gain_estimate=("CPU-bound share of the step x the others' cores over all the cores the run competed for "
                       "(the run's own plus the others')"),
        confidence="medium" if m.others else "low",
        evidence=[Evidence("metric", "host CPU", {"metric": "host.cpu", "gpu": -1}),
                  Evidence("metric", "CPU pressure", {"metric": "host.cpu_pressure", "gpu": -1}),
                  Evidence("metric", "training process CPU", {"metric": "proc.cpu", "gpu": -1})],
        gain_fraction=gain)
