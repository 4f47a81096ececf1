"""Measured what-ifs (hooks/track/whatif.py, profiler/analysis/whatif.py): a stretch of the real CPU training loop
run with replayed batches or at another batch size, flagged, left out of throughput, and measured."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from gpulens.hooks.track.whatif import FLAG_WHATIF, SETTLE_STEPS, WhatIf, WhatIfPlan, parse_what_if, resize_batch  # noqa: E402
from gpulens.profiler import RunAnalysis, open_run  # noqa: E402
from gpulens.profiler.errors import GpulensError  # noqa: E402

GPULENS = str(Path(sys.executable).with_name("gpulens"))

#: An input-bound loop in the style of the tutorials: the collate function sleeps (slow storage),
#: the model is tiny, one optimizer step per batch; stops after 70 iterations.
SLOW_LOADER = textwrap.dedent("""
    import sys, time, torch, torch.nn as nn
    from torch.utils.data import DataLoader, Dataset

    class Rows(Dataset):
        def __len__(self): return 8192
        def __getitem__(self, i): return torch.randn(32), torch.randint(0, 4, ()).long()

    def collate(items):
        time.sleep(0.006)
        xs, ys = zip(*items)
        return torch.stack(xs), torch.stack(ys)

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(32, 128), nn.ReLU(), nn.Linear(128, 4))
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    seen = []
    for step, (x, y) in enumerate(DataLoader(Rows(), batch_size=64, collate_fn=collate)):
        seen.append(tuple(x.shape))
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward(); opt.step(); opt.zero_grad()
        if step == 69:
            break
    print("shapes", sorted(set(seen)))
