"""Predicted gains: the loading model on per-step figures whose answer is known, the rule that carries it, and
the training thread's data-wait split (CPU, run queue, blocked) measured in real loops.

How close the predictions come to what a change really does is measured on a quiet machine by
bench/predictions.py (real loops, the change applied): figures in docs/advisor.md.  Here nothing judges a
time a busy host can stretch.
"""
from __future__ import annotations

import json
import time
from dataclasses import replace

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, Dataset

import gpulens
from gpulens.profiler import open_run
from gpulens.profiler.analysis.advisor import Measurements, advise_measurements
from gpulens.profiler.analysis.advisor.predict_loading import LoadingInputs, predict_workers, step_with
from gpulens.profiler.store.schema import FLAG_WHATIF

MS = 1e-3


def test_reads_that_block_are_hidden_by_workers_until_the_loops_own_work_limits():
    # 50 ms steps: 30 ms waiting on reads (the thread blocked), 20 ms of compute on one core; two cores
    x = LoadingInputs(step_s=50 * MS, wait_s=30 * MS, workers=0, cores=2, proc_cores=0.4, wait_cpu_share=0.0,
                      wait_runnable_share=0.0)
    assert step_with(x, 1, (0.0, 30 * MS)) == (pytest.approx(30 * MS), "the loaders")
    p = predict_workers(x)
    assert p is not None and p.workers == 2  # 15 ms of loading per step: the 20 ms of compute is the limit
    assert p.step_s == pytest.approx(20 * MS) and p.gain == pytest.approx(0.6) and p.limit == "the loop's own work"
    assert p.low < p.gain < p.high and p.split_known


def test_cpu_heavy_loading_is_limited_by_the_cores():
    # the same step, but loading computes: 30 ms of CPU per batch in the training thread, which is busy throughout
    x = LoadingInputs(step_s=50 * MS, wait_s=30 * MS, workers=0, cores=2, proc_cores=1.0, wait_cpu_share=1.0,
                      wait_runnable_share=0.0)
    one = predict_workers(x, workers=1)
    assert one is not None and one.step_s == pytest.approx(30 * MS) and one.limit == "the loaders"
    # two workers would load a batch in 15 ms each, but the loop's thread and two busy workers on two cores run
    # at 2/3 speed: the loop's 20 ms become 30, no better than one worker -- which is what is proposed
    two = predict_workers(x, workers=2)
    assert two is not None and two.step_s == pytest.approx(30 * MS) and two.limit == "the loop's own work"
    p = predict_workers(x)
    assert p is not None and p.workers == 1 and p.gain == pytest.approx(0.4)
    # four cores: two workers and the loop fit, and the 50 ms of CPU per step need only 12.5 ms of them
    roomy = predict_workers(replace(x, cores=4))
    assert roomy is not None and roomy.workers == 2 and roomy.step_s == pytest.approx(20 * MS)


def test_a_busy_host_and_an_unmeasured_split_widen_the_interval_not_the_point():
    quiet = LoadingInputs(step_s=50 * MS, wait_s=30 * MS, workers=0, cores=2, proc_cores=1.0, wait_cpu_share=0.5,
                          wait_runnable_share=0.0)
    p = predict_workers(quiet, workers=2)
    busy = predict_workers(replace(quiet, others_cores=1.0), workers=2)
    assert p is not None and busy is not None
    assert busy.high == p.high  # others may yield their CPU to the new workers, as on a quiet host ...
    assert busy.gain < p.gain and busy.low < p.low  # ... the point estimate counts on what they left
    # without the process' CPU, only the split says whether four workers on two cores compute (the cores limit
    # them) or wait on reads (they hide the waits): unmeasured, the interval spans both
    lean = LoadingInputs(step_s=50 * MS, wait_s=40 * MS, workers=0, cores=2, wait_cpu_share=1.0,
                         wait_runnable_share=0.0)
    cpu, blocked = (predict_workers(replace(lean, wait_cpu_share=share), workers=4) for share in (1.0, 0.0))
    unknown = predict_workers(replace(lean, wait_cpu_share=None), workers=4)
    assert cpu is not None and blocked is not None and unknown is not None and not unknown.split_known
    # computing, the loop's thread and four workers share two cores (all at 2/5 speed): 50 ms of CPU, 25 ms
    assert cpu.step_s == pytest.approx(25 * MS) and blocked.step_s == pytest.approx(10 * MS)
    assert unknown.low <= cpu.low and unknown.high >= blocked.high


def test_workers_the_loop_waits_on_tell_their_own_cost():
    # one worker, idle on reads (no CPU): the loop waits 10 ms of a 30 ms step, so a batch takes the worker 30 ms
    x = LoadingInputs(step_s=30 * MS, wait_s=10 * MS, workers=1, cores=4, proc_cores=0.6, workers_cores=0.0)
    p = predict_workers(x)
    assert p is not None and p.workers == 2 and p.blocked_s == pytest.approx(30 * MS) and p.cpu_s == 0.0
    assert p.step_s == pytest.approx(20 * MS)  # 15 ms per batch from two workers: the loop's 20 ms is the limit


