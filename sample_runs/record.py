"""Record the sample runs shipped in sample_runs/ -- real training, real gpulens.

    python sample_runs/record.py --device cpu            # the CPU runs (any machine)
    python sample_runs/record.py --device cuda           # the GPU runs (a machine with a GPU)
    python sample_runs/record.py --device cpu --only cnn-input-bound --seconds 10

Every scenario trains a small model on synthetic data made in code (no
downloads) for a fixed time under ``gpulens.track()``; the run directory is
named ``<device>-<scenario>`` (device = cpu or the GPU model, e.g. h100) and
replaces an earlier recording of the same name.  Nothing is edited by hand.
"""
from __future__ import annotations

import argparse
import math
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

import gpulens
from gpulens.profiler.store.runstore import is_run_dir

HERE = Path(__file__).resolve().parent


# ----------------------------------------------------------------------------- data
class AugmentedImages(Dataset):
    """Synthetic 3x`size`x`size` images with per-sample CPU "augmentation" (crop, flip, jitter, normalise)."""

    def __init__(self, n: int, size: int, work: int = 1, delay: float = 0.0) -> None:
        self.n, self.size, self.work, self.delay = n, size, work, delay

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int):
        if self.delay:
            time.sleep(self.delay)  # a slow disk / decoder
        g = torch.Generator().manual_seed(i)
        img = torch.rand(3, self.size + 8, self.size + 8, generator=g)
        for _ in range(self.work):
            dx, dy = torch.randint(0, 9, (2,), generator=g).tolist()
            img2 = img[:, dy:dy + self.size, dx:dx + self.size]
            if torch.rand(1, generator=g).item() < 0.5:
                img2 = img2.flip(-1)
            img2 = (img2 * (0.8 + 0.4 * torch.rand(3, 1, 1, generator=g)) - 0.45) / 0.225
        return img2.contiguous(), i % 100


class InMemoryImages(Dataset):
    """Pre-decoded uint8 images in memory: loading costs an index (the healthy pipeline).

    uint8 rather than float keeps the batches that cross the worker queue and
    the pinned-memory copy 4x smaller; normalisation happens on the GPU.
    """

    def __init__(self, n: int, size: int) -> None:
        g = torch.Generator().manual_seed(0)
        self.x = torch.randint(0, 256, (n, 3, size, size), generator=g, dtype=torch.uint8)
        self.y = torch.randint(0, 100, (n,), generator=g)

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int):
        return self.x[i], self.y[i]


# ----------------------------------------------------------------------------- models
class Block(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.b1 = nn.BatchNorm2d(cout)
        self.c2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.b2 = nn.BatchNorm2d(cout)
        self.short = (nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
                      if stride != 1 or cin != cout else nn.Identity())

    def forward(self, x):
        out = F.relu(self.b1(self.c1(x)))
        return F.relu(self.b2(self.c2(out)) + self.short(x))


def resnet(width: int = 64, classes: int = 100) -> nn.Module:
    """ResNet-18-shaped network (basic blocks, 4 stages)."""
    layers: list[nn.Module] = [nn.Conv2d(3, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU()]
    cin = width
    for i, cout in enumerate((width, 2 * width, 4 * width, 8 * width)):
        layers += [Block(cin, cout, 1 if i == 0 else 2), Block(cout, cout, 1)]
        cin = cout
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, classes)]
    return nn.Sequential(*layers)


class Attention(nn.Module):
    def __init__(self, d: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(d, 3 * d)
        self.proj = nn.Linear(d, d)

    def forward(self, x):
        b, t, d = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.heads, d // self.heads).unbind(2)
        y = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=True)
        return self.proj(y.transpose(1, 2).reshape(b, t, d))


class GPTBlock(nn.Module):
    def __init__(self, d: int, heads: int) -> None:
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.attn = Attention(d, heads)
        self.mlp = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d))

    def forward(self, x):
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


class GPT(nn.Module):
    def __init__(self, vocab: int, d: int, layers: int, heads: int, seq: int) -> None:
        super().__init__()
        self.tok = nn.Embedding(vocab, d)
        self.pos = nn.Parameter(torch.zeros(1, seq, d))
        self.blocks = nn.Sequential(*[GPTBlock(d, heads) for _ in range(layers)])
        self.ln = nn.LayerNorm(d)
        self.head = nn.Linear(d, vocab, bias=False)

    def forward(self, idx):
        x = self.tok(idx) + self.pos[:, : idx.shape[1]]
        return self.head(self.ln(self.blocks(x)))