""")


def _run(tmp_path: Path, *flags: str) -> subprocess.CompletedProcess:
    script = tmp_path / "train.py"
    script.write_text(SLOW_LOADER)
    env = {k: v for k, v in os.environ.items() if not k.startswith("GPULENS_")}
    return subprocess.run([GPULENS, "run", "--runs-dir", str(tmp_path / "runs"), "--run-id", "r", "--no-advise",
                           "--profile-every", "0", *flags, "--", sys.executable, str(script)],
                          capture_output=True, text=True, timeout=180, env=env)


def test_the_what_if_gain_on_a_chosen_timeline(tmp_path: Path) -> None:
    """6 ms of data wait and 4 ms of compute per step; steps 10-29 replay batches (no wait): 60 % shorter."""
    from timeline import noisy, write_run

    n = 80
    compute = noisy(n, seed=7, scale=0.004, sigma=0.05, spikes=0.0)
    wait = np.full(n, 0.006)
    wait[10:30] = 0.00005
    flags = np.zeros(n, dtype=int)
    flags[10:30 + SETTLE_STEPS] = FLAG_WHATIF
    path = write_run(tmp_path / "what-if", {"data_wait": wait, "forward": 0.5 * compute, "backward": 0.5 * compute},
                     samples=64, flags=flags, meta={"what_if": {"kind": "synthetic-data", "status": "done",
                                                                "first_step": 10, "last_step": 29, "base_batch": 64}})
    with open_run(path) as run:
        analysis = RunAnalysis(run)
        w = analysis.report().as_dict()["what_if"]
        bound = next(s for s in analysis.advice.suggestions if s.id == "dataloader_bound")
    expected = float(np.median(compute[10:30] + 0.00005) / np.median((compute + wait)[2:10].tolist()
                                                                       + (compute + wait)[30 + SETTLE_STEPS:].tolist())
                     - 1)
    assert w["step_time_change"] == pytest.approx(expected, abs=1e-4) and -0.65 < expected < -0.55  # epoch floats
    low, high = w["step_time_change_ci"]
    assert low < w["step_time_change"] < high < 0
    assert w["data_wait_median_s"] < 0.001 < w["baseline_data_wait_median_s"]
    assert "measured: with replayed batches (steps 10-29)" in bound.finding


def test_synthetic_data_measures_the_loop_without_input_waits(tmp_path: Path) -> None:
    proc = _run(tmp_path, "--what-if", "synthetic-data:at=10,steps=20")
    assert proc.returncode == 0, proc.stderr
    assert "shapes [(64, 32)]" in proc.stdout  # the loop saw the loader's batches, replays included
    with open_run(tmp_path / "runs" / "r") as run:
        steps = run.steps()
        analysis = RunAnalysis(run)
        report = analysis.report().as_dict()
        advice = analysis.advice
    flagged = steps.step[(steps.flags & FLAG_WHATIF) != 0]
    assert list(flagged) == list(range(10, 30 + SETTLE_STEPS))  # the stretch and its settling steps
    w = report["what_if"]
    assert w["status"] == "done" and w["steps"] == 20 and w["base_batch"] == 64
    # the collate sleep is 6 ms: the stretch waits for no batch. Whether and how much its steps are shorter is
    # judged on a chosen timeline (test_the_what_if_gain_on_a_chosen_timeline): under four CPU burners the
    # stretch measured 2.5x slower here, the compute's noise swamping the 6 ms it saved
    low, high = w["step_time_change_ci"]
    assert np.isfinite(w["step_time_change"]) and low <= w["step_time_change"] <= high
    assert w["data_wait_median_s"] < w["baseline_data_wait_median_s"] and w["baseline_data_wait_median_s"] > 0.006
    # the run's own figures leave the stretch out
    assert report["step_time"]["excluded"]["what_if"] == 20 + SETTLE_STEPS
    assert report["step_time"]["median_s"] > 0.005
    # the run page: a card with the measured step time, and the stretch shaded on the time axis
    from gpulens.dashboard.overview import headline
    from gpulens.dashboard.panels import marks
    from gpulens.profiler.analysis.report import Report, read_section

    card = next(c for c in headline(read_section(report, Report)) if c.key == "what_if")
    assert card.available and card.label == "What-if: synthetic data" and "CI" in card.sub
    with open_run(tmp_path / "runs" / "r") as run:
        shaded = [m for m in marks(run, run.info.start) if m.kind == "what_if"]
    assert len(shaded) == 1 and shaded[0].t1 > shaded[0].t0 and shaded[0].label == "what-if: synthetic-data"
    bound = next(s for s in advice.suggestions if s.id == "dataloader_bound")
    assert "measured: with replayed batches (steps 10-29)" in bound.finding
    assert "(measured; estimate up to" in bound.expected_gain


def test_batch_size_what_if_trains_at_the_asked_size(tmp_path: Path) -> None:
    proc = _run(tmp_path, "--what-if", "batch-size=96:at=8,steps=12")
    assert proc.returncode == 0, proc.stderr
    assert "(96, 32)" in proc.stdout and "(64, 32)" in proc.stdout
    with open_run(tmp_path / "runs" / "r") as run:
        steps = run.steps()
        report = RunAnalysis(run).report().as_dict()
    stretch = (steps.step >= 8) & (steps.step < 20)
    assert set(steps.samples[stretch]) == {96}
    assert set(steps.samples[steps.steady()]) == {64}
    w = report["what_if"]
    assert w["kind"] == "batch-size" and w["batch_size"] == 96 and w["status"] == "done"
    assert w["measure"] == "step time without data wait"
    assert w["samples_per_s"] and w["baseline_samples_per_s"]


def test_track_api_and_a_run_too_short_for_the_stretch(tmp_path: Path) -> None:
    import gpulens

    model = torch.nn.Linear(8, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    data = [torch.randn(16, 8) for _ in range(12)]
    with gpulens.track("short", runs_dir=tmp_path, what_if="synthetic-data", quiet=True, profile=False) as run:
        for x in run.loader(data):
            model(x).sum().backward()
            opt.step()
            opt.zero_grad()
    with open_run(run.path) as reader:
        w = RunAnalysis(reader).report().as_dict()["what_if"]
    assert w["status"] == "not reached" and "ended before step 20" in w["reason"]


def test_a_loop_without_a_dataloader_is_told_why_nothing_was_measured(tmp_path: Path) -> None:
    import gpulens

    model = torch.nn.Linear(8, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with gpulens.track("no-loader", runs_dir=tmp_path, what_if="synthetic-data:at=5,steps=5", quiet=True,
                       profile=False) as run:
        for _ in range(30):  # batches made in the loop: nothing to replay
            model(torch.randn(4, 8)).sum().backward()
            opt.step()
            opt.zero_grad()
            run.step()
    with open_run(run.path) as reader:
        w = RunAnalysis(reader).report().as_dict()["what_if"]
    assert w["status"] == "not reached" and "DataLoader gpulens sees" in w["reason"]


def test_track_api_replays_through_run_loader(tmp_path: Path) -> None:
    import gpulens

    model = torch.nn.Linear(8, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    data = [torch.full((16, 8), float(i)) for i in range(40)]
    seen = []
    with gpulens.track("replay", runs_dir=tmp_path, what_if="synthetic-data:at=5,steps=6", quiet=True,
                       profile=False) as run:
        for x in run.loader(data):
            seen.append(float(x[0, 0]))
            if len(seen) <= 5:
                x.mul_(0)  # changing the loader's batch in place leaves the cached copy as it was fetched
            model(x).sum().backward()
            opt.step()
            opt.zero_grad()
            run.step()
    assert seen[:5] == [0, 1, 2, 3, 4]
    assert seen[5:11] == [3, 4, 3, 4, 3, 4]  # the two batches before the stretch, replayed
    assert seen[11] == 5  # the loader resumes where it stopped: no batch skipped
    assert len(seen) == 46


def test_parse_what_if() -> None:
    assert parse_what_if("synthetic-data") == WhatIfPlan("synthetic-data")
    assert parse_what_if("batch-size=256:at=50,steps=30") == WhatIfPlan("batch-size", 50, 30, 256)
    for bad in ("synthetic", "batch-size", "batch-size=0", "batch-size=x", "synthetic-data:at=1",
                "synthetic-data:every=3"):
        with pytest.raises(GpulensError):
            parse_what_if(bad)


def test_bad_what_if_on_the_command_line_is_one_line(tmp_path: Path) -> None:
    proc = _run(tmp_path, "--what-if", "batch-size=lots")
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "batch size must be a whole number" in proc.stderr
    assert not (tmp_path / "runs").exists()


def test_a_batch_size_over_the_probe_limit_is_refused_not_tried() -> None:
    said: list[dict] = []
    whatif = WhatIf(WhatIfPlan("batch-size", at=3, steps=4, batch_size=512), lambda **kw: said.append(kw),
                    limit=lambda: 256)
    batches = iter([torch.randn(128, 4) for _ in range(10)])
    got = [whatif.fetch(step, lambda: next(batches)) for step in range(8)]
    assert all(b.shape == (128, 4) for b in got)  # never the asked size
    assert whatif.state == "skipped" and "probe found at most 256" in (whatif.reason or "")
    assert said[-1]["what_if"]["status"] == "skipped" and said[-1]["what_if"]["base_batch"] == 128
    assert whatif.flags(4) == 0  # nothing flagged: the run went on as recorded


def test_resize_batch_keeps_structure_and_pinning() -> None:
    batch = {"x": torch.arange(12.0).reshape(6, 2), "y": (torch.arange(6), "label"), "scale": torch.tensor(2.0)}
    big = resize_batch(batch, 15, torch)
    assert big["x"].shape == (15, 2) and big["y"][0].shape == (15,) and big["y"][1] == "label"
    assert big["scale"].shape == ()  # not a batch dimension: left alone
    assert np.array_equal(big["x"][6:12].numpy(), batch["x"].numpy())
    small = resize_batch(batch, 4, torch)
    assert small["x"].shape == (4, 2)
    with pytest.raises(ValueError):
        resize_batch({"n": 3}, 8, torch)


def test_report_json_has_the_what_if_key_for_every_run(tmp_path: Path) -> None:
    proc = _run(tmp_path)
    assert proc.returncode == 0, proc.stderr
    out = subprocess.run([GPULENS, "report", str(tmp_path / "runs" / "r"), "--json"], capture_output=True,
                         text=True, timeout=120)
    report = json.loads(out.stdout)
    assert report["what_if"] is None and report["step_time"]["excluded"]["what_if"] == 0


def test_a_failing_what_if_never_reaches_the_loop(monkeypatch) -> None:
    """Copying the batch fails (out of memory, say): the loop gets its real batches and the run says why."""
    import gpulens.hooks.track.whatif as whatif_module

    def no_memory(batch, torch):
        raise MemoryError("cannot allocate 4 GiB")

    monkeypatch.setattr(whatif_module, "_copy_batch", no_memory)
    said: list[dict] = []
    whatif = WhatIf(WhatIfPlan("synthetic-data", at=3, steps=4), lambda **kw: said.append(kw))
    batches = iter(range(10))
    got = [whatif.fetch(step, lambda: next(batches)) for step in range(10)]
    assert got == list(range(10))  # every real batch, in order, none replayed
    assert whatif.state == "skipped" and "could not cache a batch (MemoryError" in whatif.reason
    assert said[-1]["what_if"]["status"] == "skipped"


def test_batch_headroom_states_a_measured_batch_size_what_if() -> None:
    """The memory model says a bigger batch fits; a batch-size what-if that ran says what it measured."""
    from gpulens.profiler.analysis.advisor.measure import Measurements
    from gpulens.profiler.analysis.advisor.rules.batch import batch_headroom
    from gpulens.profiler.analysis.report import WhatIf, read_section

    m = Measurements(run_id="r", device="cpu", steps=100, step_s=0.01, batch_size=32,
                     probes=[{"batch": 32, "peak_bytes": 1.0e9, "step_s": 0.010},
                             {"batch": 64, "peak_bytes": 1.2e9, "step_s": 0.016}],
                     probe_capacity_bytes=8.0e9)
    plain = batch_headroom(m)
    assert plain is not None and "measured" not in plain.finding
    m.what_if = read_section({"kind": "batch-size", "status": "done", "reason": None, "batch_size": 128,
                              "base_batch": 32, "first_step": 20, "last_step": 39, "steps": 20,
                              "measure": "step time without data wait", "step_time_median_s": None,
                              "baseline_step_time_median_s": None, "step_time_change": None,
                              "step_time_change_ci": None, "data_wait_median_s": None,
                              "baseline_data_wait_median_s": None, "samples_per_s": 5920.0,
                              "baseline_samples_per_s": 3200.0, "samples_per_s_change": 0.85}, WhatIf)
    s = batch_headroom(m)
    assert "measured (--what-if batch-size=128, steps 20-39): 1.85x samples/s" in s.finding
    assert "measured 1.85x at batch 128" in s.expected_gain


# ---------------------------------------------------------------- num-workers=N

#: A loop that records, per batch, its sample indices and whether a DataLoader worker loaded it; the loader has
#: ``--workers`` workers (0 by default) and shuffles with the script's seed; two epochs of 24 batches.
WORKERS_LOOP = textwrap.dedent("""
    import hashlib, json, sys, torch, torch.nn as nn
    from torch.utils.data import DataLoader, Dataset, get_worker_info

    FAIL_IN_WORKERS = "--fail-in-workers" in sys.argv  # the data loads in-process only (a handle, say)
    BAD_SAMPLE = 226 if "--bad-sample" in sys.argv else None  # fails wherever it loads (13th batch)

    class Rows(Dataset):
        def __len__(self): return 16 * 24
        def __getitem__(self, i):
            worker = get_worker_info() is not None
            if worker and FAIL_IN_WORKERS:
                raise RuntimeError("this dataset's file handle does not survive fork")
            if i == BAD_SAMPLE:
                raise ValueError(f"sample {i} is corrupt")
            return torch.full((4,), float(i)), torch.tensor(i), torch.tensor(worker)

    torch.manual_seed(0)
    workers = int(sys.argv[1])
    model = nn.Linear(4, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    order, by_worker = [], []
    try:
        for epoch in range(2):
            for x, idx, worker in DataLoader(Rows(), batch_size=16, shuffle=True, num_workers=workers):
                order.append(idx.tolist())
                by_worker.append(bool(worker.all()))
                model(x).pow(2).mean().backward(); opt.step(); opt.zero_grad()
    except ValueError as exc:
        print("raised", type(exc).__name__, exc)
    print(json.dumps({"order": order, "by_worker": by_worker,
                      "weights": hashlib.sha256(b"".join(p.detach().numpy().tobytes()
                                                         for p in model.parameters())).hexdigest()}))
""")


def _run_loop(tmp_path: Path, loop: str, *args: str, what_if: str | None = None,
              run_id: str = "w") -> tuple[subprocess.CompletedProcess, dict]:
    """``loop`` run as a script with ``args`` -- under ``gpulens run --what-if`` (no profiler windows, no FLOP
    counting: their extra forwards would count in the script's own records; no automatic capture: a loaded
    host's slowdowns got windows whose steps left the stretch's measurement) unless ``what_if`` is None -- and
    the JSON its last line printed."""
    script = tmp_path / "loop.py"
    script.write_text(loop)
    env = {k: v for k, v in os.environ.items() if not k.startswith("GPULENS_")}
    cmd = [sys.executable, str(script), *args]
    if what_if is not None:
        cmd = [GPULENS, "run", "--runs-dir", str(tmp_path / "runs"), "--run-id", run_id, "--no-advise",
               "--profile-every", "0", "--no-auto-capture", "--no-flops", "--what-if", what_if, "--", *cmd]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=180, env=env)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    return proc, json.loads(lines[-1]) if lines else {}


def _workers_loop(tmp_path: Path, *args: str, what_if: str | None = None) -> tuple[subprocess.CompletedProcess, dict]:
    return _run_loop(tmp_path, WORKERS_LOOP, *args, what_if=what_if)


def test_num_workers_what_if_loads_the_runs_own_batches_with_workers(tmp_path: Path) -> None:
    """No worker in the run; steps 5-14 are loaded by 3 workers: the same samples in the same order, the same
    weights as without gpulens, only those ten batches from worker processes, the stretch flagged."""
    _, plain = _workers_loop(tmp_path, "0")
    proc, seen = _workers_loop(tmp_path, "0", what_if="num-workers=3:at=5,steps=10")
    assert proc.returncode == 0, proc.stderr
    assert "what-if num-workers=3: steps 5-14 load with 3 workers (the run has 0)" in proc.stderr
    assert seen["order"] == plain["order"] and seen["weights"] == plain["weights"]
    assert [i for i, w in enumerate(seen["by_worker"]) if w] == list(range(5, 15))
    with open_run(tmp_path / "runs" / "w") as run:
        steps = run.steps()
        report = RunAnalysis(run).report().as_dict()
        assert "loader_workers" not in run.info.meta  # the stretch's workers started and stopped: not the run's
    assert list(steps.step[(steps.flags & FLAG_WHATIF) != 0]) == list(range(5, 15 + SETTLE_STEPS))
    w = report["what_if"]
    assert (w["kind"], w["status"], w["num_workers"], w["base_workers"]) == ("num-workers", "done", 3, 0)
    assert (w["first_step"], w["last_step"], w["measured_from_step"], w["steps"]) == (5, 14, 9, 6)
    assert w["step_time_median_s"] > 0 and w["baseline_step_time_median_s"] > 0  # what they are: judged on a
    assert report["step_time"]["excluded"]["what_if"] == 10 + SETTLE_STEPS  # chosen timeline, below
    from gpulens.dashboard.overview import headline
    from gpulens.profiler.analysis.report import Report, read_section

    card = next(c for c in headline(read_section(report, Report)) if c.key == "what_if")
    assert card.label == "What-if: 3 workers" and "the run has 0" in card.title


def test_workers_that_fail_hand_their_batches_to_the_training_process(tmp_path: Path) -> None:
    """A dataset that only loads in-process: the stretch's workers fail on their first batch, the batches they
    did not serve load in the training process, and the loop sees what it would have without gpulens."""
    _, plain = _workers_loop(tmp_path, "0", "--fail-in-workers")
    proc, seen = _workers_loop(tmp_path, "0", "--fail-in-workers", what_if="num-workers=2:at=5,steps=10")
    assert proc.returncode == 0, proc.stderr
    assert seen["order"] == plain["order"] and seen["weights"] == plain["weights"] and not any(seen["by_worker"])
    with open_run(tmp_path / "runs" / "w") as run:
        plan = run.info.meta["what_if"]
    assert plan["status"] == "done" and "file handle does not survive fork" in plan["fell_back"]


def test_a_sample_that_fails_anywhere_fails_the_loop_as_it_would_without_gpulens(tmp_path: Path) -> None:
    _, plain = _workers_loop(tmp_path, "0", "--bad-sample")
    proc, seen = _workers_loop(tmp_path, "0", "--bad-sample", what_if="num-workers=2:at=3,steps=40")
    assert proc.returncode == 0, proc.stderr
    said = [line for line in proc.stdout.splitlines() if line.startswith("raised")]
    assert said == ["raised ValueError sample 226 is corrupt"]
    assert seen["order"] == plain["order"]  # every batch before the bad one, in order
    with open_run(tmp_path / "runs" / "w") as run:
        plan = run.info.meta["what_if"]
    assert plan["status"] == "cut short" and "the data raised ValueError: sample 226 is corrupt" in plan["reason"]


def test_num_workers_what_if_through_run_loader_with_workers_and_accumulation() -> None:
    """track() + run.loader() over a loader with 2 workers, two batches per optimizer step: the stretch takes
    2 x steps batches; every sample of each epoch comes once (the run's prefetched batches come after the
    stretch: reordered by a few, never lost or repeated)."""
    import tempfile

    import gpulens
    from torch.utils.data import DataLoader, TensorDataset

    data = TensorDataset(torch.arange(640).float().unsqueeze(1), torch.arange(640))
    loader = DataLoader(data, batch_size=8, shuffle=True, num_workers=2)
    model = torch.nn.Linear(1, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    epochs: list[list[int]] = []
    with tempfile.TemporaryDirectory() as runs, gpulens.track(
            "workers", runs_dir=runs, what_if="num-workers=1:at=4,steps=6", quiet=True, profile=False) as run:
        for _ in range(2):
            epochs.append([])
            for i, (x, idx) in enumerate(run.loader(loader)):
                epochs[-1].extend(idx.tolist())
                model(x).sum().backward()
                if i % 2 == 1:
                    opt.step()
                    opt.zero_grad()
                    run.step()
        path = run.path
        run.close()
        with open_run(path) as reader:
            plan = reader.info.meta["what_if"]
    assert [sorted(e) for e in epochs] == [list(range(640))] * 2
    assert plan["status"] == "done" and plan["batches"] == 12 and plan["base_workers"] == 2
    assert (plan["first_step"], plan["last_step"]) == (4, 9)
    assert plan["settle_steps"] == 2 * 2 + 1  # the run's two workers had prefetched four batches


@pytest.mark.parametrize(("source", "reason"), [
    ("list", "do not come from a torch DataLoader"),
    ("iterable", "an iterable dataset has no sampler order"),
])
def test_num_workers_what_if_is_skipped_where_no_sampler_order_exists(source: str, reason: str) -> None:
    import tempfile

    import gpulens
    from torch.utils.data import DataLoader, IterableDataset

    class Stream(IterableDataset):
        def __iter__(self):
            return iter(torch.randn(4) for _ in range(200))

    batches = [torch.randn(4, 4) for _ in range(30)] if source == "list" else DataLoader(Stream(), batch_size=4)
    model = torch.nn.Linear(4, 1)
    count = 0
    with tempfile.TemporaryDirectory() as runs, gpulens.track(
            "skip", runs_dir=runs, what_if="num-workers=2:at=5,steps=5", quiet=True, profile=False) as run:
        for x in run.loader(batches):
            model(x).sum().backward()
            count += 1
            run.step()
        path = run.path
        run.close()
        with open_run(path) as reader:
            plan = reader.info.meta["what_if"]
            flagged = int(((reader.steps().flags & FLAG_WHATIF) != 0).sum())
    assert count == (30 if source == "list" else 50)
    assert plan["status"] == "skipped" and reason in plan["reason"] and flagged == 0


def test_the_workers_what_if_is_measured_after_its_workers_start(tmp_path: Path) -> None:
    """A chosen timeline: 20 ms steps; steps 20-39 with 3 workers, whose first 4 wait 60 ms for them to start
    and the rest wait 12 ms every third step (the workers deliver in rounds). Measured from step 24 on 3-step
    means (a plain median would take the rounds' short steps): -60 %; the advisor proposes 3 workers."""
    from timeline import START, noisy, write_run

    n = 90
    compute = noisy(n, seed=3, scale=0.004, sigma=0.05, spikes=0.0)
    wait = np.full(n, 0.016)
    wait[20:24] = 0.060
    wait[24:40] = np.resize([0.012, 0.0, 0.0], 16)  # rounds: one step waits for three batches, two find theirs
    flags = np.zeros(n, dtype=int)
    flags[20:40 + SETTLE_STEPS] = FLAG_WHATIF
    plan = WhatIfPlan("num-workers", at=20, steps=20, num_workers=3)
    assert plan.ramp == 4
    meta = {"what_if": {**plan.describe(), "status": "done", "base_workers": 0}}
    steps_end = np.cumsum(compute + wait) + START  # when each step ended
    stretch = (steps_end[19], steps_end[39])

    def stretch_workers(t: np.ndarray) -> np.ndarray:  # the what-if's 3 workers, alive through its stretch only
        return np.where((t >= stretch[0]) & (t <= stretch[1]), 3.0, 0.0)

    path = write_run(tmp_path / "workers", {"data_wait": wait, "forward": compute}, samples=32, flags=flags,
                     meta=meta, series={"workers.count": stretch_workers,
                                        "workers.cpu": lambda t: stretch_workers(t) * 0.1})
    with open_run(path) as run:
        analysis = RunAnalysis(run)
        w = analysis.report().as_dict()["what_if"]
        bound = next(s for s in analysis.advice.suggestions if s.id == "dataloader_bound")
    base = (compute + wait)[list(range(2, 20)) + list(range(40 + SETTLE_STEPS, n))]
    rounds = np.convolve((compute + wait)[24:40], np.ones(3) / 3, mode="valid")  # one round of 3 workers each
    expected = float(np.median(rounds) / np.median(base) - 1)
    assert w["measured_from_step"] == 24 and w["steps"] == 16 and w["measure"] == "step time, 3-step means"
    assert w["step_time_change"] == pytest.approx(expected, abs=1e-4) and -0.65 < expected < -0.55
    assert np.median((compute + wait)[24:40]) / np.median(base) - 1 < expected - 0.1  # the short steps' median
    assert bound.change is not None and bound.change["num_workers"] == 3
    p = bound.prediction
    assert p is not None and p.basis.startswith("what-if measured: 3 workers loaded steps 24-39")
    assert p.gain_fraction == pytest.approx(-expected, abs=1e-4) and p.low <= p.gain_fraction <= p.high
    assert "measured (--what-if num-workers=3, steps 24-39)" in bound.finding
    assert "num_workers=3 (measured in this run" in bound.action
    # the stretch's workers are not the run's: it loaded in the training process
    from gpulens.profiler.analysis.advisor.measure import worker_load

    with open_run(path) as run:
        assert run.series("workers.count").v.max() == 3  # read in ~6 readings of the stretch
        assert worker_load(run) == (0.0, 0.0)
    assert "DataLoader worker processes: 0" in bound.finding


def test_a_workers_what_if_that_did_not_help_proposes_no_change() -> None:
    from gpulens.profiler.analysis.advisor.measure import Measurements
    from gpulens.profiler.analysis.advisor.rules.input import dataloader_bound
    from gpulens.profiler.analysis.report import WhatIf, read_section

    m = Measurements(run_id="r", device="cpu", steps=200, step_s=0.02, cpu_count=2, phase_share={"data_wait": 0.4})
    m.what_if = read_section({
        "kind": "num-workers", "status": "done", "reason": None, "batch_size": None, "base_batch": None,
        "num_workers": 4, "base_workers": 0, "first_step": 20, "last_step": 39, "measured_from_step": 25,
        "steps": 15, "measure": "step time", "step_time_median_s": 0.0205, "baseline_step_time_median_s": 0.02,
        "step_time_change": 0.025, "step_time_change_ci": [-0.01, 0.06], "data_wait_median_s": 0.007,
        "baseline_data_wait_median_s": 0.008, "samples_per_s": None, "baseline_samples_per_s": None,
        "samples_per_s_change": None}, WhatIf)
    s = dataloader_bound(m)
    assert s is not None and s.change is None and s.prediction is None
    assert "More workers did not help when measured: 4 workers changed the step by +2%" in s.action
    assert "measured (--what-if num-workers=4, steps 25-39)" in s.finding


def test_parse_num_workers() -> None:
    assert parse_what_if("num-workers=4:at=30,steps=40") == WhatIfPlan("num-workers", 30, 40, num_workers=4)
    assert parse_what_if("num_workers=0").num_workers == 0
    assert WhatIfPlan("num-workers", num_workers=0).ramp == 0 and WhatIfPlan("num-workers", num_workers=30).ramp == 10
    for bad in ("num-workers", "num-workers=-1", "num-workers=two", "num-workers=65"):
        with pytest.raises(GpulensError):
            parse_what_if(bad)


def test_workers_seen_in_one_reading_are_counted_not_averaged_away(tmp_path: Path) -> None:
    """A run that trained for a second after seconds of start-up: its 3 workers were read once. They are the
    run's 3 workers (their CPU needs two readings), not 3 over the run's length."""
    from gpulens.profiler.analysis.advisor.measure import worker_load
    from timeline import START, write_run

    once = START + 1.0
    path = write_run(tmp_path / "short", {"data_wait": np.full(40, 0.02), "forward": np.full(40, 0.03)},
                     series={"workers.count": lambda t: np.where(np.abs(t - once) < 0.05, 3.0, 0.0),
                             "workers.cpu": lambda t: np.zeros_like(t)})
    with open_run(path) as run:
        assert int((run.series("workers.count").v > 0).sum()) == 1
        assert worker_load(run) == (3.0, None)


# ---------------------------------------------------------------- autocast=bf16

#: An MLP whose middle module records whether its forward ran under CPU autocast; the loop records the dtype
#: of what the model returned. ``--fail-in-bf16``: that module fails on bfloat16 input (an op without a kernel).
AUTOCAST_LOOP = textwrap.dedent("""
    import json, sys, torch, torch.nn as nn
    FAIL = "--fail-in-bf16" in sys.argv

    class Probe(nn.Module):
        def __init__(self):
            super().__init__()
            self.seen = []
        def forward(self, x):
            self.seen.append(torch.is_autocast_enabled("cpu"))
            if FAIL and x.dtype == torch.bfloat16:
                raise RuntimeError("no BFloat16 kernel for this op")
            return x

    torch.manual_seed(0)
    probe = Probe()
    model = nn.Sequential(nn.Linear(16, 32), probe, nn.ReLU(), nn.Linear(32, 4))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    data = [(torch.randn(8, 16), torch.randint(0, 4, (8,))) for _ in range(30)]
    dtypes = []
    for x, y in torch.utils.data.DataLoader(data, batch_size=None):
        out = model(x)
        dtypes.append(str(out.dtype))
        loss = nn.functional.cross_entropy(out, y)
        opt.zero_grad(); loss.backward(); opt.step()
    print(json.dumps({"autocast": probe.seen, "dtypes": sorted(set(dtypes))}))
""")


@pytest.mark.parametrize("fail", [False, True], ids=["runs", "fails-in-bf16"])
def test_autocast_what_if_runs_the_forward_in_bf16_for_the_stretch(tmp_path: Path, fail: bool) -> None:
    proc, seen = _run_loop(tmp_path, AUTOCAST_LOOP, *(["--fail-in-bf16"] if fail else []),
                           what_if="autocast=bf16:at=5,steps=5", run_id="a")
    assert proc.returncode == 0, proc.stderr
    assert seen["dtypes"] == ["torch.float32"]  # what the loop got back, in the stretch too
    with open_run(tmp_path / "runs" / "a") as run:
        steps = run.steps()
        w = RunAnalysis(run).report().as_dict()["what_if"]
    if fail:  # the trial forward on a copy failed: nothing ran in bf16, the loop never saw the error
        assert not any(seen["autocast"]) and len(seen["autocast"]) == 30
        assert w["status"] == "skipped" and "a trial forward in bf16 failed (RuntimeError: no BFloat16" in w["reason"]
        assert not ((steps.flags & FLAG_WHATIF) != 0).any()
        return
    assert [i for i, on in enumerate(seen["autocast"]) if on] == list(range(5, 10))
    assert w["kind"] == "autocast" and w["status"] == "done" and (w["first_step"], w["last_step"]) == (5, 9)
    assert list(steps.step[(steps.flags & FLAG_WHATIF) != 0]) == list(range(5, 11))  # and one settling step
    assert w["step_time_median_s"] > 0


def test_autocast_what_if_through_track_model() -> None:
    """track(model=...): the model's own forward hooks carry the stretch; an eval forward inside it is left
    alone; the hooks are gone after the run (the model pickles as before)."""
    import pickle
    import tempfile

    import gpulens

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 2))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    data = [torch.randn(4, 8) for _ in range(20)]
    dtypes, inside = [], []
    with tempfile.TemporaryDirectory() as runs, gpulens.track(
            "amp", runs_dir=runs, model=model, what_if="autocast:at=4,steps=4", quiet=True, profile=False) as run:
        for i, x in enumerate(run.loader(data)):
            out = model(x)
            inside.append(out.requires_grad and torch.is_autocast_enabled("cpu"))  # left again after forward
            dtypes.append(out.dtype)
            out.sum().backward()
            opt.step()
            opt.zero_grad()
            if i == 5:
                model.eval()
                with torch.no_grad():
                    dtypes.append(model(x).dtype)
                model.train()
            run.step()
        path = run.path
        run.close()
        with open_run(path) as reader:
            plan = reader.info.meta["what_if"]
    assert set(dtypes) == {torch.float32} and not any(inside)
    assert plan["status"] == "done" and (plan["first_step"], plan["last_step"]) == (4, 7)
    assert not model._forward_hooks and not model._forward_pre_hooks
    pickle.dumps(model)


