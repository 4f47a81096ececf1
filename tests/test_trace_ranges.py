"""Steps and phases as record_function ranges in profiler windows (hooks/track/ranges.py): the chrome trace a
window writes -- what Perfetto, HTA and TensorBoard read -- has one range per phase per recorded step."""
from __future__ import annotations

import collections
import gzip
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

import gpulens  # noqa: E402
from gpulens import ProfileConfig  # noqa: E402
from gpulens.hooks.track.ranges import TraceRanges, under_nsight  # noqa: E402
from gpulens.profiler import RunAnalysis, open_run  # noqa: E402
from gpulens.profiler.analysis.trace import load_trace  # noqa: E402

PHASES = ("data_wait", "forward", "backward", "optimizer")


def _ranges(window_path: Path) -> list[dict]:
    with gzip.open(window_path, "rt") as fh:
        events = json.load(fh)["traceEvents"]
    return [e for e in events if str(e.get("name", "")).startswith("gpulens.") and e.get("ph") == "X"]


def _check_window(run_path: Path) -> None:
    with open_run(run_path) as run:
        windows = run.windows()
        analysis = RunAnalysis(run, persist=False).report(suggestions=False).as_dict()
    assert windows and windows[0].status == "ok"
    w = windows[0]
    ranges = _ranges(w.path)
    steps = [e for e in ranges if e["name"].startswith("gpulens.step#")]
    recorded = list(range(w.first_step, w.last_step + 1))
    assert sorted(int(e["name"].split("#")[1]) for e in steps) == recorded  # one range per recorded step
    counts = collections.Counter(e["name"] for e in ranges)
    for phase in PHASES:
        assert counts[f"gpulens.{phase}"] == len(recorded), counts
    for step in steps:  # every phase range lies inside a step range
        t0, t1 = step["ts"], step["ts"] + step["dur"]
        inside = [e for e in ranges if e is not step and t0 <= e["ts"] and e["ts"] + e["dur"] <= t1 + 1]
        assert sorted(e["name"] for e in inside) == sorted(f"gpulens.{p}" for p in PHASES)
    # the trace still parses as before, and our ranges are annotations, not CPU operators
    assert load_trace(w.path, rank=0) is not None
    assert not any(op["name"].startswith("gpulens.") for op in analysis["top_cpu_ops"])


def test_track_writes_step_and_phase_ranges_into_windows(tmp_path: Path) -> None:
    model = torch.nn.Linear(16, 4)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    data = [torch.randn(8, 16) for _ in range(12)]
    with gpulens.track("ranges", runs_dir=tmp_path, quiet=True, count_flops=False, advise=False,
                       profile=ProfileConfig(first=3, every=100, warmup=1, active=3)) as run:
        for x in run.loader(data):
            with run.phase("forward"):
                loss = model(x).sum()
            with run.phase("backward"):
                loss.backward()
            with run.phase("optimizer"):
                opt.step()
                opt.zero_grad()
            run.step()
        assert run.step_recorder.ranges.depth == 0  # nothing left open outside the window
    _check_window(run.path)
    # the window's trace imported elsewhere (gpulens import) gives every step all four phases
    from gpulens.profiler.importer import import_traces

    with open_run(run.path) as reader:
        window = reader.windows()[0]
    imported = import_traces([window.path], tmp_path / "imported", "window")
    with open_run(imported) as reader:
        steps = reader.steps()
    assert len(steps) == 3
    for phase in PHASES:
        assert (getattr(steps, phase) > 0).all(), phase
    assert ((steps.data_wait + steps.forward + steps.backward + steps.optimizer) <= steps.duration + 1e-9).all()


def test_gpulens_run_phases_show_in_the_trace(tmp_path: Path) -> None:
    """No code change: the phases gpulens run finds (DataLoader, forward, backward, optimizer) become ranges."""
    script = tmp_path / "train.py"
    script.write_text(textwrap.dedent("""
        import torch, torch.nn as nn
        from torch.utils.data import DataLoader, TensorDataset
        model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4))
        opt = torch.optim.Adam(model.parameters())
        data = TensorDataset(torch.randn(512, 16), torch.randint(0, 4, (512,)))
        for x, y in DataLoader(data, batch_size=16):
            loss = nn.functional.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
    """))
    env = {k: v for k, v in os.environ.items() if not k.startswith("GPULENS_")}
    gpulens_bin = str(Path(sys.executable).with_name("gpulens"))
    proc = subprocess.run([gpulens_bin, "run", "--runs-dir", str(tmp_path / "runs"), "--run-id", "auto", "--no-advise",
                           "--no-flops", "--", sys.executable, str(script)], capture_output=True, text=True,
                          timeout=180, env=env)
    assert proc.returncode == 0, proc.stderr
    _check_window(tmp_path / "runs" / "auto")


def test_nvtx_detection_and_cpu_builds() -> None:
    assert under_nsight({"NVTX_INJECTION64_PATH": "/opt/nvidia/nsight-systems/libToolsInjection64.so"})
    assert under_nsight({"LD_PRELOAD": "/opt/nvidia/nsight-systems/2025.1/lib/libnsys.so"})
    assert not under_nsight({"LD_PRELOAD": "/usr/lib/libjemalloc.so", "PATH": "/usr/bin"})
    ranges = TraceRanges(torch, nvtx=True)
    # a CPU build of torch has no NVTX library: asked for, it is off (never an error in the loop)
    assert ranges.nvtx == torch.cuda.is_available()


def test_nvtx_asked_on_a_cpu_build_keeps_recording(tmp_path: Path) -> None:
    model = torch.nn.Linear(4, 2)
    with gpulens.track("nvtx", runs_dir=tmp_path, quiet=True, nvtx=True, profile=False, count_flops=False,
                       advise=False) as run:
        for _ in range(5):
            with run.phase("forward"):
                model(torch.randn(2, 4)).sum().backward()
            run.step()
    with open_run(run.path) as reader:
        assert len(reader.steps()) == 5
