"""FLOP counting never changes what the user's training computes.

The FLOPs of a step are counted on a meta-device copy of the model after the
step (hooks/track/flops.py): a compiled model is never run eagerly, no random
generator moves, the user's hooks are not called.  The weights a script gets
under ``gpulens run`` are those it gets without it, bit for bit, and the
count is the one torch's own FlopCounterMode gives for the real step.
"""
from __future__ import annotations

import random
import shutil
import subprocess
import sys
import weakref
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

import gpulens
from gpulens.hooks.track.flops import ModuleCall, count_calls
from gpulens.profiler import open_run

PROBE = str(Path(__file__).resolve().parent / "scripts" / "weights_probe.py")
GPULENS = str(Path(sys.executable).with_name("gpulens"))
#: FLOPs of one step of weights_probe.py's model (Linear 32-64, Linear 64-4, batch 16): forward
#: 2·16·(32·64 + 64·4), the weights' gradients as much again, the hidden layer's input gradient 2·16·64·4.
PROBE_FLOPS = 2 * 16 * (32 * 64 + 64 * 4) * 2 + 2 * 16 * 64 * 4


def _tensors(obj, prefix=""):
    if isinstance(obj, torch.Tensor):
        yield prefix, obj
    elif isinstance(obj, dict):
        for key, value in obj.items():
            yield from _tensors(value, f"{prefix}.{key}")
    elif isinstance(obj, (list, tuple)):
        for i, value in enumerate(obj):
            yield from _tensors(value, f"{prefix}[{i}]")


@pytest.mark.parametrize("options, dtype, source", [
    (("--mode", "eager", "--autocast"), "bf16", "FlopCounterMode (meta copy)"),
    (("--mode", "compiled", "--deterministic"), "fp32", "FlopCounterMode (meta copy)"),
    (("--mode", "tensors"), "fp32", "FlopCounterMode"),
], ids=["eager-dropout-autocast", "compiled-inductor-deterministic", "bare-tensor-ops"])
def test_weights_under_gpulens_run_are_bit_for_bit_those_without_it(tmp_path, options, dtype, source):
    if "compiled" in options and not (shutil.which("g++") or shutil.which("c++")):
        pytest.skip("torch.compile's CPU backend needs a C++ compiler (apt-get install g++)")
    plain, recorded = tmp_path / "plain.pt", tmp_path / "recorded.pt"
    proc = subprocess.run([sys.executable, PROBE, *options, "--out", str(plain)], capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, proc.stderr
    proc2 = subprocess.run([GPULENS, "run", "--runs-dir", str(tmp_path / "runs"), "--no-advise", "--", sys.executable,
                            PROBE, *options, "--out", str(recorded)], capture_output=True, text=True, timeout=900)
    assert proc2.returncode == 0, proc2.stderr
    assert proc2.stdout == proc.stdout  # the final loss, printed to 6 places
    a, b = dict(_tensors(torch.load(plain))), dict(_tensors(torch.load(recorded)))
    assert a.keys() == b.keys() and len(a) >= 3  # weights, optimizer state, the RNG state after training
    differ = [key for key in a if not torch.equal(a[key], b[key])]
    assert not differ, f"changed by recording: {differ}"
    (run,) = [p for p in (tmp_path / "runs").iterdir() if p.is_dir()]
    (flops,) = open_run(run).flops()
    assert (flops.step, flops.total, flops.by_dtype, flops.source) == (5, PROBE_FLOPS, {dtype: PROBE_FLOPS}, source)


class Tied(nn.Module):
    """Keyword inputs (as HF models take them), tied weights, torch's weight norm, a tensor kept as an attribute."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(50, 24)
        self.mix = nn.utils.weight_norm(nn.Linear(24, 24))
        self.head = nn.Linear(24, 50, bias=False)
        self.head.weight = self.embed.weight
        self.scale = torch.ones(24)

    def forward(self, input_ids, attention_mask=None):
        h = torch.relu(self.mix(self.embed(input_ids))) * self.scale
        if attention_mask is not None:
            h = h * attention_mask.unsqueeze(-1)
        return {"logits": self.head(F.dropout(h, 0.2)), "hidden": h}


@pytest.mark.filterwarnings("ignore:.*weight_norm.*:FutureWarning")  # the old API on purpose: it works by a hook
def test_the_meta_copy_counts_what_the_real_step_counts_and_touches_nothing():
    torch.manual_seed(0)
    model = Tied()
    ids, mask = torch.randint(0, 50, (8, 12)), torch.ones(8, 12)
    with FlopCounterMode(display=False) as real:
        out = model(input_ids=ids, attention_mask=mask)
        (out["logits"].sum() + out["hidden"].sum()).backward()
    model.zero_grad(set_to_none=True)

    called = []
    model.mix.register_forward_hook(lambda *a: called.append("user hook"))
    handle = nn.modules.module.register_module_forward_hook(lambda *a: called.append("global hook"))
    random.seed(1), np.random.seed(1), torch.manual_seed(1)
    states = (random.getstate(), np.random.get_state()[1].copy(), torch.get_rng_state())
    before = {k: v.clone() for k, v in model.state_dict().items()}
    meta = (torch.empty_like(ids, device="meta"),)
    call = ModuleCall(weakref.ref(model), (), {"input_ids": meta[0], "attention_mask": torch.empty_like(
        mask, device="meta")}, None, False)
    try:
        counted = count_calls(torch, [call])
    finally:
        handle.remove()
    assert sum(counted.values()) == real.get_total_flops() > 0
    assert called == []  # the copy runs no hook of the user's, global ones included
    assert random.getstate() == states[0] and np.array_equal(np.random.get_state()[1], states[1])
    assert torch.equal(torch.get_rng_state(), states[2])
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters())
    assert model.head.weight is model.embed.weight and model.head.weight.device.type == "cpu"


def test_gradient_accumulation_counts_every_micro_batch_of_the_step(runs_dir):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 4))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    run = gpulens.track("accumulate", auto=True, quiet=True, advise=False, profile=False)
    for _ in range(8):
        for _ in range(3):  # three micro-batches per optimizer step
            (F.cross_entropy(model(torch.randn(16, 32)), torch.randint(0, 4, (16,))) / 3).backward()
        opt.step()
        opt.zero_grad()
    run.close()
    (flops,) = open_run(run.path).flops()
    assert flops.total == 3 * PROBE_FLOPS
    steps = open_run(run.path).steps()
    assert steps.flags[flops.step] & 2  # the counted step is left out of throughput


class Routed(nn.Module):
    """A forward whose shapes depend on the data (as MoE routing): no meta copy can run it."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(32, 64), nn.Linear(64, 4)

    def forward(self, x):
        h = torch.relu(self.a(x))
        keep = h.sum(dim=1) > 0
        return self.b(h[keep])


def test_an_eager_model_the_meta_copy_cannot_run_is_counted_in_place(runs_dir):
    torch.manual_seed(0)
    model = Routed()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    run = gpulens.track("routed", auto=True, quiet=True, advise=False, profile=False)
    for _ in range(10):
        model(torch.randn(16, 32)).pow(2).mean().backward()
        opt.step()
        opt.zero_grad()
    run.close()
    (flops,) = open_run(run.path).flops()
    assert flops.source == "FlopCounterMode" and flops.step == 6  # the copy failed on step 5
    assert flops.total > 2 * 16 * 32 * 64 * 2  # the first layer's forward and weight gradient at least