def test_parse_autocast() -> None:
    assert parse_what_if("autocast") == WhatIfPlan("autocast")
    assert parse_what_if("autocast=bf16:at=30,steps=10") == WhatIfPlan("autocast", 30, 10)
    with pytest.raises(GpulensError, match="bf16 only"):
        parse_what_if("autocast=fp16")


def test_no_mixed_precision_proposes_a_measured_autocast() -> None:
    from gpulens.profiler.analysis.advisor.measure import Measurements
    from gpulens.profiler.analysis.advisor.rules.precision import no_mixed_precision
    from gpulens.profiler.analysis.report import WhatIf, read_section

    def measured(change: float) -> Measurements:
        m = Measurements(run_id="r", device="cuda", steps=300, step_s=0.1, has_kernels=True, compute_capability=9.0,
                         tc_share=0.0, tc_eligible_share=0.7, kernel_busy_pct=90.0)
        m.what_if = read_section({
            "kind": "autocast", "status": "done", "reason": None, "batch_size": None, "base_batch": None,
            "first_step": 20, "last_step": 39, "steps": 20, "measure": "step time",
            "step_time_median_s": 0.1 + change * 0.1, "baseline_step_time_median_s": 0.1, "step_time_change": change,
            "step_time_change_ci": [change - 0.03, change + 0.03], "data_wait_median_s": None,
            "baseline_data_wait_median_s": None, "samples_per_s": None, "baseline_samples_per_s": None,
            "samples_per_s_change": None}, WhatIf)
        return m

    s = no_mixed_precision(measured(-0.38))
    assert s is not None and s.change == {"autocast": "bf16"}
    assert s.prediction is not None and s.prediction.gain_fraction == pytest.approx(0.38)
    assert (s.prediction.low, s.prediction.high) == (pytest.approx(0.35), pytest.approx(0.41))
    assert s.prediction.basis.startswith("what-if measured: the forward in bf16 for steps 20-39")
    assert "measured (--what-if autocast=bf16, steps 20-39)" in s.finding
    slower = no_mixed_precision(measured(0.04))
    assert slower is not None and slower.change is None and slower.prediction is None and "(+4%)" in slower.finding


