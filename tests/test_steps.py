"""Step and phase recording on real CPU training loops."""
from __future__ import annotations

import sys
import time

import numpy as np
import psutil
import pytest
from torch.utils.data import DataLoader
from train_loops import SlowImages, train_cnn

import gpulens
from gpulens.hooks.track.steps import StepRecorder
from gpulens.profiler.analysis.advisor.rules.input import RESTART_COST
from gpulens.profiler import open_run
from gpulens.profiler.analysis.run_analysis import summarize


def _phase_sum(steps):
    return steps.data_wait + steps.forward + steps.backward + steps.optimizer + steps.other


def test_phases_sum_to_step_time(runs_dir):
    loader = DataLoader(SlowImages(n=160, delay=0.001), batch_size=16)
    with gpulens.track("phases", quiet=True) as run:
        train_cnn(run, loader, epochs=2)
    reader = open_run(run.path)
    steps = reader.steps()
    assert len(steps) == 20
    duration = steps.duration
    assert np.all(np.abs(_phase_sum(steps) - duration) <= 0.05 * duration)
    assert abs(_phase_sum(steps).sum() - duration.sum()) <= 0.05 * duration.sum()
    assert (steps.forward > 0).all() and (steps.backward > 0).all() and (steps.optimizer > 0).all()
    assert (steps.samples == 16).all()  # inferred from the batch
    assert np.isfinite(steps.loss).all()
    assert (steps.flags[:2] & 1).all() and not (steps.flags[2:] & 1).any()  # warm-up steps
    # FLOPs are counted on step 5 (a meta copy of the model runs at its end; the model, not given to track(),
    # was found by a gc walk in step 4): both are left out of throughput, as the profiler window 10-13 is
    assert [f.step for f in reader.flops()] == [5]
    assert [i for i in range(20) if steps.flags[i] & 2] == [4, 5, 10, 11, 12, 13]


def test_input_bound_loop_charges_the_loaders_sleep_to_data_wait(runs_dir):
    loader = DataLoader(SlowImages(n=96, delay=0.004), batch_size=16)  # 16 x 4 ms of sleep per batch
    with gpulens.track("input-bound", quiet=True) as run:
        train_cnn(run, loader, epochs=1)
    reader = open_run(run.path)
    steps = reader.steps()
    # what no load can shorten: every batch's 64 ms of sleep is in its step's data wait (how large a share that
    # is depends on how fast the machine computes: the recorded input-bound sample shows the share)
    assert (steps.data_wait >= 0.064 * 0.999).all(), steps.data_wait
    summary = summarize(reader)
    steady = steps.steady()
    share = summary["step_time"]["phases"]["data_wait"]["share"]
    assert share == pytest.approx(steps.data_wait[steady].sum() / steps.duration[steady].sum(), rel=1e-6)


def test_loader_alone_makes_one_step_per_iteration_and_skips_epoch_gaps(runs_dir):
    loader = DataLoader(SlowImages(n=64), batch_size=16)
    gaps = []
    with gpulens.track("auto", quiet=True) as run:
        for _epoch in range(3):
            train_cnn(run, loader, epochs=1, manual_step=False)
            t0 = time.time()
            time.sleep(0.3)  # "evaluation" between epochs: belongs to no step
            gaps.append((t0, time.time()))
    steps = open_run(run.path).steps()
    assert len(steps) == 12
    # no step covers any part of a gap (judged on the clock the steps are written in, not on how long a step
    # may take on a busy machine); 1 ms of slack for the two clocks' readings
    for a, b in gaps:
        inside = np.minimum(steps.t_end, b) - np.maximum(steps.t_start, a)
        assert inside.max() < 0.001, f"time between epochs leaked into a step ({inside.max():.3f} s)"
    assert np.all(np.abs(_phase_sum(steps) - steps.duration) <= 0.05 * steps.duration)


def test_manual_step_with_loader_does_not_double_count(runs_dir):
    loader = DataLoader(SlowImages(n=64), batch_size=8)
    with gpulens.track("manual", quiet=True) as run:
        train_cnn(run, loader, epochs=2, manual_step=True)
    assert len(open_run(run.path).steps()) == 16


def test_step_without_loader_or_phases_times_the_whole_iteration(runs_dir):
    with gpulens.track("bare", quiet=True, batch_size=32) as run:
        for _ in range(5):
            time.sleep(0.02)
            run.step(tokens=4096)
    steps = open_run(run.path).steps()
    assert len(steps) == 5
    assert np.all(steps.duration[1:] > 0.018)
    assert np.allclose(steps.other, steps.duration, rtol=0, atol=1e-6)  # epoch-float resolution
    assert (steps.samples == 32).all() and (steps.tokens == 4096).all()


class _Clock:
    """The step recorder's clock, moved by the test: phase times that a busy host cannot stretch."""

    def __init__(self) -> None:
        self.now = 1000.0

    def perf_counter(self) -> float:
        return self.now


