"""Automatic step and phase detection (``gpulens run``'s AutoSteps) on real CPU loops of many shapes.

Each loop runs in this process with ``track(auto=True)``: the same detector
``gpulens run`` installs, without the subprocess.  The expected step count
is what a person reading the loop would say.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn
from torch.utils.data import DataLoader, TensorDataset

import gpulens
from gpulens.profiler import open_run

from train_loops import SlowImages, small_cnn


def _auto_run(runs_dir, name="auto"):
    return gpulens.track(name, runs_dir=runs_dir, auto=True, quiet=True, profile=False, count_flops=False,
                         advise=False)


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 4))


def _data(n=96, batch=16) -> DataLoader:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 32, generator=g)
    return DataLoader(TensorDataset(x, (x.sum(1) > 0).long()), batch_size=batch)


def _fit(model, opt, loader) -> None:
    """One epoch of the plainest loop: no gpulens in it."""
    for x, y in loader:
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()


def _steps(run):
    reader = open_run(run.path)
    return reader, reader.steps()


def test_plain_loop_one_step_per_batch_with_all_phases(runs_dir):
    model, loader = _mlp(), _data()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    run = _auto_run(runs_dir)
    for _ in range(2):
        _fit(model, opt, loader)
    run.close()
    reader, steps = _steps(run)
    assert len(steps) == 12
    assert set(steps.samples) == {16}
    later = slice(2, None)  # past the warm-up steps
    for phase in ("data_wait", "forward", "backward", "optimizer"):
        assert (getattr(steps, phase)[later] > 0).all(), phase
    # exclusive phases: they add up to the step's wall time
    total = steps.data_wait + steps.forward + steps.backward + steps.optimizer + steps.other
    assert np.allclose(total, steps.duration, rtol=1e-6, atol=1e-6)
    assert np.isfinite(steps.loss).all()
    auto = reader.meta()["auto"]
    assert auto["mode"] == "steps" and auto["boundary"] == "dataloader"


def test_gradient_accumulation_folds_micro_batches_into_one_step(runs_dir):
    model, loader = _mlp(), _data(n=128, batch=8)  # 16 micro-batches
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    run = _auto_run(runs_dir)
    for i, (x, y) in enumerate(loader):
        loss = nn.functional.cross_entropy(model(x), y) / 4
        loss.backward()
        if (i + 1) % 4 == 0:
            opt.step()
            opt.zero_grad()
    run.close()
    _, steps = _steps(run)
    assert len(steps) == 4
    assert set(steps.samples) == {32}  # four micro-batches of 8


@pytest.mark.parametrize("k", [2, 4])
def test_with_gradient_accumulation_the_recorded_loss_is_the_one_the_user_logs(runs_dir, k):
    """``(loss / k).backward()`` per micro-batch: the step's loss is the mean micro-batch loss, as HF
    Trainer, accelerate and Lightning log it -- not the last micro-batch's loss / k."""
    model, loader = _mlp(), _data(n=256, batch=8)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    logged, micro = [], []
    run = _auto_run(runs_dir)
    for i, (x, y) in enumerate(loader):
        loss = nn.functional.cross_entropy(model(x), y)
        micro.append(loss.item())
        (loss / k).backward()
        if (i + 1) % k == 0:
            opt.step()
            opt.zero_grad()
            logged.append(sum(micro) / k)
            micro = []
    run.close()
    _, steps = _steps(run)
    assert len(steps) == len(logged)
    assert np.allclose(steps.loss, logged, rtol=1e-5), (steps.loss[:4], logged[:4])


def _lbfgs(runs_dir, n: int):
    """``n`` LBFGS steps (a closure evaluated several times per step) under automatic steps; what step() returned."""
    model = _mlp()
    x, y = torch.randn(64, 32), torch.randint(0, 4, (64,))
    opt = torch.optim.LBFGS(model.parameters(), lr=0.5, max_iter=4)
    returned = []
    run = _auto_run(runs_dir)
    for _ in range(n):
        def closure():
            opt.zero_grad()
            loss = nn.functional.cross_entropy(model(x), y)
            loss.backward()
            return loss
        returned.append(float(opt.step(closure)))
    run.close()
    return run, returned


def test_a_closure_evaluated_again_records_its_first_loss(runs_dir):
    """LBFGS calls the closure (and backward) several times in one step: one loss, what step() returns."""
    run, returned = _lbfgs(runs_dir, 5)
    _, steps = _steps(run)
    assert np.allclose(steps.loss, returned, rtol=1e-6), (steps.loss, returned)