# ----------------------------------------------------------------------------- training
@dataclass
class Scenario:
    name: str
    what: str  # one line for the README: what the run shows
    devices: tuple[str, ...]
    run: Callable[[str, float, str], None]  # (device, seconds, run_id)


def sgd(model):
    return torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)


def adamw(model, device):
    return torch.optim.AdamW(model.parameters(), lr=3e-4, fused=device == "cuda")


def _train_images(run, model, loader, device, seconds, amp: bool, channels_last: bool, opt):
    end = time.time() + seconds
    while time.time() < end:
        for x, y in run.loader(loader):
            with run.phase("forward"):
                x = x.to(device, non_blocking=True)
                y = y.to(device, non_blocking=True)
                if x.dtype == torch.uint8:
                    x = (x.float() / 255.0 - 0.45) / 0.225
                if channels_last:
                    x = x.contiguous(memory_format=torch.channels_last)
                with torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=amp):
                    loss = F.cross_entropy(model(x), y)
            with run.phase("backward"):
                loss.backward()
            with run.phase("optimizer"):
                opt.step()
                opt.zero_grad(set_to_none=True)
            run.step(loss=loss)
            if time.time() >= end:
                break


def _train_gpt(run, model, device, seconds, batch, seq, vocab, amp: bool, steps: int | None = None, opt=None):
    opt = opt or adamw(model, device)
    g = torch.Generator().manual_seed(0)
    data = [torch.randint(0, vocab, (batch, seq + 1), generator=g) for _ in range(8)]
    end = time.time() + seconds
    i = 0
    while (time.time() < end) if steps is None else (i < steps):
        with run.phase("data_wait"):
            chunk = data[i % len(data)].to(device, non_blocking=True)
        with run.phase("forward"):
            with torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=amp):
                logits = model(chunk[:, :-1])
                loss = F.cross_entropy(logits.reshape(-1, vocab).float(), chunk[:, 1:].reshape(-1))
        with run.phase("backward"):
            loss.backward()
        with run.phase("optimizer"):
            opt.step()
            opt.zero_grad(set_to_none=True)
        run.step(samples=batch, tokens=batch * seq, loss=loss)
        i += 1


def cnn_input_bound(device: str, seconds: float, run_id: str) -> None:
    batch = 32 if device == "cuda" else 16
    size = 64 if device == "cuda" else 32
    # ~0.5 ms (GPU) / 4 ms (CPU) per sample of "disk" plus CPU augmentation, in the training process
    data = AugmentedImages(100_000, size, work=4, delay=0.0005 if device == "cuda" else 0.004)
    loader = DataLoader(data, batch_size=batch, shuffle=True, num_workers=0)
    model = resnet(64 if device == "cuda" else 16).to(device)
    cfg = {"model": "resnet18-shaped", "batch_size": batch, "image": size, "num_workers": 0, "precision": "fp32"}
    opt = sgd(model)
    with gpulens.track(run_id, run_id=run_id, runs_dir=OUT, batch_size=batch, config=cfg, model=model,
                       optimizer=opt) as run:
        _train_images(run, model, loader, device, seconds, amp=False, channels_last=False, opt=opt)


def cnn_workers(device: str, seconds: float, run_id: str) -> None:
    batch, size, workers = 16, 32, 2
    torch.set_num_threads(1)  # leave the cores to the workers, whose augmentation is the bottleneck
    data = AugmentedImages(100_000, size, work=300)
    loader = DataLoader(data, batch_size=batch, shuffle=True, num_workers=workers, persistent_workers=True)
    model = resnet(16).to(device)
    cfg = {"model": "resnet18-shaped", "batch_size": batch, "image": size, "num_workers": workers,
           "precision": "fp32"}
    opt = sgd(model)
    with gpulens.track(run_id, run_id=run_id, runs_dir=OUT, batch_size=batch, config=cfg, model=model,
                       optimizer=opt) as run:
        _train_images(run, model, loader, device, seconds, amp=False, channels_last=False, opt=opt)


