"""``gpulens compare``: noise-aware verdicts and the CI regression gate.

The gate's promise is tested as the issue states it: a run 20 % slower fails
the step-time gate; two runs of the same speed pass it 10 times out of 10.
Those judgements read runs whose step times are chosen (tests/timeline.py:
real-loop noise, drift and spikes, written through the real writer), so a
busy machine cannot move them; real CPU training runs check the rest (rows,
units, exit status following the verdict).  The gate is ``step_time>+10%``:
two runs of the same loop on a quiet 2-core machine differ by up to 4 %.
"""
from __future__ import annotations

import json
import re
import time
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import gpulens  # noqa: E402
from gpulens.cli import main  # noqa: E402
from gpulens.profiler.analysis.compare import Metric, Side, parse_rules  # noqa: E402
from gpulens.profiler.analysis.noise import median_change  # noqa: E402
from gpulens.profiler.errors import GpulensError  # noqa: E402
from timeline import noisy, write_run  # noqa: E402

STEP_S = 0.010  # the loop's wait per step for its batch




def _train(root: Path, name: str, slower: float = 0.0, steps: int = 60, wait: float = STEP_S,
           forward_wait: float = 0.0) -> Path:
    """A small MLP trained for ``steps`` steps; each step also waits STEP_S (x ``1 + slower``) for its batch."""
    torch.manual_seed(0)
    threads = torch.get_num_threads()
    # one intra-op thread, as a DataLoader worker or a GPU job's host side runs: with two, OpenMP's spinning
    # threads and this VM's timer ticks make whole stretches of 16 ms steps out of 10.7 ms ones at random
    torch.set_num_threads(1)
    try:
        return _loop(root, name, slower, steps, wait, forward_wait)
    finally:
        torch.set_num_threads(threads)


def _loop(root: Path, name: str, slower: float, steps: int, wait: float, forward_wait: float) -> Path:
    model = torch.nn.Sequential(torch.nn.Linear(64, 128), torch.nn.ReLU(), torch.nn.Linear(128, 8))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    with gpulens.track(name, runs_dir=root, quiet=True, profile=False, count_flops=False, advise=False) as run:
        for _ in range(steps):
            with run.phase("data_wait"):
                time.sleep(wait * (1 + slower))
                x, y = torch.randn(32, 64), torch.randint(0, 8, (32,))
            with run.phase("forward"):
                loss = torch.nn.functional.cross_entropy(model(x), y)
                time.sleep(forward_wait)  # the device's share of a step, where a test needs one
            with run.phase("backward"):
                loss.backward()
            with run.phase("optimizer"):
                opt.step()
                opt.zero_grad()
            run.step(samples=32, loss=loss)
    assert run.path is not None
    return run.path


def _gate(capsys, base: Path, cand: Path, rules: str = "step_time>+10%") -> tuple[int, dict]:
    code = main(["compare", str(base), str(cand), "--fail-on", rules, "--json"])
    return code, json.loads(capsys.readouterr().out)


def _timeline(root: Path, name: str, seed: int, slower: float = 0.0, n: int = 150) -> Path:
    """A run whose step times are chosen (real-loop noise: lognormal, drift, spikes): the gate's judgement
    tested without a clock a busy machine moves."""
    d = noisy(n, seed) * (1 + slower)
    return write_run(root / name, {"data_wait": 0.3 * d, "forward": 0.3 * d, "backward": 0.3 * d,
                                   "optimizer": 0.1 * d})


def test_gate_fails_a_slower_run_and_passes_the_same_speed_ten_times(tmp_path: Path, capsys) -> None:
    base = _timeline(tmp_path, "base", seed=1)
    slow = _timeline(tmp_path, "slower", seed=2, slower=0.2)
    code, out = _gate(capsys, base, slow)
    assert code == 1, out["gate"]
    st = next(m for m in out["metrics"] if m["name"] == "step_time")
    assert st["verdict"] == "worse" and 0.12 < st["change"] < 0.3 and st["low"] > 0.1
    assert out["gate"]["passed"] is False and out["gate"]["rules"][0]["failed"] is True
    for i in range(10):  # same speed, another draw of the noise each time: never a failed build
        a, b = _timeline(tmp_path, f"same-a{i}", seed=10 + 2 * i), _timeline(tmp_path, f"same-b{i}", seed=11 + 2 * i)
        code, out = _gate(capsys, a, b)
        assert code == 0, [m for m in out["metrics"] if m["name"] == "step_time"]


def test_the_gate_on_real_loops_exits_as_its_verdict_says(tmp_path: Path, capsys) -> None:
    """Two real loops, whatever the machine's load: the exit status follows the step-time row's verdict."""
    a, b = _train(tmp_path, "real-a", steps=30), _train(tmp_path, "real-b", steps=30)
    code, out = _gate(capsys, a, b)
    st = next(m for m in out["metrics"] if m["name"] == "step_time")
    broke = st["verdict"] == "worse" and st["change"] > 0.10
    assert code == (1 if broke else 0) and out["gate"]["passed"] is not broke


