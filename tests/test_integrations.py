"""Framework callbacks with the real libraries: Lightning (both import paths) and the HF Trainer.

Tiny models built from code on the CPU, synthetic data, nothing downloaded.
"""
from __future__ import annotations

import time

import numpy as np
import pytest
import torch
import torch.nn as nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

from gpulens.profiler import open_run


def _only_run(root):
    runs = [p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")]
    assert len(runs) == 1, runs
    return open_run(runs[0])


# ----------------------------------------------------------------------------- Lightning
def _stored(store_dir, monkeypatch):
    """The one run of a file:// store, read back through the cache (what the team sees)."""
    from gpulens.profiler.store.mirror import sync_runs

    monkeypatch.setenv("GPULENS_CACHE", str(store_dir.parent / "cache"))
    root, _ = sync_runs(f"file://{store_dir}")
    return _only_run(root)


def _lightning_fit(pl, root, accumulate: int = 1, fail_at: int | None = None, **kwargs):
    from gpulens.integrations.lightning import GpuLensCallback

    class Classifier(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.save_hyperparameters({"width": 64})
            self.net = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 4))
            self.seen: list[float] = []
            self.validations: list[list[float]] = []  # [start, end] of each validation loop, wall clock

        def on_validation_start(self):
            self.validations.append([time.time(), time.time()])

        def on_validation_end(self):
            self.validations[-1][1] = time.time()

        def training_step(self, batch, batch_idx):
            if fail_at is not None and self.global_step == fail_at:
                raise RuntimeError("boom in training_step")
            x, y = batch
            loss = nn.functional.cross_entropy(self.net(x), y)
            self.seen.append(loss.item())  # what the user would log, batch by batch
            return loss

        def validation_step(self, batch, batch_idx):
            x, y = batch
            self.log("val_loss", nn.functional.cross_entropy(self.net(x), y))

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    torch.manual_seed(0)
    x = torch.randn(160, 32)
    data = TensorDataset(x, (x.sum(1) > 0).long())
    trainer = pl.Trainer(max_epochs=2, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, limit_val_batches=3,
                         accumulate_grad_batches=accumulate,
                         callbacks=[GpuLensCallback(runs_dir=root, quiet=True, advise=False, **kwargs)])
    trainer.fit(Classifier(), DataLoader(data, batch_size=16), DataLoader(data, batch_size=16))
    return trainer


@pytest.mark.parametrize("import_path", ["lightning.pytorch", "pytorch_lightning"])
def test_lightning_callback_records_one_step_per_optimizer_step(tmp_path, import_path):
    pl = pytest.importorskip(import_path)
    trainer = _lightning_fit(pl, tmp_path)
    reader = _only_run(tmp_path)
    steps = reader.steps()
    assert len(steps) == trainer.global_step == 20
    meta = reader.meta()
    assert meta["status"] == "finished" and meta["name"] == "Classifier" and meta["steps_by"] == "lightning"
    assert meta["config"]["hparams"] == {"width": 64}
    later = slice(2, None)
    for phase in ("data_wait", "forward", "backward", "optimizer"):
        assert (getattr(steps, phase)[later] > 0).all(), phase
    assert set(steps.samples) == {16}
    assert np.isfinite(steps.loss).all()
    # validation belongs to no step: no step covers any of a validation loop's time (the loop's own clock
    # readings, not how long a step may take on a busy machine)
    validations = trainer.lightning_module.validations
    assert len(validations) >= 2
    for a, b in validations:
        inside = np.minimum(steps.t_end, b) - np.maximum(steps.t_start, a)
        assert inside.max() < 0.001, (a, b, inside.max())


def test_lightning_gradient_accumulation_and_crash(tmp_path, monkeypatch):
    pl = pytest.importorskip("lightning.pytorch")
    trainer = _lightning_fit(pl, tmp_path / "acc", accumulate=2)
    steps = _only_run(tmp_path / "acc").steps()
    assert len(steps) == trainer.global_step == 10
    assert set(steps.samples) == {32}
    seen = np.array(trainer.lightning_module.seen)  # a step's loss: the mean of its two micro-batches
    assert np.allclose(steps.loss, seen.reshape(-1, 2).mean(axis=1), rtol=1e-6)
    with pytest.raises(RuntimeError, match="boom"):
        _lightning_fit(pl, tmp_path / "crash", fail_at=4, store=f"file://{tmp_path / 'store'}")
    meta = _only_run(tmp_path / "crash").meta()
    assert meta["status"] == "crashed" and "boom in training_step" in meta["error"]
    stored = _stored(tmp_path / "store", monkeypatch)  # the callback's close published its last words
    assert stored.meta()["status"] == "crashed" and len(stored.steps()) == len(_only_run(tmp_path / "crash").steps())