def cnn_healthy(device: str, seconds: float, run_id: str) -> None:
    batch, size = 256, 128
    data = InMemoryImages(4096, size)
    loader = DataLoader(data, batch_size=batch, shuffle=True, num_workers=4, pin_memory=True,
                        persistent_workers=True, drop_last=True)
    model = resnet(64).to(device).to(memory_format=torch.channels_last)
    torch.backends.cudnn.benchmark = True
    cfg = {"model": "resnet18-shaped", "batch_size": batch, "image": size, "num_workers": 4,
           "precision": "bf16 autocast", "channels_last": True, "pin_memory": True}
    opt = sgd(model)
    with gpulens.track(run_id, run_id=run_id, runs_dir=OUT, batch_size=batch, config=cfg, model=model,
                       optimizer=opt) as run:
        _train_images(run, model, loader, device, seconds, amp=True, channels_last=True, opt=opt)


def gpt_small_batch(device: str, seconds: float, run_id: str) -> None:
    vocab, seq = 8192, 128
    batch = 1 if device == "cuda" else 4
    d, layers, heads = (512, 8, 8) if device == "cuda" else (128, 4, 4)
    if device == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    model = GPT(vocab, d, layers, heads, seq).to(device)
    cfg = {"model": f"gpt d={d} L={layers}", "batch_size": batch, "seq": seq, "precision": "fp32, TF32 off",
           "params": sum(p.numel() for p in model.parameters())}
    opt = adamw(model, device)
    with gpulens.track(run_id, run_id=run_id, runs_dir=OUT, batch_size=batch, config=cfg, model=model,
                       optimizer=opt) as run:
        _train_gpt(run, model, device, seconds, batch, seq, vocab, amp=False, opt=opt)


def gpt_compiled(device: str, seconds: float, run_id: str) -> None:
    vocab, seq, batch = 32768, 1024, 16
    d, layers, heads = 1024, 12, 16
    model = GPT(vocab, d, layers, heads, seq).to(device)
    compiled = torch.compile(model)
    cfg = {"model": f"gpt d={d} L={layers}", "batch_size": batch, "seq": seq, "precision": "bf16 autocast",
           "torch_compile": True, "params": sum(p.numel() for p in model.parameters())}
    # compile before recording (a minute of compilation is not what this run shows)
    x = torch.randint(0, vocab, (batch, seq + 1), device=device)
    for _ in range(2):
        with torch.autocast(device_type=device, dtype=torch.bfloat16):
            loss = F.cross_entropy(compiled(x[:, :-1]).reshape(-1, vocab).float(), x[:, 1:].reshape(-1))
        loss.backward()
    model.zero_grad(set_to_none=True)
    torch.cuda.synchronize()
    opt = adamw(model, device)
    with gpulens.track(run_id, run_id=run_id, runs_dir=OUT, batch_size=batch, config=cfg, model=model,
                       optimizer=opt) as run:
        _train_gpt(run, compiled, device, seconds, batch, seq, vocab, amp=True, opt=opt)