def test_compare_json_and_text(tmp_path: Path, capsys) -> None:
    # 8 ms of forward and 4 ms of data wait, then 12 ms of data wait: its share rises by ~27 pp (times chosen:
    # the verdicts are judgements of time; the real loops' rows and units are checked below)
    noise = noisy(40, seed=3, scale=1.0, sigma=0.03, spikes=0.0)
    a = write_run(tmp_path / "a", {"data_wait": 0.004 * noise, "forward": 0.008 * noise})
    b = write_run(tmp_path / "b", {"data_wait": 0.012 * noise[::-1], "forward": 0.008 * noise[::-1]})
    assert main(["compare", str(a), str(b), "--json"]) == 0  # no rules: no gate, never fails
    out = json.loads(capsys.readouterr().out)
    assert out["schema"] == "gpulens.compare/1" and out["gate"] is None
    names = [m["name"] for m in out["metrics"]]
    assert names[:2] == ["step_time", "throughput"] and "data_wait" in names and "peak_memory" in names
    by = {m["name"]: m for m in out["metrics"]}
    assert by["step_time"]["verdict"] == "worse" and by["throughput"]["verdict"] == "worse"
    assert by["data_wait"]["unit"] == "pp" and by["data_wait"]["change"] > 10 and by["data_wait"]["verdict"] == "worse"
    assert by["gpu_busy"]["verdict"] == "n/a" and by["mfu"]["verdict"] == "n/a"  # a CPU run says so, no guess
    assert main(["compare", str(a), str(b), "--fail-on", "data_wait>+10pp,throughput<-10%"]) == 1
    text = capsys.readouterr().out
    assert "95% CI" in text and "FAIL" in text and "gate: 2 of 2 rule(s) broken" in text


def test_compare_of_two_real_loops_has_every_row_with_its_unit(tmp_path: Path, capsys) -> None:
    a, b = _train(tmp_path, "a", steps=30), _train(tmp_path, "b", steps=30, slower=1.0)
    assert main(["compare", str(a), str(b), "--json"]) == 0
    by = {m["name"]: m for m in json.loads(capsys.readouterr().out)["metrics"]}
    assert by["step_time"]["unit"] == "%" and by["data_wait"]["unit"] == "pp" and by["peak_memory"]["unit"] == "%"
    assert by["step_time"]["base"] > 0 and by["throughput"]["candidate"] > 0 and by["peak_memory"]["base"] > 0
    assert by["gpu_busy"]["verdict"] == "n/a" and by["mfu"]["verdict"] == "n/a"  # a CPU run says so, no guess
    assert all(m["verdict"] in ("better", "worse", "changed", "same", "in noise", "n/a", "not judged")
               for m in by.values())


def test_compare_bad_input_is_exit_2_with_one_line(tmp_path: Path, capsys) -> None:
    a = _train(tmp_path, "a", steps=20)
    for args in (["compare", str(a), str(tmp_path / "missing")],
                 ["compare", str(a), str(a), "--fail-on", "step_time>5"],
                 ["compare", str(a), str(a), "--fail-on", "speed>+5%"],
                 ["compare", str(a), str(a), "--fail-on", "data_wait>+5%"],  # shares change in pp
                 ["compare", str(a), str(a), "--fail-on", "energy_per_sample>+5%"]):  # no GPU: no energy
        assert main(args) == 2, args
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("gpulens: error: "), err


def test_compare_reads_a_store_url(tmp_path: Path, capsys) -> None:
    pytest.importorskip("fsspec")
    from gpulens.profiler.store.publisher import publish_run

    a = _train(tmp_path / "local", "a", steps=20)
    store = f"file://{tmp_path / 'store'}"
    publish_run(a, store)
    code = main(["compare", f"{store}/{a.name}", str(a), "--json", "--fail-on", "step_time>+5%"])
    out = json.loads(capsys.readouterr().out)
    assert code == 0 and out["base"]["id"] == out["candidate"]["id"] == a.name
    assert next(m for m in out["metrics"] if m["name"] == "step_time")["change"] == 0.0


def test_rules_parse() -> None:
    rules = parse_rules("step_time>+5%, peak_memory>+10%,data_wait>+3pp,throughput<-5%")
    assert [(r.metric, r.above, r.threshold, r.unit) for r in rules] == [
        ("step_time", True, 0.05, "%"), ("peak_memory", True, 0.10, "%"), ("data_wait", True, 3.0, "pp"),
        ("throughput", False, -0.05, "%")]
    with pytest.raises(GpulensError):
        parse_rules(" , ")