def _measured(**kw) -> Measurements:
    base = dict(run_id="unit", steps=200, steady_steps=190, step_s=0.05, cpu_count=2, workers=None,
                phase_share={"data_wait": 0.6, "forward": 0.15, "backward": 0.2, "optimizer": 0.03, "other": 0.02},
                proc_cpu_cores=0.4, host_busy_cores=0.45, wait_cpu_share=0.0, wait_runnable_share=0.02)
    base.update(kw)
    return Measurements(**base)


def test_the_rule_proposes_the_change_and_a_point_estimate_never_above_the_bound():
    advice = advise_measurements(_measured()).as_dict()
    s = next(s for s in advice["suggestions"] if s["id"] == "dataloader_bound")
    assert s["change"] == {"num_workers": 2, "persistent_workers": True}
    p = s["prediction"]
    assert s["expected_gain_fraction"] == pytest.approx(0.6)
    assert p["low"] <= p["gain_fraction"] <= s["expected_gain_fraction"] <= p["high"]
    assert p["basis"].startswith("model: ") and "predicted" in s["expected_gain"]
    assert "num_workers=2" in s["snippet"] and "num_workers=2" in s["action"]
    # no core count: the old heuristic's change, and no prediction
    bare = advise_measurements(_measured(cpu_count=None)).as_dict()
    s = next(s for s in bare["suggestions"] if s["id"] == "dataloader_bound")
    assert s["prediction"] is None and "predicted" not in s["expected_gain"]


def test_the_rule_declines_workers_that_would_share_cores_the_loop_keeps_busy():
    # a CPU run whose torch threads keep both cores busy; loading computes 15 ms of each 50 ms step in its thread
    m = _measured(phase_share={"data_wait": 0.3, "forward": 0.3, "backward": 0.3, "optimizer": 0.05, "other": 0.05},
                  proc_cpu_cores=2.0, host_busy_cores=2.0, wait_cpu_share=1.0, wait_runnable_share=0.0)
    s = next(s for s in advise_measurements(m).as_dict()["suggestions"] if s["id"] == "dataloader_bound")
    assert s["change"] is None and s["prediction"] is None  # no change without a prediction that it helps
    assert s["action"].startswith("More workers are not predicted to help: the best, 1 worker, would not shorten")
    assert "predicted" not in s["expected_gain"]


class _Slow(Dataset):
    """Each sample sleeps (a read that blocks) or computes (a transform), for ``each`` seconds."""

    def __init__(self, kind: str, each: float) -> None:
        self.kind, self.each = kind, each

    def __len__(self) -> int:
        return 8 * 48

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        if self.kind == "sleep":
            time.sleep(self.each)
        else:
            end = time.thread_time() + self.each
            while time.thread_time() < end:
                pass
        return torch.ones(4), i % 2