def gpt_memory_limit(device: str, seconds: float, run_id: str) -> None:
    vocab, seq, d, layers, heads = 32768, 1024, 1024, 12, 16
    model = GPT(vocab, d, layers, heads, seq).to(device)
    # find the largest batch that fits by trial (doubling, then bisection, as Lightning's
    # BatchSizeFinder does), so that the recorded run sits at the memory limit
    opt = torch.optim.AdamW(model.parameters(), fused=True)

    def fits(batch: int) -> bool:
        try:
            x = torch.randint(0, vocab, (batch, seq + 1), device=device)
            with torch.autocast(device_type=device, dtype=torch.bfloat16):
                loss = F.cross_entropy(model(x[:, :-1]).reshape(-1, vocab).float(), x[:, 1:].reshape(-1))
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            return True
        except torch.cuda.OutOfMemoryError:
            opt.zero_grad(set_to_none=True)
            return False
        finally:
            torch.cuda.empty_cache()

    lo, hi = 0, 8
    while hi <= 1024 and fits(hi):
        lo, hi = hi, hi * 2
    while hi - lo > 2:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid)
    del opt  # the training loop makes its own optimizer: two optimizer states would not fit
    torch.cuda.empty_cache()
    # the training loop below allocates a little differently from the probe: back off
    # until three real steps of it run
    batch = lo
    while batch > 1:
        try:
            with gpulens.track(run_id, run_id=f"{run_id}-probe", runs_dir=OUT / ".probe", quiet=True,
                               sampling=gpulens.SamplingConfig(devices=False, host=False)) as probe:
                _train_gpt(probe, model, device, 0.0, batch, seq, vocab, amp=True, steps=3)
            break
        except torch.cuda.OutOfMemoryError:
            batch -= max(1, batch // 20)
        finally:
            shutil.rmtree(OUT / ".probe", ignore_errors=True)
            model.zero_grad(set_to_none=True)
            torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    cfg = {"model": f"gpt d={d} L={layers}", "batch_size": batch, "seq": seq, "precision": "bf16 autocast",
           "note": f"largest batch that fits found by trial: {lo}; recorded at {batch}"}
    opt = adamw(model, device)
    with gpulens.track(run_id, run_id=run_id, runs_dir=OUT, batch_size=batch, config=cfg, model=model,
                       optimizer=opt) as run:
        _train_gpt(run, model, device, seconds, batch, seq, vocab, amp=True, opt=opt)


SCENARIOS = [
    Scenario("cnn-input-bound", "ResNet-18-shaped CNN, fp32, small batch, num_workers=0 with per-sample CPU "
             "augmentation: the data pipeline starves the model", ("cpu", "cuda"), cnn_input_bound),
    Scenario("cnn-workers", "the same CNN with 2 DataLoader workers doing heavy CPU augmentation: worker "
             "processes' CPU recorded apart from the training process", ("cpu",), cnn_workers),
    Scenario("cnn-healthy", "the same CNN with bf16 autocast, channels_last, batch 256 of 128x128 images, "
             "4 pinned workers and in-memory data: a busy GPU", ("cuda",), cnn_healthy),
    Scenario("gpt-small-batch", "GPT-style transformer, fp32 with TF32 off, tiny batch: many small kernels, "
             "launch-bound", ("cpu", "cuda"), gpt_small_batch),
    Scenario("gpt-compiled", "GPT-style transformer (d=1024, 12 layers) with bf16 autocast and torch.compile, "
             "batch 16 x 1024 tokens: high tensor-core use", ("cuda",), gpt_compiled),
    Scenario("gpt-memory-limit", "the same transformer at the largest batch that fits (found by trial): "
             "near the memory limit", ("cuda",), gpt_memory_limit),
]

OUT = HERE


def device_tag(device: str) -> str:
    if device == "cpu":
        return "cpu"
    name = torch.cuda.get_device_name(0).lower()
    for tag in ("h200", "h100", "a100", "l40s", "l4", "a10g", "v100", "t4", "b200", "gh200"):
        if tag in name:
            return tag
    return "gpu"


def main() -> int:
    global OUT
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    ap.add_argument("--only", nargs="*", help="scenario names (default: all for the device)")
    ap.add_argument("--seconds", type=float, default=20.0, help="training time per scenario")
    ap.add_argument("--out", type=Path, default=HERE, help="runs root to write into")
    args = ap.parse_args()
    OUT = args.out
    if args.device == "cuda" and not torch.cuda.is_available():
        print("record.py: --device cuda needs a GPU", file=sys.stderr)
        return 2
    tag = device_tag(args.device)
    for sc in SCENARIOS:
        if args.device not in sc.devices or (args.only and sc.name not in args.only):
            continue
        run_id = f"{tag}-{sc.name}"
        target = OUT / run_id
        if target.exists() and is_run_dir(target):
            shutil.rmtree(target)
        print(f"== {run_id}: {sc.what}", flush=True)
        if args.device == "cuda":
            torch.cuda.reset_peak_memory_stats()  # each run's peak is its own
        t0 = time.time()
        sc.run(args.device, args.seconds, run_id)
        print(f"   recorded in {time.time() - t0:.0f} s", flush=True)
        if args.device == "cuda":
            torch.cuda.empty_cache()
    return 0


if __name__ == "__main__":
    sys.exit(main())