def test_two_optimizers_without_a_dataloader_count_one_step_per_iteration(runs_dir):
    torch.manual_seed(0)
    gen, disc = nn.Linear(8, 16), nn.Sequential(nn.Linear(16, 1), nn.Sigmoid())
    opt_g, opt_d = torch.optim.Adam(gen.parameters()), torch.optim.Adam(disc.parameters())
    bce = nn.BCELoss()
    real = torch.randn(32, 16)
    run = _auto_run(runs_dir)
    for _ in range(15):
        fake = gen(torch.randn(32, 8))
        opt_d.zero_grad()
        (bce(disc(real), torch.ones(32, 1)) + bce(disc(fake.detach()), torch.zeros(32, 1))).backward()
        opt_d.step()
        opt_g.zero_grad()
        bce(disc(fake), torch.ones(32, 1)).backward()
        opt_g.step()
        _ = float(fake.mean().item())  # .item() every step
    run.close()
    reader, steps = _steps(run)
    assert len(steps) == 15
    assert reader.meta()["auto"]["boundary"] == "forward"


def test_manual_sgd_without_optimizer_and_evaluation_left_out(runs_dir):
    from gpulens.profiler.store import clock

    model = _mlp()
    data = torch.randn(20, 16, 32)
    run = _auto_run(runs_dir)
    evaluations = []
    eval_forward_ends: list[float] = []  # when each evaluation forward returned (the test's own hook)
    model.register_forward_hook(lambda m, a, o: None if m.training else eval_forward_ends.append(clock.now()))
    for _epoch in range(2):
        model.train()
        for i in range(10):
            model.zero_grad()
            out = model(data[i])
            loss = out.pow(2).mean()
            loss.backward()
            with torch.no_grad():
                for p in model.parameters():
                    p.add_(p.grad, alpha=-0.01)
        model.eval()
        first = len(eval_forward_ends)
        with torch.no_grad():  # validation: belongs to no step
            for i in range(10, 20):
                model(data[i])
        evaluations.append((eval_forward_ends[first], clock.now()))
    run.close()
    _, steps = _steps(run)
    assert len(steps) == 20
    # no step swallowed an evaluation.  Timing-free: the last training step ends as the evaluation's first
    # forward begins, so before that forward returns, and no step reaches past it into the evaluation
    # (a scheduler pause anywhere cannot reorder these; an interval measured from outside the hooks could
    # start a pause earlier than the forward the recorder sees)
    for first_forward_end, e1 in evaluations:
        assert ((steps.t_end <= first_forward_end) | (steps.t_start >= e1)).all()
    # the first steps, held until it was clear no optimizer would come, were cut into single iterations:
    # consecutive, one forward each, not one step growing with the number held
    assert np.allclose(steps.t_start[1:10], steps.t_end[:9])
    assert not (np.diff(steps.forward[2:8]) > 0).all()
    assert (steps.forward[:8] < steps.duration[:8] + 1e-9).all()


def test_lbfgs_closure_steps(runs_dir):
    run, _ = _lbfgs(runs_dir, 6)
    _, steps = _steps(run)
    assert len(steps) == 6
    # forward and backward ran inside optimizer.step (the closure) and are charged to themselves
    assert (steps.backward[1:] > 0).all() and (steps.optimizer[1:] > 0).all()


def test_grad_scaler_step_counts_even_when_it_skips_the_optimizer(runs_dir):
    model, loader = _mlp(), _data()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 16)
    run = _auto_run(runs_dir)
    losses = []
    for i, (x, y) in enumerate(loader):
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y)
        if i == 2:
            loss = loss * float("inf")  # inf gradients: GradScaler skips optimizer.step (and halves the scale)
        losses.append(loss.item())
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
    run.close()
    _, steps = _steps(run)
    assert len(steps) == 6
    # the backward saw loss * scale; the recorded loss is the loss, also after update() changed the scale
    assert np.allclose(steps.loss[[0, 1, 3, 4, 5]], np.array(losses)[[0, 1, 3, 4, 5]], rtol=1e-6)
    assert np.isinf(steps.loss[2])


@pytest.mark.parametrize("enabled", [False, True])
def test_loss_is_recorded_through_a_grad_scaler_enabled_or_not(runs_dir, enabled):
    """GradScaler(enabled=False) (bf16 and CPU recipes) passes the loss through unscaled."""
    model, loader = _mlp(), _data()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    scaler = torch.amp.GradScaler("cpu", enabled=enabled)
    run = _auto_run(runs_dir)
    losses = []
    for x, y in loader:
        loss = nn.functional.cross_entropy(model(x), y)
        losses.append(loss.item())
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        opt.zero_grad(set_to_none=True)
    run.close()
    _, steps = _steps(run)
    assert np.allclose(steps.loss, losses, rtol=1e-6)


