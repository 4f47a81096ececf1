"""`gpulens report` and `gpulens ls` on real recorded runs, and their errors."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from torch.utils.data import DataLoader
from train_loops import SlowImages, train_cnn

import gpulens
from gpulens.cli import main as cli_main
from gpulens.profiler import list_runs, open_run
from gpulens.profiler.analysis.run_analysis import summarize

REPO = Path(__file__).resolve().parent.parent
SAMPLES = REPO / "sample_runs"
REQUIRED = {"status", "steps", "duration_s", "step_time", "throughput", "gpus", "samples", "memory", "host",
            "run", "events", "nvml", "schema"}


@pytest.fixture(scope="module")
def cpu_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    loader = DataLoader(SlowImages(n=128, delay=0.001), batch_size=16)
    with gpulens.track("report-me", runs_dir=root, quiet=True, batch_size=16, config={"lr": 0.05}) as run:
        train_cnn(run, loader, epochs=1)
    return run.path


def test_report_json_keys_and_figures(cpu_run, capsys):
    assert cli_main(["report", str(cpu_run), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert REQUIRED <= set(data)
    assert data["schema"] == "gpulens.report/1"
    assert data["status"] == "finished" and data["steps"] == 8
    st = data["step_time"]
    # 8 steps: 2 warm-up; no profiler window before step 10; step 5's FLOPs counted at its end, its model
    # found by a gc walk in step 4 (both flagged)
    assert st["count"] == 4 and st["excluded"]["warmup"] == 2 and st["excluded"]["profiled"] == 2
    assert set(st["phases"]) == {"data_wait", "forward", "backward", "optimizer", "other"}
    assert abs(sum(p["share"] for p in st["phases"].values()) - 1.0) < 1e-4  # epoch floats: ~0.2 µs
    assert data["throughput"]["samples_per_s"] == pytest.approx(16 * data["throughput"]["steps_per_s"])
    assert data["gpus"] == []
    assert data["nvml"]["available"] is False and data["nvml"]["reason"]
    steps = data["samples"]["steps"]
    assert steps["count"] == 8 and steps["first"] < steps["last"]
    host = data["samples"]["host.cpu"]
    assert host["count"] > 0 and host["first"] <= host["last"]
    assert data["run"]["config"] == {"lr": 0.05}


def test_terminal_report_says_what_is_not_available(cpu_run):
    out = subprocess.run([sys.executable, "-m", "gpulens", "report", str(cpu_run)], capture_output=True,
                         text=True, env={"COLUMNS": "120", "PATH": "/usr/bin:/bin"})
    assert out.returncode == 0, out.stderr
    assert "report-me" in out.stdout and "finished" in out.stdout
    assert "none recorded" in out.stdout  # no GPU: said plainly, not zeros
    assert "data wait" in out.stdout and "not available" in out.stdout


@pytest.mark.parametrize("argv, fragment", [
    (["report", "/no/such/run"], "no such run"),
    (["report"], "the following arguments are required: run"),
    (["report", ".", "--bogus"], "unrecognized arguments: --bogus"),
    (["frobnicate"], "invalid choice"),
    (["ls", "/no/such/root"], "no such runs directory"),
])
def test_bad_input_is_one_line_and_exit_2(argv, fragment):
    out = subprocess.run([sys.executable, "-m", "gpulens", *argv], capture_output=True, text=True)
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and fragment in lines[0] and lines[0].startswith("gpulens: error:")


def test_every_shipped_sample_run_opens_and_reports():
    runs = list_runs(SAMPLES)
    assert len(runs) >= 3
    names = {p.name for p in runs}
    assert {"cpu-cnn-input-bound", "cpu-gpt-small-batch"} <= names
    for path in runs:
        with open_run(path) as run:
            summary = summarize(run)
        assert summary["status"] == "finished", path
        assert summary["steps"] > 50
        json.dumps(summary)


def test_shipped_gpu_runs_carry_real_gpu_figures():
    gpu_runs = [p for p in list_runs(SAMPLES) if not p.name.startswith("cpu-")]
    if not gpu_runs:
        pytest.skip("no GPU sample runs shipped")
    for path in gpu_runs:
        with open_run(path) as run:
            s = summarize(run)
        gpu = s["gpus"][0]
        assert gpu["name"].startswith("NVIDIA")
        assert 0 <= gpu["metrics"]["gpu.util"]["mean"] <= 100
        if gpu["gpm_supported"]:
            assert "gpm.sm_active" in gpu["metrics"]
        assert s["memory"]["cuda_peak_allocated_bytes"] > 0


def test_input_bound_sample_is_input_bound():
    with open_run(SAMPLES / "cpu-cnn-input-bound") as run:
        s = summarize(run)
    assert s["step_time"]["phases"]["data_wait"]["share"] > 0.5


def test_ls_lists_runs(cpu_run, capsys):
    assert cli_main(["ls", str(cpu_run.parent), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["id"] for r in rows] == [cpu_run.name] and rows[0]["steps"] == 8


def test_a_run_without_steady_steps_is_measured_over_all_its_steps_on_every_surface(tmp_path):
    """One rule (StepTable.counted): a run too short to leave its warm-up is measured over the steps it has by the
    step time, the ranks and nodes tables, the advisor and compare alike (they once disagreed: a median beside
    None); phase names are spelled once (fmt.phase)."""
    from timeline import write_run

    from gpulens import fmt
    from gpulens.profiler import RunAnalysis
    from gpulens.profiler.analysis.compare import side_of

    d = np.array([0.010, 0.012, 0.011, 0.013])
    path = write_run(tmp_path / "r", {"forward": d, "data_wait": d / 2}, warmup=4)
    with open_run(path) as run:
        assert not run.steps().steady().any() and run.steps().counted().all()
        analysis = RunAnalysis(run)
        report = analysis.report().as_dict()
        side = side_of(run, analysis.report())
        ranks = analysis.measurements.ranks
    median = pytest.approx(float(np.median(d * 1.5)), rel=1e-5)  # times are stored as float32 offsets
    assert report["step_time"]["steady"] == 0 and report["step_time"]["count"] == 4
    assert report["step_time"]["median_s"] == median
    assert [(r["steps"], r["step_time_median_s"]) for r in report["ranks"]] == [(4, median)]
    assert [(n["steps"], n["step_time_median_s"]) for n in report["nodes"]] == [(4, median)]
    assert side.durations.size == 4 and [(r.steps, r.step_s) for r in ranks] == [(4, median)]
    assert fmt.phase("data_wait") == "data wait" and fmt.phase("all_reduce") == "all reduce"