def test_autocast_outputs_go_back_to_float32_in_their_own_containers() -> None:
    from collections import OrderedDict, namedtuple

    from gpulens.hooks.track.whatif_autocast import AutocastContext

    class Output(OrderedDict):  # like transformers' ModelOutput: a mapping that also has attributes
        def __setitem__(self, key, value):
            super().__setitem__(key, value)
            setattr(self, key, value)

    Pair = namedtuple("Pair", "logits aux")
    linear = torch.nn.Linear(4, 4)
    ctx = AutocastContext(torch, "cpu")
    logits = linear(torch.randn(2, 4))
    assert logits.dtype == torch.bfloat16 and torch.is_autocast_enabled("cpu")
    mapping = Output()
    mapping["logits"], mapping["steps"] = logits, 3
    out = ctx.leave({"pair": Pair(logits, [logits]), "map": mapping, "ids": torch.arange(3)}, torch.float32)
    assert not torch.is_autocast_enabled("cpu")
    assert out["pair"].logits.dtype == torch.float32 and out["pair"].aux[0].dtype == torch.bfloat16  # 3 deep
    assert type(out["map"]) is Output and out["map"].logits.dtype == torch.float32 and out["map"]["steps"] == 3
    assert mapping["logits"].dtype == torch.bfloat16  # the model's own object is not changed
    assert out["ids"].dtype == torch.int64 and out["pair"].logits.requires_grad