def test_cnn_with_dataloader_workers(runs_dir):
    loader = DataLoader(SlowImages(n=64, delay=0.004), batch_size=16, num_workers=2)
    model = small_cnn()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    run = _auto_run(runs_dir)
    _fit(model, opt, loader)
    run.close()
    _, steps = _steps(run)
    assert len(steps) == 4
    assert (steps.data_wait > 0).all()


def test_no_step_boundary_records_time_only(runs_dir, capsys):
    model = _mlp()
    run = gpulens.track("infer", runs_dir=runs_dir, auto=True, profile=False, count_flops=False, advise=False)
    with torch.no_grad():
        for _ in range(5):
            model(torch.randn(8, 32))
    run.close()
    reader, steps = _steps(run)
    assert len(steps) == 0
    assert reader.meta()["auto"]["mode"] == "time-only"
    assert "no training step found" in capsys.readouterr().err
    assert any(s.metric == "host.cpu" for s in reader.series_list())  # host samples were recorded


def test_manual_step_calls_take_over_from_detection(runs_dir):
    model, loader = _mlp(), _data()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    run = _auto_run(runs_dir)
    inner = gpulens.track("user")  # the script's own track(): the same run
    assert inner is run
    for x, y in loader:
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        inner.step(loss=loss)
    inner.close()
    run.close()
    _, steps = _steps(run)
    assert len(steps) == 6  # not 12: automatic boundaries stood down at the first run.step()


def test_hooks_are_removed_at_close(runs_dir):
    from torch.optim.optimizer import _global_optimizer_post_hooks, _global_optimizer_pre_hooks
    from torch.utils.data.dataloader import _BaseDataLoaderIter

    before = (torch.autograd.backward, _BaseDataLoaderIter.__next__, torch.amp.GradScaler.step)
    run = _auto_run(runs_dir)
    assert torch.autograd.backward is not before[0]
    run.close()
    assert (torch.autograd.backward, _BaseDataLoaderIter.__next__, torch.amp.GradScaler.step) == before
    assert not _global_optimizer_pre_hooks and not _global_optimizer_post_hooks


def test_a_failing_detector_never_reaches_the_training_loop(runs_dir, monkeypatch, caplog):
    model, loader = _mlp(), _data()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    run = _auto_run(runs_dir)

    def boom(*a, **k):
        raise RuntimeError("detector bug")

    monkeypatch.setattr(run.step_recorder, "enter", boom)  # every hook opens its phase through it
    _fit(model, opt, loader)  # must not raise
    run.close()
    assert "automatic step detection failed" in caplog.text


@pytest.mark.parametrize("order", ["eval_then_train", "train_only"])
def test_eval_before_training_is_not_a_step(runs_dir, order):
    model, loader = _mlp(), _data()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    run = _auto_run(runs_dir)
    if order == "eval_then_train":
        model.eval()
        with torch.no_grad():
            for x, _ in loader:
                model(x)
        model.train()
    _fit(model, opt, loader)
    run.close()
    _, steps = _steps(run)
    assert len(steps) == 6


@pytest.mark.parametrize("k", [1, 2, 4])
def test_run_loader_with_step_once_per_k_batches_records_one_step_per_optimizer_step(runs_dir, k):
    """``run.loader()`` with ``run.step()`` called once per k batches (gradient accumulation written by hand):
    each step is the user's optimizer step, k micro-batches and their samples; the loader's own one-step-per-
    iteration is only for loops that never call step()."""
    model, loader = _mlp(), _data(n=16 * 8 * 12, batch=8)  # 192 batches: 192 / k optimizer steps
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    losses = []
    with gpulens.track("manual-accumulation", runs_dir=runs_dir, quiet=True, profile=False, count_flops=False,
                       advise=False) as run:
        for i, (x, y) in enumerate(run.loader(loader)):
            loss = nn.functional.cross_entropy(model(x), y) / k
            loss.backward()
            if (i + 1) % k == 0:
                with run.phase("optimizer"):
                    opt.step()
                    opt.zero_grad()
                losses.append(loss.item())
                run.step(loss=loss)
    _, steps = _steps(run)
    counted = steps.counted()
    # before the loop's first step() the loader took each of the first k - 1 batches for a step: warm-up, kept
    # out of the figures; every step after is one optimizer step of k batches
    assert len(steps) == 192 // k + (k - 1)
    assert int(counted.sum()) == 192 // k - 2 if k == 1 else 192 // k - 1
    assert set(steps.samples[counted]) == {8 * k}
    assert (steps.optimizer[counted] > 0).all()
    assert np.allclose(steps.loss[k - 1:], losses, rtol=1e-6)
