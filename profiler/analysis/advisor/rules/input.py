"""Input pipeline: is the loop waiting for data, and why?"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from gpulens import fmt
from gpulens.profiler.analysis.advisor.measure import Measurements
from gpulens.profiler.analysis.advisor.model import Evidence, NotEvaluated, Prediction, Suggestion
from gpulens.profiler.analysis.advisor.predict_loading import LoadingInputs, LoadingPrediction, predict_workers
from gpulens.profiler.analysis.advisor.rules._shared import WHAT_IF_STEP_ERROR, how, predicted_gain
from gpulens.profiler.store.loader_workers import LoaderWorkers

THRESHOLD = 0.05  # ADVISOR-RULES: data wait > 5% of step time


def wait_share(m: Measurements) -> tuple[float | None, str]:
    if m.imported and m.loader_share_trace is not None:
        return m.loader_share_trace, "DataLoader spans in the profiled steps"
    share = m.phase_share.get("data_wait")
    if share is None and m.loader_share_trace is not None:
        return m.loader_share_trace, "DataLoader spans in the profiled steps"
    return share, "time in the DataLoader, every step"


def suggested_workers(m: Measurements) -> int | None:
    """About one worker per core of this process' share of the host, minus one for the training loop."""
    if not m.cpu_count:
        return None
    return max(1, m.cpu_count // max(1, m.local_world_size) - 1)


def current_workers(m: Measurements) -> int | None:
    return round(m.workers) if m.workers is not None else None


def loading_inputs(m: Measurements, share: float, hidden: float | None) -> LoadingInputs | None:
    """The loading model's inputs from a run (None: no step time or core count)."""
    if not m.step_s or not m.cpu_count:
        return None
    ranks = max(1, m.local_world_size)
    ours = (m.proc_cpu_cores or 0.0) + (m.workers_cpu_cores or 0.0)
    others = max(0.0, m.host_busy_cores / ranks - ours) if m.host_busy_cores is not None else 0.0
    w = m.what_if
    without = w.step_time_median_s if w is not None and w.kind == "synthetic-data" else None
    return LoadingInputs(
        step_s=m.step_s, wait_s=share * m.step_s, workers=current_workers(m) or 0, cores=m.cpu_count / ranks,
        others_cores=others, proc_cores=m.proc_cpu_cores, workers_cores=m.workers_cpu_cores,
        wait_cpu_share=m.wait_cpu_share, wait_runnable_share=m.wait_runnable_share,
        hidden_share=hidden if hidden is not None and hidden >= 0.05 else 0.0, step_without_waits_s=without)


def workers_prediction(m: Measurements, share: float, hidden: float | None,
                       bound: float) -> tuple[int, Prediction] | LoadingPrediction | None:
    """(workers to propose, what they should do); or the model's best when no worker count beyond the run's is
    predicted to shorten the step by ``THRESHOLD`` (the loop's own threads and the workers would share cores
    too few for both); or None where the model cannot say.  The point estimate never exceeds the upper bound
    (the wait that can vanish); the interval may, by the model's measured error: a loop that stops loading in
    its own thread runs its own work a little faster."""
    x = loading_inputs(m, share, hidden)
    p = predict_workers(x) if x is not None else None
    if p is None:
        return None
    if p.gain < THRESHOLD:
        return p
    split = ("measured" if p.split_known else "not measured: the interval spans all-CPU to all-blocked")
    basis = (f"model: loading overlapped with the loop's own work, {_workers(p.workers)} at the CPU the host left "
             f"(a batch costs {fmt.seconds(p.cpu_s)} CPU + {fmt.seconds(p.blocked_s)} blocked, {split}); "
             f"limited by {p.limit}")
    gain = min(p.gain, bound)
    return p.workers, Prediction(gain, min(p.low, gain), max(p.high, gain), basis, measure="mean_step")


def _workers(n: int) -> str:
    return f"{n} worker{'s' if n > 1 else ''}"


def _loader_name(loader: LoaderWorkers) -> str:
    """``the DataLoader (CIFAR10, batch_size=128, SequentialSampler)``; the run's sums are "the DataLoader"."""
    return f"the DataLoader ({fmt.safe_text(loader.label)})" if loader.label else "the DataLoader"


def _loader_advice(m: Measurements, verdict: tuple[int, Prediction] | LoadingPrediction | None = None,
                   measured: MeasuredWorkers | None = None) -> tuple[str, str, dict[str, Any] | None]:
    """(action, snippet, change): never fewer workers than the run has, pinned memory only where a GPU is fed;
    a change only with a prediction (``verdict``: the loading model's, see :func:`workers_prediction`) or a
    ``measured`` worker count that shortened the step (a ``num-workers`` what-if: it overrides the model)."""
    n, have = suggested_workers(m), current_workers(m)
    cuda = m.device == "cuda"
    copies = ", pinned memory with non_blocking copies" if cuda else ""
    change: dict[str, Any] | None = None
    cheaper = ("Make each sample cheaper to load (decode once and cache, lighter transforms, "
               "transforms on batches)")
    if measured is not None and measured.helps:
        n = measured.workers
        action = (f"Load batches in parallel and ahead of time: num_workers={n} (measured in this run: "
                  f"{fmt.share(measured.prediction.gain_fraction, 0)} shorter steps with {_workers(n)}){copies}, "
                  "persistent workers.")
        workers = str(n)
        change = {"num_workers": n, "persistent_workers": True, **({"pin_memory": True} if cuda else {})}
    elif measured is not None:
        action = (f"More workers did not help when measured: {_workers(measured.workers)} changed the step by "
                  f"{-measured.prediction.gain_fraction:+.0%} in this run's what-if. {cheaper}{copies}.")
        workers = str(max(have or 0, 1))
    elif isinstance(verdict, tuple):
        n = verdict[0]
        action = (f"Load batches in parallel and ahead of time: num_workers={n} (the fewest that the loading model "
                  f"says reach the shortest step on {m.cpu_count} cores){copies}, persistent workers.")
        workers = str(n)
        change = {"num_workers": n, "persistent_workers": True, **({"pin_memory": True} if cuda else {})}
    elif verdict is not None:
        best = (f"would shorten the step by only {fmt.share(verdict.gain, 0)}" if verdict.gain > 0 else
                "would not shorten the step")
        now = f"the run has {have}; " if have else ""
        action = (f"More workers are not predicted to help: {now}the best, {_workers(verdict.workers)}, {best} "
                  f"(limited by {verdict.limit}; the loop's own threads and the workers' CPU share "
                  f"{m.cpu_count} cores). {cheaper}{copies}.")
        workers = str(max(have or 0, 1))
    elif have is not None and n is not None and n <= have:
        action = (f"More workers will not help: the run has {have} for {m.cpu_count} cores. Make each sample "
                  f"cheaper to load (see the data-loading suggestion), prefetch deeper and keep the workers "
                  f"alive between epochs{copies}.")
        workers = str(have)
    elif n is not None:
        action = (f"Load batches in parallel and ahead of time: num_workers={n} (about one per core: "
                  f"{m.cpu_count} cores / {m.local_world_size} training process(es), minus one){copies}, "
                  "persistent workers and a deeper prefetch.")
        workers = str(n)
    else:
        action = ("Load batches in parallel and ahead of time: num_workers of about one per free core (this run "
                  f"did not record the core count; 4 is a common start){copies}, persistent workers and a "
                  "deeper prefetch.")
        workers = "4"
    pin = ", pin_memory=True" if cuda else ""
    snippet = (f"loader = DataLoader(dataset, batch_size=..., shuffle=True,\n"
               f"                    num_workers={workers}{pin},\n"
               f"                    persistent_workers=True, prefetch_factor=4)")
    if cuda:
        snippet += ("\nfor x, y in loader:\n"
                    "    x = x.to(device, non_blocking=True); y = y.to(device, non_blocking=True)")
    return action, snippet, change


#: Worker starts after the first worth proposing persistent workers for: this share of the run's training time.
RESTART_SHARE = 0.05
#: What a restart costs the run, as a multiple of the start and stop it measured, and the interval of that
#: multiple, from the prediction test set (bench/predictions.py, docs/advisor.md: 1.2-1.26 in three scenarios,
#: pairs 0.35-1.7 where the gain was 5 %): after each fork the training process' first writes to its memory
#: copy the pages its new children share (copy-on-write), and the gap holds a little more than the two calls.
RESTART_COST, RESTART_LOW, RESTART_HIGH = 1.2, 0.8, 1.6


def worker_restarts(m: Measurements) -> Suggestion | None:
    """DataLoader workers that start again every epoch.  Each epoch forks, starts and joins every worker: time
    between steps (an epoch's steps begin at its first batch), so no step figure shows it, and it grows with
    the workers a loader has -- too many for the cores cost most.  The run measured it; kept alive
    (``persistent_workers=True``), the workers start once."""
    w, span = m.worker_starts, m.span_s
    if w is None or not span:
        return None
    # each loader on its own (a persistent training loader beside an evaluation one that is not); a run recorded
    # before loaders were told apart has only the sums, read as one loader
    again = [one for one in (w.loaders or [w]) if not one.persistent and one.workers >= 1]
    # persistent workers live as long as the loader object that started them: a loader with persistent workers
    # that started them again and again is made again (inside the epoch loop), and persistent_workers cannot help
    remade = [one for one in w.loaders if one.persistent and one.starts >= 3 and one.workers >= 1]
    restarting = again + remade
    restarts = sum(one.starts - 1 for one in restarting)
    if restarts < 2:  # one restart is no pattern
        return None
    saved = sum((one.starts - 1) * one.per_start_s for one in restarting)  # every start but each loader's first,
    share = saved / span  # with its stop, lies between steps
    if share < RESTART_SHARE:
        return None
    gain = min(share * RESTART_COST, 0.99)
    workers = max(one.workers for one in restarting)
    cores = f" on {m.cpu_count} cores" if m.cpu_count else ""
    many = bool(m.cpu_count and workers > m.cpu_count // max(1, m.local_world_size))
    started = "; ".join(
        f"{_loader_name(one)} started its {_workers(one.workers)}{cores} {one.starts} times "
        f"({fmt.seconds(one.per_start_s)} each to fork, start and stop them)" for one in restarting)
    finding = (f"{started[0].upper()}{started[1:]}: {fmt.seconds(saved)} of the {fmt.seconds(span)} from the first "
               f"step to the last, {fmt.share(share, 0)}, between steps, where no step time shows it")
    if many:
        finding += f"; {workers} workers for {m.cpu_count} cores make each start longer"
    if remade:
        finding += (f"; {' and '.join(_loader_name(one) for one in remade)} "
                    f"ha{'s' if len(remade) == 1 else 've'} persistent_workers=True, so each of those starts was a "
                    "new DataLoader")
    kept = [one for one in w.loaders if one.persistent and one not in remade]
    if kept:
        finding += (f"; {' and '.join(_loader_name(one) for one in kept)} "
                    f"{'keeps its' if len(kept) == 1 else 'keep their'} workers between epochs")
    prediction = Prediction(
        gain, share * RESTART_LOW, min(0.99, share * RESTART_HIGH),
        f"measured: the run's {restarts} worker starts after each loader's first, with their stops "
        f"({fmt.seconds(saved)}, {fmt.share(share, 0)} of its time from the first step to the last), times "
        f"{RESTART_COST:g} for the slower steps after each fork (copy-on-write)", measure="wall_per_step")
    actions = []
    if again:
        which = "" if not w.loaders else (" of " + " and ".join(_loader_name(one) for one in again))
        actions.append(f"Keep the workers{which} alive between epochs: persistent_workers=True (they start once; "
                       "each epoch then begins at once with its first batches).")
    if remade:
        actions.append(f"Make {' and '.join(_loader_name(one) for one in remade)} once, before the epoch loop: "
                       "persistent workers live as long as the DataLoader that started them.")
    action = " ".join(actions)
    # as the loader draws its samples: an evaluation loader's are in order
    shuffle = "" if w.loaders and all("RandomSampler" not in one.label for one in restarting) else " shuffle=True,"
    if many:
        action += (f" {workers} workers for {m.cpu_count} cores also fork more processes than the cores can "
                   "run: fewer start faster, where the data wait allows.")
    return Suggestion(
        id="worker_restarts", severity="high" if gain >= 0.2 else "medium",
        title="DataLoader workers start again every epoch",
        finding=finding, action=action,
        snippet=(f"loader = DataLoader(dataset, batch_size=...,{shuffle}\n"
                 f"                    num_workers={workers}, persistent_workers=True)"
                 + ("\nfor epoch in range(epochs):  # the loader made once, above\n    for batch in loader: ..."
                    if remade else "")),
        expected_gain=predicted_gain(prediction, f"{fmt.share(share, 0)} of the training time in the starts and "
                                                 "stops themselves"),
        gain_estimate="the run's own worker starts and stops after the first, over its time from the first "
                      f"step to the last (a share of the training time, not of a step), times {RESTART_COST:g}",
        confidence="high",
        evidence=[Evidence("metric", "DataLoader workers", {"metric": "workers.count"})],
        gain_fraction=gain, change={"persistent_workers": True} if again else None, prediction=prediction)


def dataloader_bound(m: Measurements) -> Suggestion | NotEvaluated | None:
    if m.steps == 0:
        return NotEvaluated("dataloader_bound", how(
            m, "needs step records: call run.step() or iterate run.loader(...)",
            "needs training steps: gpulens run found no optimizer.step, GradScaler.step or backward"))
    share, source = wait_share(m)
    if share is None:
        return NotEvaluated("dataloader_bound", how(
            m, "needs the data wait: iterate the DataLoader through run.loader()",
            "needs the data wait: gpulens run times torch DataLoader fetches, and this loop used none"))
    if share <= THRESHOLD:
        return None
    workers = current_workers(m)
    finding = f"{fmt.share(share)} of step time is spent waiting for the next batch ({source})"
    if m.loader_share_trace is not None and source.startswith("time in"):
        finding += f"; profiled steps: {fmt.share(m.loader_share_trace)} in DataLoader"
    if m.gpu_phase_share and m.gpu_phase_share.get("data_wait") is not None:
        finding += f"; the GPU stream idles through {fmt.share(m.gpu_phase_share['data_wait'])} of its time meanwhile"
    hidden = _hidden_share(m, share)
    if hidden is not None:  # exact: the trace's data-wait ranges and kernels
        finding += f"; the GPU ran work through {fmt.share(hidden, 0)} of the profiled steps' data waits (trace)"
    if workers is not None:
        finding += f"; DataLoader worker processes: {workers}"
    if m.wait_cpu_share is not None:
        blocked = max(0.0, 1.0 - m.wait_cpu_share - (m.wait_runnable_share or 0.0))
        where = "loading in this thread" if not workers else "receiving batches"
        finding += (f"; of the training thread's waits, {fmt.share(m.wait_cpu_share, 0)} computing ({where}), "
                    f"{fmt.share(m.wait_runnable_share or 0.0, 0)} waiting for a CPU, {fmt.share(blocked, 0)} blocked "
                    "(workers, storage, network)")
    # the GPU's work that ran through the waits (queued ahead) must still run once they are gone
    gain = share * (1.0 - hidden) if hidden is not None and hidden >= 0.05 else share
    if gain <= THRESHOLD:
        return None  # the host waits, the GPU does not: nothing to win by loading faster
    severity = "high" if gain >= 0.25 else "medium" if gain >= 0.10 else "low"
    evidence = [Evidence("phase", "data wait per step", {"phase": "data_wait", "share": share}),
                Evidence("metric", "DataLoader workers' CPU", {"metric": "workers.cpu", "gpu": -1})]
    if m.windows:
        w = m.windows[0]
        evidence.append(Evidence("window", "profiled steps", {"rank": w.rank, "index": w.index}))
    verdict = workers_prediction(m, share, hidden, gain)
    tried = measured_workers(m, share, hidden)
    if tried is not None:
        finding += f"; {tried.finding}"
    action, snippet, change = _loader_advice(m, verdict, tried)
    expected = f"up to {fmt.share(gain, 0)} shorter steps"
    estimate = "upper bound: the measured data-wait share, which vanishes when loading overlaps compute"
    if gain < share:
        estimate = (f"upper bound: the data-wait share ({fmt.share(share, 0)}) less the GPU work that runs "
                    f"through the waits ({fmt.share(hidden, 0)} of them in the profiled steps), which must still "
                    "run when they are gone")
    measured = measured_without_waits(m)
    if measured is not None:
        finding += f"; {measured[0]}"
        expected = f"{measured[1]} (measured; estimate {expected})"
        estimate = "measured: the run's --what-if synthetic-data stretch against its own steady steps"
    elif not m.imported and tried is None:
        # the change itself where one is proposed (its what-if loads the run's own batches with N workers)
        test = f"num-workers={change['num_workers']}" if change else "synthetic-data"
        action += how(m, f" To measure the gain first: gpulens.track(..., what_if=\"{test}\").",
                      f" To measure the gain first: gpulens run --what-if {test} -- <your command>.")
    prediction = verdict[1] if isinstance(verdict, tuple) else None
    if tried is not None:
        prediction = tried.prediction if tried.helps else None
    if prediction is not None and measured is None:
        expected = predicted_gain(prediction, expected)
    return Suggestion(
        id="dataloader_bound", severity=severity,
        title="The training loop waits for data",
        finding=finding, action=action, snippet=snippet,
        expected_gain=expected, gain_estimate=estimate,
        confidence="high", evidence=evidence, gain_fraction=gain, change=change, prediction=prediction)


def _hidden_share(m: Measurements, share: float) -> float | None:
    """Share of the data waits the GPU spent running queued work, from the profiled steps' trace -- None
    when the trace cannot say (no ranges, a GPU behind its window) or its waits are not the run's (under
    half the run's mean wait per step: a few short waits say nothing of the long ones)."""
    busy = m.phase_gpu_busy
    traced = busy.phases.get("data_wait") if busy is not None and busy.complete else None
    if traced is None or traced.gpu_busy_share is None or busy is None or not busy.steps or not m.step_s:
        return None
    per_step = traced.host_us / 1e6 / busy.steps
    return traced.gpu_busy_share if per_step >= 0.5 * share * m.step_s else None


def measured_without_waits(m: Measurements) -> tuple[str, str] | None:
    """(finding, gain) of a synthetic-data what-if that ran: the step time the loop reached with no input wait."""
    w = m.what_if
    if w is None or w.kind != "synthetic-data" or w.step_time_change is None:
        return None
    change = w.step_time_change
    ci = w.step_time_change_ci
    sure = f", 95% CI {-ci[1]:.0%} to {-ci[0]:.0%}" if ci else ""
    finding = (f"measured: with replayed batches (steps {w.first_step}-{w.last_step}) a step took "
               f"{fmt.seconds(w.step_time_median_s)} against {fmt.seconds(w.baseline_step_time_median_s)}")
    return finding, f"{-change:.0%} shorter steps{sure}"


@dataclass(frozen=True)
class MeasuredWorkers:
    """A ``num-workers`` what-if that ran: its worker count, what it measured as a prediction, and a finding."""

    workers: int
    prediction: Prediction  # basis "what-if measured: ..."
    finding: str

    @property
    def helps(self) -> bool:
        """Worth proposing: the measured shortening reaches the rule's threshold."""
        return self.prediction.gain_fraction >= THRESHOLD


def measured_workers(m: Measurements, share: float, hidden: float | None) -> MeasuredWorkers | None:
    """A ``--what-if num-workers=N`` stretch's measured change as the prediction for N workers (None: none ran,
    or it measured nothing); the finding names what the loading model predicted for the same N beside it."""
    w = m.what_if
    if w is None or w.kind != "num-workers" or w.step_time_change is None or w.num_workers is None:
        return None
    if w.base_workers is not None and w.num_workers <= w.base_workers:
        return None  # fewer workers than the run has: not a change this rule proposes
    gain = -w.step_time_change
    ci = w.step_time_change_ci or [w.step_time_change, w.step_time_change]
    # the interval is on the step ratio (1 - gain): the stretch's 95 % interval, widened by how far a run with the
    # change applied strayed from its what-if in the test set (docs/advisor.md)
    low = 1.0 - (1.0 + ci[1]) * WHAT_IF_STEP_ERROR[1]
    high = 1.0 - (1.0 + ci[0]) * WHAT_IF_STEP_ERROR[0]
    first = w.measured_from_step if w.measured_from_step is not None else w.first_step
    basis = (f"what-if measured: {_workers(w.num_workers)} loaded steps {first}-{w.last_step} of this run, "
             "against its steady steps (their 95% interval, widened by the test set's run-to-run error)")
    finding = (f"measured (--what-if num-workers={w.num_workers}, steps {first}-{w.last_step}): with "
               f"{_workers(w.num_workers)} a step took {fmt.seconds(w.step_time_median_s)} against "
               f"{fmt.seconds(w.baseline_step_time_median_s)} ({-gain:+.0%})")
    x = loading_inputs(m, share, hidden)
    model = predict_workers(x, w.num_workers) if x is not None else None
    if model is not None:
        finding += f"; the loading model predicted {fmt.share(model.gain, 0)} for {_workers(w.num_workers)}"
    return MeasuredWorkers(w.num_workers, Prediction(gain, min(low, gain), max(high, gain), basis,
                                                     measure="mean_step"), finding)


def worker_headroom(m: Measurements) -> float:
    """The CPU one worker could have had, in cores: the host's cores not used by anything but the workers."""
    if not m.workers:
        return 1.0
    if m.host_busy_cores is None or not m.cpu_count or m.workers_cpu_cores is None:
        return 1.0
    others = max(0.0, m.host_busy_cores - m.workers_cpu_cores)  # the training process and everything else
    free = max(0.05 * m.workers, m.cpu_count - others)
    return min(1.0, free / m.workers)


def dataloader_kind(m: Measurements) -> Suggestion | None:
    """When the loop waits for data and workers exist: are they busy (CPU-bound) or idle (storage-bound)?"""
    share, _ = wait_share(m)
    if share is None or share <= THRESHOLD or not m.workers or m.workers < 0.5 or m.workers_cpu_cores is None:
        return None
    per_worker = m.workers_cpu_cores / m.workers
    # judged against the CPU a worker could have had: on a contended host, CPU-bound workers get less than a core
    headroom = worker_headroom(m)
    host = m.host_cpu_pct
    if per_worker >= 0.6 * headroom:
        saturated = host is not None and host >= 85
        finding = (f"the {m.workers:.0f} DataLoader workers are busy: {per_worker:.0%} of a core each "
                   f"({m.workers_cpu_cores:.1f} cores)")
        if headroom < 0.95:
            finding += f", of about {headroom:.0%} of a core each that the host left them"
        if host is not None:
            finding += f"; host CPU {fmt.percent(host, 0)}"
        cheaper = ("make the per-sample work cheaper (decode once and cache, smaller source images, "
                   "torchvision.transforms.v2 on uint8 tensors, augmentations precomputed offline)")
        n, have = suggested_workers(m), current_workers(m)
        if saturated:
            action = f"The host CPU is saturated: {cheaper}"
            if m.device == "cuda":
                action += ", or move augmentation to the GPU (transforms on batched CUDA tensors, NVIDIA DALI)"
            action += "."
        elif n is not None and have is not None and n > have:
            action = (f"Transforms are CPU-bound and cores are free: raise num_workers from {have} to {n}, "
                      f"and {cheaper}.")
        else:
            action = f"Transforms are CPU-bound: {cheaper}."
        return Suggestion(
            id="dataloader_kind", severity="medium", title="Data loading is CPU-bound in the workers",
            finding=finding, action=action, expected_gain=f"part of the {fmt.share(share, 0)} data wait",
            gain_estimate="bounded by the data-wait share", confidence="medium",
            evidence=[Evidence("metric", "workers' CPU", {"metric": "workers.cpu", "gpu": -1}),
                      Evidence("metric", "host CPU", {"metric": "host.cpu", "gpu": -1})],
            gain_fraction=share * 0.9)
    if per_worker <= 0.3 * headroom and share >= 0.15:
        # idle workers while the loop waits a lot: they wait on reads.  (With a small wait, idle workers only
        # mean the data is cheap -- in-memory datasets -- so that case says nothing.)
        disk = m.disk_read_bps
        finding = (f"the {m.workers:.0f} DataLoader workers are mostly idle ({per_worker:.0%} of a core each) "
                   f"while the loop waits {fmt.share(share)} of the time: they are waiting on storage or the network")
        if disk:
            finding += f" (disk reads {disk / 2**20:.0f} MiB/s)"
        return Suggestion(
            id="dataloader_kind", severity="medium", title="Data loading is I/O-bound",
            finding=finding,
            action=("Hide and cut the read latency: more workers (waiting on reads, they may outnumber the cores) "
                    "and a deeper prefetch_factor, "
                    "cache the dataset in RAM or on local NVMe, pack small files into large shards read "
                    "sequentially (WebDataset, tar/parquet)."),
            snippet=(f"DataLoader(dataset, num_workers={max(2 * (current_workers(m) or 1), 8)}, prefetch_factor=8, "
                     "persistent_workers=True" + (", pin_memory=True)" if m.device == "cuda" else ")")),
            expected_gain=f"part of the {fmt.share(share, 0)} data wait",
            gain_estimate="bounded by the data-wait share",
            confidence="medium", evidence=[Evidence("metric", "workers' CPU", {"metric": "workers.cpu", "gpu": -1}),
                                           Evidence("metric", "disk reads", {"metric": "host.disk_read", "gpu": -1})],
            gain_fraction=share * 0.9)
    return None