# ---------------------------------------------------------------- channels-last

#: A small CNN whose first module records whether its input came channels-last; the loop records whether the
#: conv weight was contiguous and whether the feature map it got back was. ``--view`` flattens with ``.view``
#: (which channels-last activations cannot do: the trial forward shows it).
CNN_LOOP = textwrap.dedent("""
    import json, sys, torch, torch.nn as nn
    VIEW = "--view" in sys.argv

    class Probe(nn.Module):
        def __init__(self):
            super().__init__()
            self.seen = []
        def forward(self, x):
            self.seen.append(x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous())
            return x

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.probe, self.conv, self.fc = Probe(), nn.Conv2d(3, 8, 3, padding=1), nn.Linear(8 * 8 * 8, 4)
        def forward(self, x):
            h = torch.relu(self.conv(self.probe(x)))
            flat = h.view(h.size(0), -1) if VIEW else torch.flatten(h, 1)
            return self.fc(flat), h

    torch.manual_seed(0)
    model = Net()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    data = [(torch.randn(4, 3, 8, 8), torch.randint(0, 4, (4,))) for _ in range(24)]
    weight_contiguous, features_contiguous = [], []
    for x, y in torch.utils.data.DataLoader(data, batch_size=None):
        weight_contiguous.append(model.conv.weight.is_contiguous())
        logits, features = model(x)
        features_contiguous.append(features.is_contiguous())
        loss = nn.functional.cross_entropy(logits, y)
        opt.zero_grad(); loss.backward(); opt.step()
    print(json.dumps({"input_nhwc": model.probe.seen, "weight_contiguous": weight_contiguous,
                      "features_contiguous": features_contiguous,
                      "same_parameter": opt.param_groups[0]["params"][0] is model.conv.weight,
                      "weight_contiguous_after": model.conv.weight.is_contiguous()}))
""")