def test_block_bootstrap_interval_widens_with_correlated_noise() -> None:
    """Slow stretches (a busy neighbour for 100 steps) must widen the interval, not be read as 100 independent
    slow steps: the same two distributions, shuffled and in runs, give intervals of very different widths."""
    rng = np.random.default_rng(0)
    slow = (np.arange(1000) // 100) % 3 == 0  # four stretches of 100 slow steps
    base = np.where(slow, 0.012, 0.010) + rng.normal(0, 5e-4, 1000)
    cand = 0.010 + rng.normal(0, 5e-4, 1000)
    runs = median_change(base, cand)
    shuffled = median_change(rng.permutation(base), cand)
    assert runs is not None and shuffled is not None
    assert (runs.high - runs.low) > 1.8 * (shuffled.high - shuffled.low)
    assert Metric("x", "x", "%", "lower", change=0.0, low=-0.01, high=0.01).significant is False


def test_long_runs_keep_the_exact_figures_and_an_interval_around_them() -> None:
    """Past MAX_POINTS steps the resamples run on thinned steps; the values stay those of every step."""
    from gpulens.profiler.analysis.noise import MAX_POINTS, ratio_change

    rng = np.random.default_rng(1)
    n = 5 * MAX_POINTS
    dur_a, dur_b = rng.gamma(20, 0.0005, n), rng.gamma(20, 0.0006, n)
    samples = np.full(n, 32.0)
    tput = ratio_change((samples, dur_a), (samples, dur_b))
    assert tput.base == pytest.approx(samples.sum() / dur_a.sum(), rel=1e-12)
    assert tput.candidate == pytest.approx(samples.sum() / dur_b.sum(), rel=1e-12)
    assert tput.low < tput.change < tput.high
    st = median_change(dur_a, dur_b)
    assert st.base == pytest.approx(np.median(dur_a)) and st.low < st.change < st.high


@pytest.mark.parametrize("columns", [None, "80"])  # a CI log (a pipe, no COLUMNS), an 80-column terminal
def test_compare_never_cuts_the_verdicts(columns):
    import os
    import subprocess
    import sys

    samples = Path(__file__).resolve().parent.parent / "sample_runs"
    env = {k: v for k, v in os.environ.items() if k != "COLUMNS"}
    if columns:
        env["COLUMNS"] = columns
    gpulens_bin = str(Path(sys.executable).with_name("gpulens"))
    proc = subprocess.run([gpulens_bin, "compare", str(samples / "h100-cnn-input-bound"),
                           str(samples / "h100-cnn-healthy"), "--fail-on", "step_time>+5%"],
                          capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode in (0, 1), proc.stderr
    lines = proc.stdout.splitlines()
    row = next(line for line in lines if line.strip().startswith("Step time"))
    assert re.search(r"(better|worse|same|in noise|changed|not judged|n/a)( \[\d+\])?$", row.rstrip()), row
    assert "95% CI" in proc.stdout and "verdict" in proc.stdout
    if columns:
        assert max(len(line) for line in lines) <= 80


def _side(name: str, durations: np.ndarray, samples: np.ndarray) -> Side:
    n = durations.size
    return Side(id=name, path=name, batch_size=int(samples[0]), durations=durations, samples=samples,
                tokens=np.full(n, np.nan), phases={"forward": durations * 0.4, "data_wait": durations * 0.1},
                readings={}, reading_means={}, step_energy=np.full(n, np.nan),
                memory=None, mfu=None, tensor_core_share=None)


def test_step_time_and_samples_per_s_never_contradict_and_the_median_says_why_it_differs():
    """Faster typical steps but a slow step in every ten: the run is slower (more seconds per sample); the
    median step is faster.  Step time and samples/s say the same, the median row says what differs."""
    from gpulens.profiler.analysis.compare import compare

    rng = np.random.default_rng(3)
    base = 0.010 + rng.normal(0, 0.0004, 300)
    cand = 0.008 + rng.normal(0, 0.0004, 300)
    cand[::10] = 0.060  # an evaluation stall / checkpoint every ten steps
    batch = np.full(300, 32.0)
    out = compare(_side("base", base, batch), _side("cand", cand, batch))
    st, tp, med = (out.metric(name) for name in ("step_time", "throughput", "median_step"))
    assert st.verdict == tp.verdict == "worse" and med.verdict == "better"
    assert st.change == pytest.approx(cand.mean() / base.mean() - 1)
    assert (1 + st.change) * (1 + tp.change) == pytest.approx(1.0)  # mirrors, interval included
    assert (1 + st.low) * (1 + tp.high) == pytest.approx(1.0) and (1 + st.high) * (1 + tp.low) == pytest.approx(1.0)
    assert "typical step" in med.note

    # in noise on one row is in noise on its mirror, for every seed of a same-speed pair
    for seed in range(20):
        r = np.random.default_rng(seed)
        a, b = 0.01 * r.lognormal(0, 0.3, 120), 0.01 * r.lognormal(0, 0.3, 120)
        pair = compare(_side("a", a, batch[:120]), _side("b", b, batch[:120]))
        assert pair.metric("step_time").verdict == pair.metric("throughput").verdict


def test_samples_per_step_that_vary_are_named_on_the_samples_per_s_row():
    from gpulens.profiler.analysis.compare import compare

    rng = np.random.default_rng(0)
    d = 0.01 + rng.normal(0, 0.0005, 100)
    samples = np.full(100, 32.0)
    samples[::25] = 8.0  # each epoch's last, partial batch
    out = compare(_side("a", d, samples), _side("b", d * 1.2, samples))
    assert "samples per step vary" in out.metric("throughput").note
    assert out.metric("step_time").verdict == "worse" and out.metric("throughput").verdict == "worse"