# ----------------------------------------------------------------------------- Hugging Face Trainer
class _Tokens(Dataset):
    def __init__(self, n: int) -> None:
        g = torch.Generator().manual_seed(0)
        self.ids = torch.randint(0, 100, (n, 12), generator=g)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int):
        ids = self.ids[i]
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": int(ids.sum() % 2)}


def test_hf_trainer_callback(tmp_path, monkeypatch):
    transformers = pytest.importorskip("transformers")
    from gpulens.integrations.hf import GpuLensCallback

    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                     intermediate_size=64, max_position_embeddings=32, num_labels=2)
    model = transformers.BertForSequenceClassification(config)
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path / "out"), per_device_train_batch_size=8, gradient_accumulation_steps=2,
        num_train_epochs=2, eval_strategy="epoch", per_device_eval_batch_size=8, save_strategy="no",
        logging_steps=5, report_to=[], use_cpu=True, disable_tqdm=True, dataloader_num_workers=0)
    root = tmp_path / "runs"
    trainer = transformers.Trainer(model=model, args=args, train_dataset=_Tokens(96), eval_dataset=_Tokens(32),
                                   callbacks=[GpuLensCallback(runs_dir=root, quiet=True, advise=False,
                                                              store=f"file://{tmp_path / 'store'}")])
    trainer.train()
    reader = _only_run(root)
    stored = _stored(tmp_path / "store", monkeypatch)
    assert stored.meta()["status"] == "finished" and len(stored.steps()) == len(reader.steps())
    steps = reader.steps()
    assert len(steps) == trainer.state.global_step == 12  # 96 / (8 x 2) x 2 epochs
    meta = reader.meta()
    assert meta["status"] == "finished" and meta["steps_by"] == "hf"
    assert meta["batch_size"] == 16 and meta["model"]["params"] > 0
    later = slice(2, None)
    for phase in ("data_wait", "forward", "backward", "optimizer"):
        assert (getattr(steps, phase)[later] > 0).all(), phase
    assert set(steps.samples[later]) == {16}  # two micro-batches of 8 per step
    # the loss is the one the Trainer logs (the mean over its logging window of each step's loss), with
    # gradient accumulation: not the last micro-batch's loss / 2, and not missing
    logged = [(e["step"], e["loss"]) for e in trainer.state.log_history if "loss" in e]
    assert logged and np.isfinite(steps.loss).all()
    previous = 0
    for step, loss in logged:
        assert np.mean(steps.loss[previous:step]) == pytest.approx(loss, rel=2e-3, abs=1e-4), (step, loss)
        previous = step
    # the hooks are gone after training
    from torch.utils.data.dataloader import _BaseDataLoaderIter

    assert not hasattr(_BaseDataLoaderIter.__next__, "__wrapped__")


# ----------------------------------------------------------------------------- accelerate under gpulens run
ACCELERATE_SCRIPT = """
import json, sys, torch, torch.nn as nn
from accelerate import Accelerator
from torch.utils.data import DataLoader, TensorDataset

torch.manual_seed(0)
accelerator = Accelerator(gradient_accumulation_steps=2, cpu=True)
x = torch.randn(128, 32)
data = DataLoader(TensorDataset(x, (x.sum(1) > 0).long()), batch_size=8)
model = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 4))
opt = torch.optim.SGD(model.parameters(), lr=0.1)
model, opt, data = accelerator.prepare(model, opt, data)
logged, micro = [], []
for x, y in data:
    with accelerator.accumulate(model):
        loss = nn.functional.cross_entropy(model(x), y)
        micro.append(loss.item())
        accelerator.backward(loss)  # accelerate divides by the accumulation steps
        opt.step()
        opt.zero_grad()
        if accelerator.sync_gradients:
            logged.append(sum(micro) / len(micro))  # what accelerate's examples log per optimizer step
            micro = []
print(json.dumps(logged))
"""


def test_accelerate_gradient_accumulation_under_gpulens_run_records_the_logged_loss(tmp_path):
    pytest.importorskip("accelerate")
    import json
    import subprocess
    import sys
    from pathlib import Path

    script = tmp_path / "acc.py"
    script.write_text(ACCELERATE_SCRIPT)
    gpulens = str(Path(sys.executable).with_name("gpulens"))
    proc = subprocess.run([gpulens, "run", "--runs-dir", str(tmp_path / "runs"), "--quiet", "--", sys.executable,
                           str(script)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    logged = json.loads(proc.stdout.strip().splitlines()[-1])
    steps = _only_run(tmp_path / "runs").steps()
    assert len(steps) == len(logged) == 8
    assert np.allclose(steps.loss, logged, rtol=1e-5), (steps.loss, logged)