@pytest.mark.parametrize("view", [False, True], ids=["flatten", "view-fails"])
def test_channels_last_what_if_lays_out_the_model_for_the_stretch_only(tmp_path: Path, view: bool) -> None:
    proc, seen = _run_loop(tmp_path, CNN_LOOP, *(["--view"] if view else []),
                           what_if="channels-last:at=6,steps=4", run_id="c")
    assert proc.returncode == 0, proc.stderr
    assert all(seen["features_contiguous"]) and seen["same_parameter"] and seen["weight_contiguous_after"]
    with open_run(tmp_path / "runs" / "c") as run:
        w = RunAnalysis(run).report().as_dict()["what_if"]
    if view:  # the trial forward on a channels-last copy failed: the loop never saw it
        assert not any(seen["input_nhwc"]) and all(seen["weight_contiguous"])
        assert w["status"] == "skipped" and "a trial forward channels-last failed (RuntimeError: view size" in w["reason"]
        return
    assert [i for i, on in enumerate(seen["input_nhwc"]) if on] == list(range(6, 10))
    # laid out at step 6's forward (after the loop looked at it) and back at step 10's
    assert [i for i, c in enumerate(seen["weight_contiguous"]) if not c] == list(range(7, 11))
    assert w["kind"] == "channels-last" and w["status"] == "done" and (w["first_step"], w["last_step"]) == (6, 9)


