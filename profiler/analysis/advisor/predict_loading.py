"""What more DataLoader workers will do to the step: loading overlapped with compute, at the CPU the host gives.

The upper bound ("up to the data-wait share") assumes the wait vanishes.  It does not when loading needs
CPU the host does not have, or when one more worker is not enough: users who followed the bound got
-33 % where it promised "up to 52 %".  This model predicts instead, from what the run measured:

* the loop's own work per step, ``Tc = T - W`` (step time less the data wait; the GPU work that ran
  through the waits stays, as it must still run);
* what one batch costs the loader: CPU seconds ``L_cpu`` and blocked seconds ``L_blk`` (storage, network,
  sleeps).  With ``num_workers=0`` the training thread's own times during its waits split them (its CPU
  clock, its run-queue time from ``/proc/thread-self/schedstat``, the rest blocked); with workers, their CPU per
  step is ``L_cpu``, and the wall time one worker takes per batch (``N0 * T`` when the loop waits on
  them) less its CPU at the rate the host let it run is ``L_blk``;
* the CPU the training process uses for its own work per step, ``M``, and the cores others left it.

With ``N`` workers a step takes the longest of three: the loop's own work ``Tc``; the loaders'
throughput, ``(L_cpu + L_blk) / N``; and the CPU everything needs, ``(M + L_cpu) / cores left`` -- the
first two stretched when the loop's threads and the workers' CPU outnumber the cores (see
:func:`step_with`).  The smallest ``N`` within 2 % of the best is proposed.  Pure functions: the rule
feeds them measurements.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

#: Model error, from the prediction test set (bench/predictions.py, docs/advisor.md): the step reached was
#: 0.68-1.29 times the predicted one; the interval of the gain follows from these factors.  Below: a loop whose
#: loading leaves for workers also runs its own work faster (fewer allocations, warmer caches); above:
#: CPU-bound workers beside a loop whose torch threads keep every core busy get less than a fair share.
STEP_ERROR_LOW, STEP_ERROR_HIGH = 0.65, 1.35
#: Workers proposed at most: blocked loaders may outnumber the cores, but not without end.
MAX_WORKERS = 16
GOOD_ENOUGH = 1.02  # the fewest workers whose step is within 2 % of the best


@dataclass(frozen=True)
class LoadingInputs:
    """Per-step figures of a run whose loop waits for data (seconds; cores)."""

    step_s: float  # median steady step, T
    wait_s: float  # data wait per step, W
    workers: int  # DataLoader workers now, N0 (0: loading in the training process)
    cores: float  # cores this rank may use: the host's over the ranks on it
    others_cores: float = 0.0  # cores other processes kept busy (this rank's part)
    proc_cores: float | None = None  # the training process' mean CPU, cores
    workers_cores: float | None = None  # its workers' mean CPU, cores
    wait_cpu_share: float | None = None  # of the training thread's data-wait time: running
    wait_runnable_share: float | None = None  # ... and runnable, waiting for a CPU
    hidden_share: float = 0.0  # of the data wait, the GPU ran queued work through (must still run)
    step_without_waits_s: float | None = None  # a synthetic-data what-if's measured step


@dataclass(frozen=True)
class LoadingPrediction:
    workers: int
    step_s: float  # predicted median step
    gain: float  # 1 - step_s / T
    low: float
    high: float
    cpu_s: float  # one batch's loading CPU seconds, as modelled
    blocked_s: float  # ... and its blocked seconds
    limit: str  # what bounds the predicted step: "the loop's own work" | "the loaders" | "the CPU"
    split_known: bool  # the CPU/blocked split was measured (else the prediction spans both extremes)


def batch_cost(x: LoadingInputs, cpu_share: float | None = None) -> tuple[float, float] | None:
    """(CPU seconds, blocked seconds) one batch costs the loader, or None when the run cannot say."""
    if x.workers <= 0:
        share = x.wait_cpu_share if cpu_share is None else cpu_share
        if share is None:
            return None
        runnable = x.wait_runnable_share if cpu_share is None and x.wait_runnable_share is not None else 0.0
        share = min(max(share, 0.0), 1.0)
        blocked = max(0.0, 1.0 - share - max(runnable, 0.0))
        return x.wait_s * share, x.wait_s * blocked
    if x.workers_cores is None:
        return None
    cpu = x.workers_cores * x.step_s  # one batch per step
    per_worker_rate = min(1.0, max(0.05, x.cores - x.others_cores) / x.workers)  # the CPU a worker could get
    wall = x.workers * x.step_s  # each worker's time per batch, when the loop waits on them
    return cpu, max(0.0, wall - cpu / per_worker_rate)


def step_with(x: LoadingInputs, workers: int, cost: tuple[float, float]) -> tuple[float, str]:
    """(predicted step seconds, its limit) with ``workers`` workers.

    More runnable threads than cores slow every one of them: the loop's own work, which runs on ``k`` threads
    (torch's intra-op threads on a CPU run: a parallel region waits for its slowest thread), and the workers'
    CPU part each stretch by ``(k + d) / cores``, ``d`` the workers' CPU duty (each one's CPU share of its
    time per batch)."""
    cpu, blocked = cost
    own = x.step_without_waits_s if x.step_without_waits_s else x.step_s - x.wait_s * (1.0 - x.hidden_share)
    own = max(own, 1e-9)
    n = max(workers, 1)
    cores = max(0.5, x.cores - x.others_cores)
    if x.proc_cores is not None:
        # the training process' CPU per step, less what it spent loading (num_workers=0): its own work
        own_cpu = max(0.0, x.proc_cores * x.step_s - (cpu if x.workers <= 0 else 0.0))
    else:
        own_cpu = own  # one thread, busy through the loop's own work
    threads = min(own_cpu / own, cores)  # the loop's own work: cores it keeps busy
    duty = n * cpu / (cpu + blocked) if cpu + blocked > 0 else 0.0
    stretch = max(1.0, (threads + duty) / cores)
    own_step = own * (1.0 + (stretch - 1.0) * min(1.0, threads))  # a loop waiting on its GPU stretches less
    loaders = (cpu * stretch + blocked) / n
    cpu_bound = (own_cpu + cpu) / cores
    step = max(own_step, loaders, cpu_bound)
    limit = "the loop's own work" if step == own_step else "the loaders" if step == loaders else "the CPU"
    return step, limit


#: Other processes' CPU (cores) from which the host counts as contended: what they leave a new worker then
#: depends on the scheduler's fair share, which the interval spans (from "they keep it" to "they yield it").
CONTENDED_CORES = 0.25


def predict_workers(x: LoadingInputs, workers: int | None = None) -> LoadingPrediction | None:
    """The prediction for ``workers`` workers, or for the fewest that reach the best step (None: the run
    cannot say, or it has MAX_WORKERS already).  Whether that step is worth a change is the rule's call."""
    if x.step_s <= 0 or x.wait_s <= 0:
        return None
    split_known = True
    cost = batch_cost(x)
    if cost is None:
        if x.workers > 0:
            return None
        split_known = False
        cost = batch_cost(x, cpu_share=0.5)
        assert cost is not None
    if workers is None:
        options = range(max(1, x.workers + 1), MAX_WORKERS + 1)
        steps = {n: step_with(x, n, cost)[0] for n in options}
        if not steps:
            return None
        best = min(steps.values())
        workers = next(n for n in options if steps[n] <= best * GOOD_ENOUGH)
    step, limit = step_with(x, workers, cost)
    ends = [step]
    if not split_known:  # all CPU or all blocked: the interval spans both
        ends += [step_with(x, workers, c)[0] for c in (batch_cost(x, 0.0), batch_cost(x, 1.0)) if c is not None]
    if x.others_cores >= CONTENDED_CORES:
        yielded = replace(x, others_cores=0.0)
        ends += [step_with(yielded, workers, c)[0] for c in ([cost] if split_known else
                                                             [batch_cost(yielded, 0.0), batch_cost(yielded, 1.0)])
                 if c is not None]
    low_step, high_step = min(ends) * STEP_ERROR_LOW, max(ends) * STEP_ERROR_HIGH
    T = x.step_s
    return LoadingPrediction(workers=workers, step_s=step, gain=1.0 - step / T, low=1.0 - high_step / T,
                             high=1.0 - low_step / T, cpu_s=cost[0], blocked_s=cost[1], limit=limit,
                             split_known=split_known)
