"""GPU busy while the host was in each phase, from gpulens' ranges in a window's trace (trace/phase_busy.py)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from gpulens.profiler import open_run
from gpulens.profiler.analysis.run_analysis import RunAnalysis
from gpulens.profiler.analysis.trace import load_trace
from gpulens.profiler.analysis.trace.analysis import analyze
from gpulens.profiler.analysis.report import read_section
from gpulens.profiler.analysis.trace.phase_busy import combine_phase_busy, phase_gpu_busy
from gpulens.profiler.analysis.trace.result import WindowPhaseBusy

REPO = Path(__file__).resolve().parent.parent
SAMPLES = REPO / "sample_runs"


def _range(name: str, ts: float, dur: float) -> dict:
    return {"ph": "X", "cat": "user_annotation", "name": name, "ts": ts, "dur": dur, "pid": 1, "tid": 1}


def _kernel(ts: float, dur: float, corr: int, stream: int = 7) -> dict:
    return {"ph": "X", "cat": "kernel", "name": f"k{corr}", "ts": ts, "dur": dur, "pid": 0, "tid": stream,
            "args": {"correlation": corr, "stream": stream, "device": 0}}


def _launch(ts: float, corr: int) -> dict:
    return {"ph": "X", "cat": "cuda_runtime", "name": "cudaLaunchKernel", "ts": ts, "dur": 2, "pid": 1, "tid": 1,
            "args": {"correlation": corr}}


def _write(tmp_path: Path, name: str, events: list[dict]) -> Path:
    path = tmp_path / name
    path.write_text(json.dumps({"schemaVersion": 1, "traceEvents": events}))
    return path


def test_work_queued_ahead_runs_through_the_data_wait_and_counts_there(tmp_path):
    """Step 1's backward leaves 60 µs of kernels queued: they run into step 2's data wait (hidden input
    wait); step 2's forward kernels run inside it; two streams overlapping count once. Phase time before
    the window's first kernel starts (at 20 µs) is not counted: the GPU may run older work then."""
    events = [
        _range("gpulens.step#1", 0, 200), _range("gpulens.forward", 0, 100), _range("gpulens.backward", 100, 100),
        _range("gpulens.step#2", 200, 300), _range("gpulens.data_wait", 200, 100), _range("gpulens.forward", 300, 200),
        _launch(10, 1), _kernel(20, 50, 1),
        _launch(140, 2), _kernel(150, 110, 2),  # backward's kernel: 50 µs in backward, 60 in the wait
        _launch(302, 3), _kernel(300 + 5, 95, 3), _launch(304, 4), _kernel(350, 100, 4, stream=9),  # 305-450 once
    ]
    got = phase_gpu_busy(load_trace(_write(tmp_path, "t.json", events)))
    assert got == {"steps": 2, "ranges_us": 500.0, "gpu_lag_us": 10.0, "phases": {
        "forward": {"host_us": 80.0 + 200.0, "gpu_busy_us": 50.0 + 145.0},
        "backward": {"host_us": 100.0, "gpu_busy_us": 50.0},
        "data_wait": {"host_us": 100.0, "gpu_busy_us": 60.0}}}
    window = read_section(got, WindowPhaseBusy)  # as analyze() hands it on
    combined = combine_phase_busy([window, None, window])
    assert combined is not None
    assert list(combined.phases) == ["data_wait", "forward", "backward"] and combined.steps == 4
    assert combined.complete and combined.reason is None and combined.counted_share == pytest.approx(0.96)
    assert combined.phases["data_wait"].gpu_busy_share == pytest.approx(0.6)
    assert combined.phases["forward"].host_us == 560.0
    assert window.phases["forward"].host_us == 280.0  # the windows are left as they were


def test_a_gpu_running_behind_the_window_makes_the_split_unknown_not_zero(tmp_path):
    """A GPU 0.6 s behind its host (seen on an H200): the window's kernels start after its steps ended, and
    the work that ran meanwhile was launched before the window -- "0 % busy" would be false."""
    events = [_range("gpulens.step#1", 0, 200), _range("gpulens.data_wait", 0, 100),
              _range("gpulens.forward", 100, 100)]
    for i in range(20):
        events += [_launch(110 + i, 100 + i), _kernel(600_000 + 100 * i, 90, 100 + i)]
    got = phase_gpu_busy(load_trace(_write(tmp_path, "behind.json", events)))
    assert got["gpu_lag_us"] == pytest.approx(600_000 - 110) and sum(r["host_us"] for r in got["phases"].values()) == 0
    combined = combine_phase_busy([read_section(got, WindowPhaseBusy)])
    assert combined is not None and not combined.complete and combined.phases == {}
    assert combined.reason is not None and combined.reason.startswith("the GPU ran 600 ms behind the host")


def test_a_real_h200_trace_shows_an_idle_gpu_through_every_data_wait():
    run = SAMPLES / "h200-cnn-input-bound"
    if not run.exists():
        pytest.skip("sample run h200-cnn-input-bound not shipped")
    (trace_path,) = sorted((run / "traces").glob("*.pt.trace.json.gz"))
    got = phase_gpu_busy(load_trace(trace_path))
    assert got is not None and got["steps"] == 3
    p = got["phases"]
    assert p["data_wait"]["gpu_busy_us"] == 0 and p["data_wait"]["host_us"] > 100_000  # 3 waits of ~50 ms
    assert all(p[n]["gpu_busy_us"] > 0 for n in ("forward", "backward", "optimizer"))
    with open_run(run) as reader:
        report = RunAnalysis(reader, persist=False).report().as_dict()
    assert report["phase_gpu_busy"]["phases"]["data_wait"]["gpu_busy_share"] == 0
    low = next(s for s in report["suggestions"]["suggestions"] if s["id"] == "low_gpu_busy")
    assert "GPU busy while the host was in each phase (profiled steps, from the trace): data wait 0%" in low["finding"]
    loader = next(s for s in report["suggestions"]["suggestions"] if s["id"] == "dataloader_bound")
    assert "the GPU ran work through 0% of the profiled steps' data waits" in loader["finding"]


def test_traces_without_ranges_or_gpu_work_have_none():
    h100 = SAMPLES / "h100-cnn-input-bound"  # recorded before gpulens wrote ranges
    cpu = SAMPLES / "cpu-cnn-workers"  # ranges, but no GPU
    for run in (h100, cpu):
        (trace_path,) = sorted((run / "traces").glob("*.pt.trace.json.gz"))[:1]
        assert analyze(load_trace(trace_path)).phase_gpu_busy is None
    with open_run(h100) as reader:
        assert RunAnalysis(reader, persist=False).report(suggestions=False).as_dict()["phase_gpu_busy"] is None