def test_parse_channels_last() -> None:
    assert parse_what_if("channels_last:at=30") == WhatIfPlan("channels-last", 30)
    with pytest.raises(GpulensError):
        parse_what_if("channels-last=yes")


# ---------------------------------------------------------------- optimizer implementation

#: A small MLP trained with AdamW (torch's default implementation on a CPU: for-loop), or with a subclass the
#: script defines (``--custom``); the optimizer's own post-hook records which implementation each step ran with.
OPTIMIZER_LOOP = textwrap.dedent("""
    import copy, hashlib, io, json, sys, torch, torch.nn as nn

    class MyAdamW(torch.optim.AdamW):
        pass

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), nn.LayerNorm(32), nn.ReLU(), nn.Linear(32, 4))
    opt = (MyAdamW if "--custom" in sys.argv else torch.optim.AdamW)(model.parameters(), lr=1e-2)
    fused = []
    opt.register_step_post_hook(lambda o, args, kwargs: fused.append(bool(o.param_groups[0]["fused"])))
    data = [(torch.randn(8, 16), torch.randint(0, 4, (8,))) for _ in range(24)]
    for x, y in torch.utils.data.DataLoader(data, batch_size=None):
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad(); loss.backward(); opt.step()
    saved = io.BytesIO()
    torch.save({"model": model, "opt": opt.state_dict()}, saved)
    copy.deepcopy(opt)
    group = opt.state_dict()["param_groups"][0]
    print(json.dumps({
        "fused": fused, "group": [group["fused"], group["foreach"]],
        "steps": sorted({(str(s["step"].device), str(s["step"].dtype)) for s in opt.state.values()}),
        "weights": [p.detach().flatten().tolist() for p in model.parameters()],
        "sha": hashlib.sha256(b"".join(p.detach().numpy().tobytes() for p in model.parameters())).hexdigest()}))
""")