@pytest.mark.parametrize("kind", ["sleep", "compute"])
def test_the_training_threads_waits_are_split_into_cpu_run_queue_and_blocked(tmp_path, kind):
    """Blocked time is what the thread did not run and did not wait to run: a sleeping read's time, never a
    transform's, however busy the host (a preempted transform waits in the run queue, not blocked)."""
    model = torch.nn.Linear(4, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    each = 0.002
    with gpulens.track(kind, runs_dir=tmp_path, quiet=True, advise=False, profile_every=0) as run:
        for x, y in run.loader(DataLoader(_Slow(kind, each), batch_size=8)):
            loss = torch.nn.functional.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            run.step()
    with open_run(run.path) as r:
        w = r.meta(0)["data_wait_cpu"]
    assert w["waits"] == 48 // 8  # one wait in eight measured: 48 batches
    blocked = w["wall_s"] - w["cpu_s"] - w["runnable_s"]
    slept = w["waits"] * 8 * each
    if kind == "sleep":
        assert slept * 0.95 <= blocked <= w["wall_s"] and w["cpu_s"] < slept
    else:
        assert w["cpu_s"] >= slept * 0.95 and blocked < 0.25 * w["wall_s"], w


def _runs(tmp_path):
    """A loop that waits 30 ms of each 50 ms step on reads (the training thread blocked), on 4 idle cores, and
    the same loop after ``num_workers=2``: 1 ms of wait left in a 21 ms step (times chosen, written through
    the real writer)."""
    from timeline import write_run

    n = 120
    base = write_run(tmp_path / "base", {"data_wait": np.full(n, 0.030), "forward": np.full(n, 0.010),
                                         "backward": np.full(n, 0.008), "optimizer": np.full(n, 0.002)},
                     meta={"host_info": {"cpu_count": 4},
                           "data_wait_cpu": {"waits": 30, "wall_s": 0.9, "cpu_s": 0.0, "runnable_s": 0.0}},
                     series={"proc.cpu": 0.4, "host.cpu": 10.0})
    cand = write_run(tmp_path / "cand", {"data_wait": np.full(n, 0.001), "forward": np.full(n, 0.010),
                                         "backward": np.full(n, 0.008), "optimizer": np.full(n, 0.002)},
                     meta={"host_info": {"cpu_count": 4}},
                     series={"proc.cpu": 0.95, "host.cpu": 24.0, "workers.count": 2.0, "workers.cpu": 0.0})
    return base, cand


def test_advise_and_the_card_carry_the_change_and_the_prediction(tmp_path, capsys):
    from gpulens.cli import main as cli_main
    from gpulens.dashboard.components import suggestion_card

    base, _ = _runs(tmp_path)
    assert cli_main(["advise", str(base), "--json"]) == 0
    s = next(s for s in json.loads(capsys.readouterr().out)["suggestions"] if s["id"] == "dataloader_bound")
    # 2 workers hide the 30 ms of reads (15 ms each); the loop's 20 ms of its own work is what is left
    assert s["change"] == {"num_workers": 2, "persistent_workers": True}
    assert s["prediction"]["gain_fraction"] == pytest.approx(0.6) and s["prediction"]["measure"] == "mean_step"
    assert s["prediction"]["low"] == pytest.approx(1 - 0.020 * 1.35 / 0.050)  # the model's error on the test set
    assert s["prediction"]["high"] == pytest.approx(1 - 0.020 * 0.65 / 0.050)  # above the bound by the model's error
    assert "100% blocked" in s["finding"]
    assert cli_main(["advise", str(base)]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "change: num_workers=2, persistent_workers=True" in text
    assert "predicted: 60% shorter steps (46% to 74%); model: loading overlapped" in text
    card = json.dumps(suggestion_card(s, 0, []).to_plotly_json(), default=lambda o: o.to_plotly_json())
    assert "num_workers=2, persistent_workers=True" in card and "60% shorter steps (46% to 74%)" in card


def test_compare_says_what_the_fix_was_predicted_to_do_and_what_it_did(tmp_path, capsys):
    from gpulens.cli import main as cli_main

    base, cand = _runs(tmp_path)
    assert cli_main(["compare", str(base), str(cand), "--json"]) == 0
    fixes = json.loads(capsys.readouterr().out)["fixes"]
    assert len(fixes) == 1
    f = fixes[0]
    assert (f["suggestion"], f["applied"], f["unchecked"]) == ("dataloader_bound", {"num_workers": 2},
                                                               ["persistent_workers"])
    assert f["predicted"] == pytest.approx(0.6) and f["got"] == pytest.approx(1 - 21 / 50, rel=1e-4) and f["inside"]
    assert f["got_low"] <= f["got"] <= f["got_high"]
    assert cli_main(["compare", str(base), str(cand)]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert ("fix dataloader_bound (num_workers=2 applied): predicted 60% shorter mean step (46% to 74%), got 58%"
            in text) and "inside the predicted interval" in text
    # the other way round, nothing was proposed for the candidate's workers: no fix to check
    assert cli_main(["compare", str(cand), str(base), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["fixes"] == []


def test_a_loading_fix_is_checked_on_the_mean_step_not_the_rounds_short_steps(tmp_path, capsys):
    """Workers started together deliver in rounds (one step waits, the next two find their batch): the median
    step is a short one, the mean step the rate the workers sustain, which the loading prediction is about."""
    from gpulens.cli import main as cli_main
    from timeline import write_run

    base, _ = _runs(tmp_path)
    n = 300
    wait = np.resize([0.033, 0.0, 0.0], n)  # 11 ms a step on average, 0 in two steps of three
    rounds = write_run(tmp_path / "rounds", {"data_wait": wait, "forward": np.full(n, 0.010)},
                       meta={"host_info": {"cpu_count": 4}},
                       series={"proc.cpu": 0.95, "host.cpu": 24.0, "workers.count": 2.0, "workers.cpu": 0.0})
    assert cli_main(["compare", str(base), str(rounds), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    median = next(m for m in out["metrics"] if m["name"] == "median_step")
    mean = next(m for m in out["metrics"] if m["name"] == "step_time")
    f = out["fixes"][0]
    assert median["change"] == pytest.approx(0.010 / 0.050 - 1, abs=1e-3)  # the short steps: -80 %
    assert f["measure"] == "mean_step" and f["got"] == pytest.approx(-mean["change"])
    assert f["got"] == pytest.approx(1 - 0.021 / 0.050, abs=2e-3) and f["inside"]


def test_the_compare_page_shows_the_fix_beside_its_prediction(tmp_path):
    from gpulens.dashboard import comparison, data

    base, cand = _runs(tmp_path)
    a, b = data.analyse(base), data.analyse(cand)
    assert a.report is not None and b.report is not None
    with open_run(base) as ra, open_run(cand) as rb:
        _, fixes = comparison.headline_rows(ra, a.report, rb, b.report, a.advice)
    assert fixes == [{"suggestion": "dataloader_bound", "applied": "num_workers=2",
                      "predicted": "60% shorter mean step (46% to 74%)", "got": "58% (95% CI 58% to 58%)",
                      "held": "inside"}]


# ----------------------------------------------------------------------------- a larger batch: time per sample
def test_a_larger_batch_shortens_the_time_per_sample_by_the_probes_curve_and_its_wait_grows():
    from gpulens.profiler.analysis.advisor.predict_batch import (PER_SAMPLE_ERROR_HIGH, PER_SAMPLE_ERROR_LOW,
                                                                 predict_batch)

    # the probe: 10 ms a step plus 0.1 ms a sample; the run: 20 ms at batch 16, of which 4 ms waits for data
    p = predict_batch(0.020, 0.004, 16, 128, t0=0.010, t1=0.0001)
    own = 0.016 * (0.010 + 0.0128) / (0.010 + 0.0016)  # the loop's own work by the probe's ratio
    wait = 0.004 * 128 / 16  # eight times the samples to load
    assert p.step_s == pytest.approx(own + wait)
    assert p.gain == pytest.approx(1 - (own + wait) / 128 / (0.020 / 16))
    assert p.low == pytest.approx(1 - (own + wait) / 128 * PER_SAMPLE_ERROR_HIGH / (0.020 / 16))
    assert p.high == pytest.approx(1 - (own + wait) / 128 * PER_SAMPLE_ERROR_LOW / (0.020 / 16))
    # a step that is all per-sample work gains nothing from a larger batch, whatever the batch
    assert predict_batch(0.020, 0.0, 16, 128, t0=0.0, t1=0.001).gain == pytest.approx(0.0)
    assert predict_batch(0.020, 0.0, 16, 128, t0=-0.05, t1=0.001) is None  # a fit that says nothing there


def _batch_runs(tmp_path):
    """A loop at batch 16, 20 ms a step (no data wait), with a probe that fitted 10 ms + 0.1 ms a sample and
    1 MB of activations a sample under a budget that fits 128; and the same loop at batch 128: 40 ms a step
    (times chosen, written through the real writer)."""
    from timeline import write_run

    n = 120
    probe = {"device": "cpu", "capacity_bytes": (1e9 + 128.5e6) / 0.95, "margin": 0.05, "failed_at": None,
             "points": [{"batch": b, "peak_bytes": 1e9 + b * 1e6, "step_s": 0.010 + 0.0001 * b} for b in (16, 64, 256)]}
    phases = lambda step: {"forward": np.full(n, step * 0.4), "backward": np.full(n, step * 0.4),  # noqa: E731
                           "optimizer": np.full(n, step * 0.2)}
    base = write_run(tmp_path / "base", phases(0.020), samples=16, meta={"batch_probe": probe})
    cand = write_run(tmp_path / "cand", phases(0.040), samples=128)
    return base, cand


def test_the_batch_rule_proposes_the_batch_with_a_prediction_per_sample_and_compare_checks_it(tmp_path, capsys):
    from gpulens.cli import main as cli_main

    base, cand = _batch_runs(tmp_path)
    assert cli_main(["advise", str(base), "--json"]) == 0
    s = next(s for s in json.loads(capsys.readouterr().out)["suggestions"] if s["id"] == "batch_headroom")
    assert s["change"] == {"batch_size": 128}
    p = s["prediction"]
    per_sample = 0.020 * (0.010 + 0.0128) / (0.010 + 0.0016) / 128
    assert p["measure"] == "time_per_sample" and p["gain_fraction"] == pytest.approx(1 - per_sample / (0.020 / 16),
                                                                                      abs=1e-4)
    assert p["low"] < p["gain_fraction"] < p["high"] and "fitted on the probe at batches 16, 64, 256" in p["basis"]
    assert cli_main(["advise", str(base)]) == 0
    assert "predicted: 75% less time per sample (64% to 83%)" in " ".join(capsys.readouterr().out.split())
    # the candidate ran at 128: 40 ms for 128 samples against 20 ms for 16, 75 % less time a sample
    assert cli_main(["compare", str(base), str(cand), "--json"]) == 0
    (f,) = json.loads(capsys.readouterr().out)["fixes"]
    assert (f["suggestion"], f["applied"], f["measure"]) == ("batch_headroom", {"batch_size": 128}, "time_per_sample")
    assert f["got"] == pytest.approx(0.75, abs=1e-3) and f["inside"]
    assert cli_main(["compare", str(base), str(cand)]) == 0
    assert ("fix batch_headroom (batch_size=128 applied): predicted 75% less time per sample (64% to 83%), got 75%"
            in " ".join(capsys.readouterr().out.split()))


def test_a_batch_that_would_not_help_is_not_proposed():
    from gpulens.profiler.analysis.advisor.rules.batch import batch_headroom

    # every millisecond of the step is per-sample work (t0 = 0): a larger batch fits but saves no time
    m = Measurements(run_id="r", device="cpu", steps=100, step_s=0.016, batch_size=16,
                     probes=[{"batch": b, "peak_bytes": 1e9 + b * 1e6, "step_s": 0.001 * b} for b in (16, 64, 256)],
                     probe_capacity_bytes=(1e9 + 128.5e6) / 0.95)
    s = batch_headroom(m)
    assert s is not None and s.change is None and s.prediction is None


# ----------------------------------------------------------------------------- a slow optimizer: accumulation
def test_accumulating_spreads_the_optimizer_over_k_micro_batches():
    from gpulens.profiler.analysis.advisor.predict_accumulation import (GAIN_ERROR_HIGH, GAIN_ERROR_LOW,
                                                                        predict_accumulation)

    # a 10 ms step of which the optimizer takes 6 ms: 2 micro-batches take 4 + 4 + 6 = 14 ms for twice the samples
    p = predict_accumulation(0.010, 0.006, 2)
    assert p.gain == pytest.approx(1 - 0.014 / 2 / 0.010)  # 30 % less time per sample
    assert (p.low, p.high) == (pytest.approx(0.3 * GAIN_ERROR_LOW), pytest.approx(0.3 * GAIN_ERROR_HIGH))
    # never more than the whole optimizer step: with k micro-batches its share is all there is to save
    assert predict_accumulation(0.010, 0.006, 64).high == pytest.approx(0.6)
    assert predict_accumulation(0.010, 0.006, 4).gain == pytest.approx(0.6 * 0.75)
    assert predict_accumulation(0.010, 0.0, 2) is None and predict_accumulation(0.010, 0.02, 2) is None


def _optimizer_runs(tmp_path):
    """A CPU loop at batch 8 whose AdamW step takes 6 of each 10 ms, and the same loop accumulating gradients
    over 2 batches: 14 ms steps of 16 samples (times chosen, written through the real writer)."""
    from timeline import write_run

    n = 120
    meta = {"optimizers": [{"type": "AdamW", "device": "cpu", "impl": "foreach"}]}
    base = write_run(tmp_path / "base", {"forward": np.full(n, 0.0015), "backward": np.full(n, 0.0025),
                                         "optimizer": np.full(n, 0.006)}, samples=8, meta=meta)
    cand = write_run(tmp_path / "cand", {"forward": np.full(n, 0.003), "backward": np.full(n, 0.005),
                                         "optimizer": np.full(n, 0.006)}, samples=16, meta=meta)
    return base, cand


def test_the_optimizer_rule_proposes_accumulation_with_a_prediction_and_compare_checks_it(tmp_path, capsys):
    from gpulens.cli import main as cli_main

    base, cand = _optimizer_runs(tmp_path)
    assert cli_main(["advise", str(base), "--json"]) == 0
    s = next(s for s in json.loads(capsys.readouterr().out)["suggestions"] if s["id"] == "slow_optimizer")
    assert s["change"] == {"gradient_accumulation_steps": 2}
    p = s["prediction"]
    assert p["measure"] == "time_per_sample" and p["gain_fraction"] == pytest.approx(0.3, abs=1e-4)
    assert p["gain_fraction"] <= s["expected_gain_fraction"] + 1e-9 and "once per 2 micro-batches" in p["basis"]
    # the candidate: 14 ms for 16 samples against 10 ms for 8, 30 % less time a sample
    assert cli_main(["compare", str(base), str(cand), "--json"]) == 0
    (f,) = json.loads(capsys.readouterr().out)["fixes"]
    assert (f["suggestion"], f["applied"]) == ("slow_optimizer", {"gradient_accumulation_steps": 2})
    assert f["got"] == pytest.approx(0.3, abs=1e-3) and f["inside"]
    # the other way round (the accumulating run as the base) proposes nothing the plain run applied
    assert cli_main(["compare", str(cand), str(base), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["fixes"] == []


def test_an_unmeasured_fused_optimizer_keeps_an_upper_bound_beside_the_predicted_accumulation():
    from gpulens.profiler.analysis.advisor.rules.optimizer import slow_optimizer

    m = _measured(device="cuda", step_s=0.010, phase_share={"optimizer": 0.4, "forward": 0.3, "backward": 0.3},
                  optimizer="AdamW", optimizer_impl="foreach", recorded_by="gpulens run")
    s = slow_optimizer(m)
    # no model of a kernel count: fused is an upper bound and a what-if to run; the change is the modelled one
    assert "fused=True" in s.snippet and "gpulens run --what-if optimizer=fused" in s.action
    assert s.change == {"gradient_accumulation_steps": 2} and s.prediction.basis.startswith("model:")
    assert s.expected_gain.startswith("gradient accumulation (k=2): ") and "(fused, not measured)" in s.expected_gain


def _optimizer_what_if(change: float) -> Measurements:
    """A CPU run (AdamW, for-loop, torch 2.13) whose --what-if optimizer=fused measured ``change`` on its step."""
    from gpulens.profiler.analysis.report import WhatIf, read_section

    m = _measured(device="cpu", step_s=0.018, phase_share={"optimizer": 0.6, "forward": 0.2, "backward": 0.2},
                  optimizer="AdamW", optimizer_impl="for-loop", torch_version="2.13.0")
    m.what_if = read_section({
        "kind": "optimizer", "status": "done", "reason": None, "batch_size": None, "base_batch": None,
        "implementation": "fused", "first_step": 20, "last_step": 49, "steps": 30, "measure": "step time",
        "step_time_median_s": 0.018 * (1 + change), "baseline_step_time_median_s": 0.018,
        "step_time_change": change, "step_time_change_ci": [change - 0.01, change + 0.01],
        "data_wait_median_s": None, "baseline_data_wait_median_s": None, "samples_per_s": None,
        "baseline_samples_per_s": None, "samples_per_s_change": None}, WhatIf)
    return m


def test_a_measured_fused_optimizer_is_the_change_with_the_measured_gain():
    from gpulens.profiler.analysis.advisor.rules.optimizer import slow_optimizer

    s = slow_optimizer(_optimizer_what_if(-0.48))
    assert s.change == {"fused": True} and "fused=True" in s.snippet
    p = s.prediction
    assert p.gain_fraction == pytest.approx(0.48) and p.measure == "median_step"
    # the stretch's interval on the step ratio (0.51-0.53), widened 0.85-1.15 by the test set
    assert (p.low, p.high) == (pytest.approx(1 - 0.53 * 1.15), pytest.approx(1 - 0.51 * 0.85))
    assert p.basis.startswith("what-if measured: the optimizer's fused implementation for steps 20-49")
    assert "measured (--what-if optimizer=fused, steps 20-49)" in s.finding
    assert s.gain_fraction >= p.gain_fraction  # the bound: the whole optimizer step
    # measured not to help: no fused change, and no fused recommendation on belief either
    flat = slow_optimizer(_optimizer_what_if(-0.02))
    assert flat.change == {"gradient_accumulation_steps": 2} and "fused=True" not in flat.snippet
    assert "(-2%)" in flat.finding


def test_compare_checks_a_fused_optimizer_fix(tmp_path, capsys):
    """The base ran AdamW for-loop and measured fused in a what-if (chosen timeline: 18 ms steps, 9.4 ms in the
    stretch); the candidate ran AdamW(fused=True) at 9.5 ms: compare finds the change applied and checks it."""
    from timeline import write_run

    from gpulens.cli import main as cli_main

    n = 120
    optimizer = np.where((np.arange(n) >= 20) & (np.arange(n) < 50), 0.0034, 0.012)
    stretch = {"kind": "optimizer", "implementation": "fused", "status": "done", "first_step": 20, "last_step": 49,
               "settle_steps": 1}
    base = write_run(tmp_path / "base", {"forward": np.full(n, 0.002), "backward": np.full(n, 0.004),
                                         "optimizer": optimizer}, samples=8,
                     meta={"torch_version": "2.13.0", "what_if": stretch,
                           "optimizers": [{"type": "AdamW", "device": "cpu", "impl": "for-loop"}]},
                     flags=np.where((np.arange(n) >= 20) & (np.arange(n) <= 50), FLAG_WHATIF, 0))
    cand = write_run(tmp_path / "cand", {"forward": np.full(n, 0.002), "backward": np.full(n, 0.004),
                                         "optimizer": np.full(n, 0.0035)}, samples=8,
                     meta={"torch_version": "2.13.0", "optimizers": [{"type": "AdamW", "device": "cpu",
                                                                      "impl": "fused"}]})
    assert cli_main(["advise", str(base), "--json"]) == 0
    s = next(s for s in json.loads(capsys.readouterr().out)["suggestions"] if s["id"] == "slow_optimizer")
    assert s["change"] == {"fused": True} and s["prediction"]["gain_fraction"] == pytest.approx(1 - 9.4 / 18, abs=0.01)
    assert cli_main(["compare", str(base), str(cand), "--json"]) == 0
    (f,) = json.loads(capsys.readouterr().out)["fixes"]
    assert (f["suggestion"], f["applied"]) == ("slow_optimizer", {"fused": True})
    assert f["got"] == pytest.approx(1 - 9.5 / 18, abs=0.01) and f["inside"]


def test_the_compare_page_says_a_batch_fix_per_sample(tmp_path):
    from gpulens.dashboard import comparison, data

    base, cand = _batch_runs(tmp_path)
    a, b = data.analyse(base), data.analyse(cand)
    assert a.report is not None and b.report is not None
    with open_run(base) as ra, open_run(cand) as rb:
        _, fixes = comparison.headline_rows(ra, a.report, rb, b.report, a.advice)
    assert fixes == [{"suggestion": "batch_headroom", "applied": "batch_size=128",
                      "predicted": "75% less time per sample (64% to 83%)", "got": fixes[0]["got"],
                      "held": "inside"}]
    assert fixes[0]["got"].startswith("75% (95% CI ")


# ------------------------------------------------------------------ DataLoader workers started every epoch
#: 10 epochs of 8 workers that do not persist: 0.3 s to start them (the first too), 0.06 s to stop them.
RESTARTS = {"starts": 10, "persistent_starts": 0, "workers": 8, "start_s": 3.0, "first_start_s": 0.3,
            "stops": 10, "stop_s": 0.6}


def _epochs(path, gap: float, restarts: dict) -> object:
    """200 steps of 20 ms in epochs of 20, each epoch after the first ``gap`` seconds after the last."""
    from timeline import write_run

    n = 200
    gaps = np.where((np.arange(n) % 20 == 0) & (np.arange(n) > 0), gap, 0.0)
    return write_run(path, {"data_wait": np.full(n, 0.001), "forward": np.full(n, 0.019)}, gaps=gaps,
                     meta={"loader_workers": restarts, "host_info": {"cpu_count": 2}})


def test_workers_started_every_epoch_get_persistent_workers_and_compare_checks_the_training_time(tmp_path,
                                                                                                  capsys):
    """The restarts lie between steps: no step time shows them, the run's span does.  The prediction is the
    run's own measured starts and stops after the first, over its span; a candidate whose workers persist is
    checked on the wall time per step (chosen timelines: 9 gaps of 0.36 s, then of 0.02 s)."""
    from gpulens.cli import main as cli_main
    from gpulens.profiler.analysis.advisor.rules.input import RESTART_COST, RESTART_HIGH, RESTART_LOW

    base = _epochs(tmp_path / "base", 0.36, RESTARTS)
    assert cli_main(["advise", str(base), "--json"]) == 0
    s = next(s for s in json.loads(capsys.readouterr().out)["suggestions"] if s["id"] == "worker_restarts")
    span = 200 * 0.020 + 9 * 0.36
    assert s["change"] == {"persistent_workers": True}
    p = s["prediction"]
    share = 9 * 0.36 / span  # measured; a restart costs the loop RESTART_COST times its own start and stop
    assert p["measure"] == "wall_per_step" and p["gain_fraction"] == pytest.approx(RESTART_COST * share, abs=1e-4)
    assert (p["low"], p["high"]) == pytest.approx((RESTART_LOW * share, RESTART_HIGH * share), abs=1e-4)
    assert "8 workers for 2 cores" in s["finding"] and "10 times" in s["finding"]
    assert "less training time predicted" in s["expected_gain"]

    persisted = dict(RESTARTS, starts=1, persistent_starts=1, start_s=0.3, stops=1, stop_s=0.06)
    cand = _epochs(tmp_path / "cand", 0.02, persisted)
    assert cli_main(["compare", str(base), str(cand), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    wall = next(m for m in out["metrics"] if m["name"] == "wall_per_step")
    step = next(m for m in out["metrics"] if m["name"] == "step_time")
    assert wall["change"] == pytest.approx((200 * 0.020 + 9 * 0.02) / span - 1, abs=1e-4)
    assert abs(step["change"]) < 1e-6  # the steps are the same: only the gaps changed
    (f,) = [f for f in out["fixes"] if f["suggestion"] == "worker_restarts"]
    assert f["applied"] == {"persistent_workers": True} and f["got"] == pytest.approx(-wall["change"]) and f["inside"]
    assert f["got_low"] < f["got"] < f["got_high"]  # blocks of steps resampled, each with the gap after it
    assert cli_main(["compare", str(base), str(cand)]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "Wall time per" in text and "less training time" in text  # the label wraps in 80 columns

    from gpulens.dashboard import comparison, data  # the compare page says it the same way

    a, b = data.analyse(base), data.analyse(cand)
    assert a.report is not None and b.report is not None
    with open_run(base) as ra, open_run(cand) as rb:
        _, fixes = comparison.headline_rows(ra, a.report, rb, b.report, a.advice)
    (shown,) = [f for f in fixes if f["suggestion"] == "worker_restarts"]
    assert shown["predicted"] == "54% less training time (36% to 72%)" and shown["held"] == "inside"
    assert shown["applied"] == "persistent_workers=True" and shown["got"].startswith("42% (95% CI ")


def test_persistent_workers_short_gaps_and_unreadable_figures_propose_nothing(tmp_path):
    from gpulens.profiler.analysis.advisor.rules.input import worker_restarts
    from gpulens.profiler.store.loader_workers import read

    def m(restarts: dict | None, span: float = 7.24) -> Measurements:
        return Measurements(run_id="r", cpu_count=2, span_s=span,
                            worker_starts=read({"loader_workers": restarts}) if restarts else None)

    assert worker_restarts(m(RESTARTS)) is not None
    assert worker_restarts(m(dict(RESTARTS, persistent_starts=10))) is None  # they persisted (one per loader)
    assert worker_restarts(m(RESTARTS, span=100.0)) is None  # 3.2 s of 100: under 5 %
    assert worker_restarts(m(dict(RESTARTS, starts=2))) is None  # one restart is no pattern
    assert worker_restarts(m(None)) is None  # no workers, or an older gpulens
    for junk in ({"starts": "ten"}, dict(RESTARTS, start_s=float("nan")), dict(RESTARTS, stops=-1), [1, 2],
                 dict(RESTARTS, starts=0)):
        assert read({"loader_workers": junk}) is None, junk


def test_each_dataloader_is_judged_on_its_own():
    """The run's sums mix its loaders: a persistent training loader (one start) and an evaluation loader that
    restarts (nine) read as "ten starts, not persistent".  Each loader's record says which restarts and what a
    restart of that one costs; a record from before loaders were told apart is read as one loader."""
    from gpulens.profiler.analysis.advisor.rules.input import worker_restarts
    from gpulens.profiler.store.loader_workers import MAX_LOADERS, OTHER_LOADERS, LoaderWorkers, read

    train = dict(RESTARTS, starts=1, persistent_starts=1, start_s=0.9, first_start_s=0.9, stops=1, stop_s=0.1,
                 label="Train, batch_size=32, RandomSampler")
    val = dict(RESTARTS, starts=9, start_s=0.9, first_start_s=0.1, stops=9, stop_s=0.18,
               label="Val, batch_size=64, SequentialSampler")
    sums = dict(RESTARTS, persistent_starts=1, start_s=1.8, stops=10, stop_s=0.28, loaders=[train, val])

    def advice(record: dict, span: float = 3.0):
        return worker_restarts(Measurements(run_id="r", cpu_count=2, span_s=span,
                                            worker_starts=read({"loader_workers": record})))

    s = advice(sums)
    assert s is not None and s.finding.startswith("The DataLoader (Val, batch_size=64, SequentialSampler) started its "
                                                  "8 workers on 2 cores 9 times (120.0 ms each")
    assert "960.0 ms of the 3.00 s" in s.finding  # 8 restarts of 0.12 s: the training loader's 1 s start is not one
    assert "the DataLoader (Train, batch_size=32, RandomSampler) keeps its workers" in s.finding
    assert advice({k: v for k, v in sums.items() if k != "loaders"}).finding.startswith(
        "The DataLoader started its 8 workers on 2 cores 10 times (208.0 ms each")  # the sums alone: as before
    both = dict(val, label="Val2, batch_size=64, SequentialSampler")
    two = advice(dict(sums, loaders=[val, both]), span=6.0)
    assert "SequentialSampler) started its 8 workers on 2 cores 9 times (120.0 ms each to fork, start and stop them); " \
           "the DataLoader (Val2" in two.finding and "1.92 s of the 6.00 s" in two.finding
    assert "of the DataLoader (Val, batch_size=64, SequentialSampler) and the DataLoader (Val2" in two.action
    assert advice(dict(sums, loaders=[train, dict(val, starts=2, stops=2)])) is None  # one restart: no pattern
    # persistent workers started nine times: nine DataLoaders, made again every epoch -- persistent_workers is set
    remade = advice(dict(sums, loaders=[train, dict(val, persistent_starts=9)]))
    assert remade.finding.endswith("; the DataLoader (Val, batch_size=64, SequentialSampler) has persistent_workers"
                                   "=True, so each of those starts was a new DataLoader; the DataLoader (Train, "
                                   "batch_size=32, RandomSampler) keeps its workers between epochs")
    assert remade.action.startswith("Make the DataLoader (Val, batch_size=64, SequentialSampler) once, before the "
                                    "epoch loop: persistent workers live as long as the DataLoader that started them.")
    assert "persistent_workers=True (" not in remade.action  # they have it
    assert remade.change is None and "960.0 ms of the 3.00 s" in remade.finding
    assert advice(dict(sums, loaders=[train, dict(val, starts=2, stops=2, persistent_starts=2)])) is None

    junk = [1, {"label": "x"}, dict(val, starts="nine"), dict(val, label=7), dict(val, label=""), train]
    assert [one.label for one in read({"loader_workers": dict(sums, loaders=junk)}).loaders] == [train["label"]]
    assert read({"loader_workers": dict(sums, loaders="many")}).loaders == []
    record = LoaderWorkers()
    for i in range(3 * MAX_LOADERS):  # a new kind of loader every epoch: the first ones apart, the rest as one
        record.loader(f"Set{i}, batch_size={i}, RandomSampler").add_start(False, 2, 0.1)
    assert len(record.loaders) == MAX_LOADERS and record.loaders[-1].label == OTHER_LOADERS
    assert record.loaders[-1].starts == 3 * MAX_LOADERS - (MAX_LOADERS - 1)