def test_custom_and_nested_phases_are_charged_exclusively(runs_dir, monkeypatch):
    from gpulens.hooks.track import steps as steps_mod

    clock = _Clock()
    monkeypatch.setattr(steps_mod, "time", clock)
    with gpulens.track("nested", quiet=True) as run:
        for _ in range(3):
            with run.phase("forward"):
                clock.now += 0.01
                with run.phase("allreduce"):
                    clock.now += 0.02
                clock.now += 0.01
            run.step()
    reader = open_run(run.path)
    steps = reader.steps()
    assert len(steps) == 3
    np.testing.assert_allclose(steps.forward, 0.02, atol=1e-6)  # the nested phase is not the forward's
    assert all(abs(e["allreduce"] - 0.02) < 1e-6 for e in steps.extra)
    np.testing.assert_allclose(steps.other, 0.02, atol=1e-6)  # custom phases count as "other" in the split
    np.testing.assert_allclose(steps.duration, 0.04, atol=1e-6)
    custom = summarize(reader)["step_time"]["custom_phases"]
    assert "allreduce" in custom


def test_phase_aliases():
    rows = []
    rec = StepRecorder(rows.append, warmup_steps=0)
    from gpulens.hooks.track.steps import phase_slot

    for name in ("fwd", "bwd", "optim", "data"):
        rec.enter(*phase_slot(name))
        time.sleep(0.002)
        rec.exit()
    rec.step()
    row = rows[0]
    assert all(v >= 0.0015 for v in row[3:7])


def test_hook_cost_per_step_is_microseconds():
    """Not a timing assertion on the machine's speed: a bound that only a bug breaks."""
    rows = []
    rec = StepRecorder(rows.append)
    t0 = time.perf_counter()
    n = 2000
    for _ in range(n):
        for slot in (0, 1, 2, 3):
            rec.enter(slot)
            rec.exit()
        rec.step(loss=1.0)
    per_step = (time.perf_counter() - t0) / n
    assert len(rows) == n
    assert per_step < 500e-6, f"{per_step * 1e6:.0f} µs per step of pure bookkeeping"


@pytest.mark.parametrize("workers", [2])
def test_dataloader_workers_cpu_is_recorded_separately(runs_dir, workers):
    from gpulens.profiler.record.recorder import SamplingConfig

    loader = DataLoader(SlowImages(n=480, cpu_work=60), batch_size=8, num_workers=workers)
    with gpulens.track("workers", quiet=True,
                       sampling=SamplingConfig(workers_interval=0.1, host_interval=0.05)) as run:
        train_cnn(run, loader, epochs=1)
    reader = open_run(run.path)
    count = reader.series("workers.count")
    assert count.v.max() == workers
    assert reader.series("workers.cpu").v.max() > 0.3, "busy workers must show CPU"
    assert reader.series("proc.cpu").v.max() > 0.05


def test_workers_that_start_again_every_epoch_are_timed(runs_dir):
    """Without persistent workers every epoch forks, starts and joins the loader's workers again: time in no
    step, which the run keeps (meta ``loader_workers``) for the advisor; persistent workers start once."""
    for persistent in (False, True):
        loader = DataLoader(SlowImages(n=32, delay=0.0), batch_size=8, num_workers=2,
                            persistent_workers=persistent)
        with gpulens.track(f"restarts-{persistent}", quiet=True, profile=False) as run:
            for _ in range(3):
                for _batch in run.loader(loader):
                    run.step()
            del loader  # persistent workers stop with their iterator: inside the run, as at a script's end
        times = open_run(run.path).info.meta["loader_workers"]
        starts = 1 if persistent else 3
        assert (times["starts"], times["persistent_starts"], times["workers"]) == (starts, starts * persistent, 2)
        assert times["stops"] == starts and times["stop_s"] > 0, times
        assert 0 < times["first_start_s"] <= times["start_s"], times


def test_a_training_loader_and_an_evaluation_loader_are_timed_apart(runs_dir):
    """A persistent training loader beside an evaluation loader that starts its workers for every evaluation:
    the run's sums say "not persistent", each loader's record says which one restarts -- and the advice names it,
    counting only its restarts."""
    from gpulens.profiler.analysis.advisor.measure import Measurements
    from gpulens.profiler.analysis.advisor.rules.input import worker_restarts
    from gpulens.profiler.store.loader_workers import read

    train = DataLoader(SlowImages(n=32, delay=0.0), batch_size=8, shuffle=True, num_workers=2, persistent_workers=True)
    val = DataLoader(SlowImages(n=16, delay=0.0), batch_size=16, num_workers=1)
    with gpulens.track("train-and-eval", quiet=True, profile=False) as run:
        for _ in range(3):
            for _batch in run.loader(train):
                run.step()
            for _batch in val:
                pass
        del train  # persistent workers stop with their iterator: inside the run, as at a script's end
    meta = open_run(run.path).info.meta["loader_workers"]
    assert (meta["starts"], meta["persistent_starts"]) == (4, 1)
    loaders = {one["label"]: one for one in meta["loaders"]}
    assert set(loaders) == {"SlowImages, batch_size=8, RandomSampler", "SlowImages, batch_size=16, SequentialSampler"}
    t, v = loaders["SlowImages, batch_size=8, RandomSampler"], loaders["SlowImages, batch_size=16, SequentialSampler"]
    assert (t["starts"], t["persistent_starts"], t["workers"], t["stops"]) == (1, 1, 2, 1)
    assert (v["starts"], v["persistent_starts"], v["workers"], v["stops"]) == (3, 0, 1, 3)
    assert t["start_s"] + v["start_s"] == pytest.approx(meta["start_s"]) and v["stop_s"] <= meta["stop_s"]
    w = read({"loader_workers": meta})
    saved = 2 * w.loaders[[x.label for x in w.loaders].index(v["label"])].per_start_s
    s = worker_restarts(Measurements(run_id="r", cpu_count=2, span_s=2 * saved, worker_starts=w))
    assert s is not None, "a restart share of one half"
    assert s.finding.startswith("The DataLoader (SlowImages, batch_size=16, SequentialSampler) started its 1 worker "
                                "on 2 cores 3 times")
    assert s.finding.endswith("; the DataLoader (SlowImages, batch_size=8, RandomSampler) keeps its workers between "
                              "epochs")
    assert "of the DataLoader (SlowImages, batch_size=16, SequentialSampler) alive" in s.action
    assert s.prediction.gain_fraction == pytest.approx(min(0.5 * RESTART_COST, 0.99))