@pytest.mark.parametrize("custom", [False, True], ids=["adamw", "subclass-refused"])
def test_optimizer_what_if_steps_the_loops_optimizer_fused_for_the_stretch_only(tmp_path: Path, custom: bool) -> None:
    args = ["--custom"] if custom else []
    proc, seen = _run_loop(tmp_path, OPTIMIZER_LOOP, *args, what_if="optimizer=fused:at=6,steps=5", run_id="o")
    assert proc.returncode == 0, proc.stderr
    _, alone = _run_loop(tmp_path, OPTIMIZER_LOOP, *args)  # the same script without gpulens
    # the user's optimizer as they left it: its switches, its step counters, it saves and deep-copies
    assert seen["group"] == alone["group"] == [None, None] and seen["steps"] == alone["steps"]
    with open_run(tmp_path / "runs" / "o") as run:
        steps = run.steps()
        w = RunAnalysis(run).report().as_dict()["what_if"]
    if custom:  # refused before the stretch: nothing changed, the weights are bit for bit the same
        assert w["status"] == "skipped" and "MyAdamW is not one of torch.optim's optimizers" in w["reason"]
        assert not any(seen["fused"]) and seen["sha"] == alone["sha"]
        assert not ((steps.flags & FLAG_WHATIF) != 0).any()
        return
    assert [i for i, on in enumerate(seen["fused"]) if on] == list(range(6, 11))
    assert w["kind"] == "optimizer" and w["implementation"] == "fused" and w["status"] == "done"
    assert (w["first_step"], w["last_step"]) == (6, 10) and w["step_time_median_s"] > 0
    assert list(steps.step[(steps.flags & FLAG_WHATIF) != 0]) == list(range(6, 12))  # and one settling step
    # five steps of another implementation's arithmetic: the same training, not the same last bits
    for mine, theirs in zip(seen["weights"], alone["weights"]):
        assert np.allclose(mine, theirs, rtol=1e-4, atol=1e-5)


def test_optimizer_what_if_through_track_puts_foreach_back_and_never_raises() -> None:
    """track(): the global step hook finds the loop's optimizer without being told; SGD with momentum tries
    foreach; a second optimizer stepping inside the stretch is changed too and put back."""
    import tempfile

    import gpulens

    torch.manual_seed(0)
    model = torch.nn.Linear(8, 2)
    head = torch.nn.Linear(2, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, foreach=False)
    opt2 = torch.optim.Adagrad(head.parameters(), lr=0.1)
    foreach = []
    with tempfile.TemporaryDirectory() as runs, gpulens.track(
            "sgd", runs_dir=runs, what_if="optimizer=foreach:at=4,steps=3", quiet=True, profile=False) as run:
        for _ in range(12):
            head(model(torch.randn(4, 8))).sum().backward()
            opt.step()
            foreach.append((opt.param_groups[0]["foreach"], opt2.param_groups[0]["foreach"]))
            opt2.step()
            opt.zero_grad()
            opt2.zero_grad()
            run.step()
        path = run.path
        run.close()
        with open_run(path) as reader:
            plan = reader.info.meta["what_if"]
    assert [i for i, (a, b) in enumerate(foreach) if a] == [4, 5, 6]
    assert [i for i, (a, b) in enumerate(foreach) if b] == [5, 6]  # its first stretch step came after opt's look
    assert (opt.param_groups[0]["foreach"], opt2.param_groups[0]["foreach"]) == (False, None)
    assert plan["status"] == "done" and plan["implementation"] == "foreach"


def test_an_optimizer_swap_moves_step_counters_to_their_parameters_device_and_back() -> None:
    """The fused kernels want each ``step`` counter on its parameter's device (CUDA parameters keep theirs on the
    CPU by default); a meta-device parameter stands in for a GPU one here: nothing steps, and the move back
    of a counted-on counter is a GPU check."""
    from gpulens.hooks.track.whatif_optimizer import ImplementationSwap

    p = torch.nn.Parameter(torch.zeros(3, device="meta"))
    opt = torch.optim.Adam([p], lr=0.1)
    opt.state[p]["step"] = torch.tensor(7.0)
    swap = ImplementationSwap("fused")
    swap.apply(opt, torch)
    assert opt.state[p]["step"].device.type == "meta" and opt.param_groups[0]["fused"] is True
    assert swap.seen(opt) and opt.param_groups[0]["foreach"] is False
    opt.state[p]["step"] = torch.tensor(9.0)  # counted on in the stretch (a meta tensor holds no count to move)
    swap.restore()
    assert opt.state[p]["step"].device.type == "cpu" and float(opt.state[p]["step"]) == 9.0
    assert opt.param_groups[0]["fused"] is None and opt.param_groups[0]["foreach"] is None


def test_parse_optimizer() -> None:
    assert parse_what_if("optimizer=fused") == WhatIfPlan("optimizer", implementation="fused")
    assert parse_what_if("optimizer=Foreach:at=30,steps=10") == WhatIfPlan("optimizer", 30, 10,
                                                                             implementation="foreach")
    for bad in ("optimizer", "optimizer=apex", "optimizer=fused:at=x"):
        with pytest.raises(GpulensError):
            parse_what_if(bad)
