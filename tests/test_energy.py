"""Energy per run, step, phase and sample (profiler/analysis/energy.py) on real H100 counter and power
readings recorded in sample_runs/, and the places it shows (report, card)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from gpulens.dashboard.overview import energy_card
from gpulens.profiler import RunAnalysis, open_run
from gpulens.profiler.analysis.energy import POWER_AVERAGE_S, curve, energy_summary, per_step, phase_fit
from gpulens.profiler.store.reader import Series

SAMPLES = Path(__file__).resolve().parent.parent / "sample_runs"
H100 = ["h100-cnn-healthy", "h100-cnn-input-bound", "h100-gpt-small-batch", "h100-gpt-compiled"]


@pytest.mark.parametrize("name", H100)
def test_counter_energy_adds_up(name: str) -> None:
    with open_run(SAMPLES / name) as run:
        report = RunAnalysis(run, persist=False).report(suggestions=False).as_dict()
        counter = run.series("gpu.energy", 0)
        steps = run.steps()
    e = report["energy"]
    assert e["available"] and e["source"] == "nvml-energy-counter" and e["gpus"] == 1
    # the whole run is the counter's rise, as the GPU table says
    assert e["total_j"] == pytest.approx(float(counter.v[-1] - counter.v[0]))
    assert e["total_j"] == pytest.approx(report["gpus"][0]["energy_j"])
    assert e["wh"] == pytest.approx(e["total_j"] / 3600)
    # steps inside the readings plus the time outside steps make the whole (no joule counted twice)
    c = curve(0, counter, None)
    joules = per_step([c], steps)
    assert np.nansum(joules) + e["idle_j"] == pytest.approx(e["total_j"], rel=1e-6)
    # an H100 at work draws 60-700 W: J per step over the median step time is a power in that range
    watts = e["step_j_median"] / report["step_time"]["median_s"]
    assert 60 < watts < 700
    samples = report["throughput"]["samples_per_s"] / report["throughput"]["steps_per_s"]
    assert e["per_sample_j"] == pytest.approx(e["step_j_mean"] / samples, rel=1e-6)


@pytest.mark.parametrize("name", H100)
def test_integrated_power_agrees_with_the_counter(name: str) -> None:
    """Two independent NVML readings of the same GPU: the integral of its power and its energy counter."""
    with open_run(SAMPLES / name) as run:
        counter, power = run.series("gpu.energy", 0), run.series("gpu.power", 0)
    by_counter = curve(0, counter, power)
    by_power = curve(0, None, power)
    assert by_counter.source == "nvml-energy-counter" and by_power.source == "power-integration"
    t0, t1 = max(by_counter.t[0], by_power.t[0]), min(by_counter.t[-1], by_power.t[-1])
    span = np.array([t0, t1])
    a = np.diff(by_counter.at(span))[0]
    b = np.diff(by_power.at(span))[0]
    assert b == pytest.approx(a, rel=0.08)


def test_phase_split_recovers_known_watts() -> None:
    """Power readings made from known watts per phase (averaged over NVML's one second, with noise) over a
    real run's step table come back within their standard errors."""
    with open_run(SAMPLES / "h100-cnn-input-bound") as run:
        steps = run.steps()
    truth = {"data_wait": 90.0, "forward": 420.0, "backward": 610.0, "optimizer": 300.0, "other": 150.0}
    t0, t1 = float(steps.t_start[0]), float(steps.t_end[-1])
    fine = np.arange(t0, t1, 0.001)
    level = np.full(fine.size, 70.0)  # idle between steps
    cursor = steps.t_start.copy()
    for name in ("data_wait", "forward", "backward", "optimizer"):
        end = cursor + getattr(steps, name)
        for a, b in zip(cursor, end):
            level[(fine >= a) & (fine < b)] = truth[name]
        cursor = end
    for a, b in zip(cursor, steps.t_end):
        level[(fine >= a) & (fine < b)] = truth["other"]
    t = np.arange(t0 + POWER_AVERAGE_S, t1, 0.1)
    cum = np.concatenate(([0.0], np.cumsum(level) * 0.001))
    idx = np.searchsorted(fine, t)
    back = np.searchsorted(fine, t - POWER_AVERAGE_S)
    v = (cum[idx] - cum[back]) / POWER_AVERAGE_S + np.random.default_rng(3).normal(0, 3.0, t.size)
    split = phase_fit(Series("gpu.power", 0, "W", 0, t, v), steps, limit_w=700.0)  # an H100 SXM's limit
    assert split is not None
    found = 0
    for name, watts in truth.items():
        if name in split.fit.by_phase:
            est, se = split.fit.by_phase[name], split.fit.error[name]
            assert abs(est - watts) <= max(4 * se, 0.05 * watts), (name, est, se)
            found += 1
    assert found >= 3
    summary = energy_summary([curve(0, None, Series("gpu.power", 0, "W", 0, t, v))], [split], steps, (32.0, None))
    assert summary["phases"]
    for name, p in summary["phases"].items():
        assert abs(p["watts"] - truth.get(name, 70.0)) <= max(4 * p["watts_se"], 0.05 * truth.get(name, 70.0))


def test_cpu_run_says_why_there_is_no_energy() -> None:
    with open_run(SAMPLES / "cpu-cnn-workers") as run:
        report = RunAnalysis(run, persist=False).report(suggestions=False)
    e = report.energy
    assert not e.available and e.reason is not None and "no NVIDIA GPU" in e.reason
    card = energy_card(report)
    assert card.value == "n/a" and not card.available


def test_energy_card_shows_run_step_and_phase_energy() -> None:
    with open_run(SAMPLES / "h100-gpt-small-batch") as run:
        report = RunAnalysis(run, persist=False).report(suggestions=False)
    card = energy_card(report)
    assert card.value == f"{report.energy.wh:,.2f} Wh"
    assert "J/step" in card.sub and "mJ/token" in card.sub  # a language model: per token
    assert "GPU power while the host was in each phase" in card.title and "forward" in card.title