def test_a_persistent_loader_made_again_every_epoch_is_one_loader_that_restarts(runs_dir):
    """persistent_workers keeps workers for the DataLoader that started them: made inside the epoch loop, each
    epoch's loader starts its own.  Same label, one loader: three starts, all persistent -- made again."""
    from gpulens.profiler.analysis.advisor.measure import Measurements
    from gpulens.profiler.analysis.advisor.rules.input import worker_restarts
    from gpulens.profiler.store.loader_workers import read

    with gpulens.track("remade", quiet=True, profile=False) as run:
        for _ in range(3):
            loader = DataLoader(SlowImages(n=16, delay=0.0), batch_size=8, num_workers=1, persistent_workers=True)
            for _batch in run.loader(loader):
                run.step()
        del loader
    w = read(open_run(run.path).info.meta)
    (one,) = w.loaders
    assert (one.label, one.starts, one.persistent_starts) == ("SlowImages, batch_size=8, SequentialSampler", 3, 3)
    s = worker_restarts(Measurements(run_id="r", cpu_count=2, span_s=4 * one.per_start_s, worker_starts=w))
    assert s is not None and "has persistent_workers=True, so each of those starts was a new DataLoader" in s.finding
    assert s.action.startswith("Make the DataLoader (SlowImages, batch_size=8, SequentialSampler) once")
    assert s.change is None


def test_multiprocessings_helper_processes_are_not_counted_as_workers():
    """A spawn context (a DataLoader with multiprocessing_context="spawn", a process pool) starts a
    resource tracker beside its workers: it loads no data."""
    import multiprocessing

    from gpulens.profiler.record.proctree import ProcessTree

    with multiprocessing.get_context("spawn").Pool(1) as pool:
        pool.apply(sum, ([1, 2],))  # the worker and the tracker are both up
        tree = ProcessTree()
        everything = psutil.Process().children(recursive=True)
        tracker = [p for p in everything if "resource_tracker" in " ".join(p.cmdline())]
        assert tracker, [p.cmdline() for p in everything]
        others = tree.other_children()
        assert tracker[0].pid not in others and len(others) == len(everything) - len(tracker)
        assert not tree.workers()  # a process pool is no DataLoader


def test_dataloader_workers_are_the_loaders_own_processes_not_every_child(runs_dir):
    """torch.compile's compile workers, the g++ they run, a subprocess of the script: children that load no
    data.  The DataLoader names its workers (hooks/track/loader_workers.py); everything else is another child."""
    import subprocess
    import time

    from gpulens.profiler.record.proctree import ProcessTree

    loader = DataLoader(SlowImages(n=64, delay=0.0), batch_size=8, num_workers=2, persistent_workers=True)
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        from gpulens.profiler.record.recorder import SamplingConfig

        sampling = SamplingConfig(workers_interval=0.1)
        with gpulens.track("who-loads", quiet=True, profile=False, sampling=sampling) as run:
            it = iter(loader)
            next(it)
            loader_pids = {w.pid for w in it._workers}
            tree = ProcessTree(refresh_s=0.0, trainers=run.path / "trainers")
            deadline = time.monotonic() + 30
            while set(tree.workers()) != loader_pids and time.monotonic() < deadline:
                time.sleep(0.05)
            assert set(tree.workers()) == loader_pids
            assert other.pid in tree.other_children() and not loader_pids & set(tree.other_children())
            time.sleep(0.3)  # the run's own sampler reads both groups
            del it
        reader = open_run(run.path)
        assert reader.series("children.count") is not None and reader.series("workers.count") is not None
    finally:
        other.kill()
        other.wait()
    from torch.utils.data import dataloader

    assert not hasattr(dataloader._MultiProcessingDataLoaderIter.__init__, "__wrapped__")  # undone at close
