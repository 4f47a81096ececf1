"""A character-level GPT trained on the CPU in the way nanoGPT's train.py does it.

The patterns that matter to a recorder: batches sliced from a uint8 memmap
each iteration (no DataLoader), the next batch fetched while backward is
pending, ``GradScaler(enabled=False)`` around a CPU/bf16 loss, gradient
clipping after ``scaler.unscale_``, the learning rate set by hand every
iteration, ``estimate_loss()`` under no_grad in eval mode every
``--eval-interval`` iterations, one ``loss.item()`` log line per iteration
with its wall time, an EMA copy by ``copy.deepcopy``, and a whole-model
checkpoint (``torch.save(model)``) that is loaded back at the end.
"""
import argparse
import copy
import math
import os
import tempfile
import time

import numpy as np
import torch
import torch.nn as nn
from torch.nn import functional as F

parser = argparse.ArgumentParser()
parser.add_argument("--max-iters", type=int, default=60)
parser.add_argument("--eval-interval", type=int, default=25)
parser.add_argument("--eval-iters", type=int, default=4)
parser.add_argument("--batch-size", type=int, default=12)
parser.add_argument("--block-size", type=int, default=64)
parser.add_argument("--n-layer", type=int, default=4)
parser.add_argument("--n-embd", type=int, default=128)
parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
parser.add_argument("--ema", action="store_true", help="keep an EMA copy made with copy.deepcopy")
parser.add_argument("--checkpoint", default="", help="save the whole model here each eval, load it at the end")
parser.add_argument("--compile", action="store_true", help="torch.compile(model, backend='eager', fullgraph=True)")
args = parser.parse_args()
if args.threads:
    torch.set_num_threads(args.threads)
torch.manual_seed(1337)

# a memmapped token file, as nanoGPT's prepare.py leaves it
data_dir = tempfile.mkdtemp(prefix="char-gpt-")
rng = np.random.default_rng(0)
text = rng.integers(0, 65, size=200_000, dtype=np.uint16)
text.tofile(os.path.join(data_dir, "train.bin"))
vocab_size = 65


def get_batch():
    data = np.memmap(os.path.join(data_dir, "train.bin"), dtype=np.uint16, mode="r")
    ix = torch.randint(len(data) - args.block_size, (args.batch_size,))
    x = torch.stack([torch.from_numpy(data[i:i + args.block_size].astype(np.int64)) for i in ix])
    y = torch.stack([torch.from_numpy(data[i + 1:i + 1 + args.block_size].astype(np.int64)) for i in ix])
    return x, y


class CausalSelfAttention(nn.Module):
    def __init__(self, n_embd, n_head):
        super().__init__()
        self.c_attn = nn.Linear(n_embd, 3 * n_embd)
        self.c_proj = nn.Linear(n_embd, n_embd)
        self.n_head = n_head

    def forward(self, x):
        B, T, C = x.size()
        q, k, v = self.c_attn(x).split(C, dim=2)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.c_proj(y.transpose(1, 2).contiguous().view(B, T, C))


class Block(nn.Module):
    def __init__(self, n_embd, n_head):
        super().__init__()
        self.ln_1 = nn.LayerNorm(n_embd)
        self.attn = CausalSelfAttention(n_embd, n_head)
        self.ln_2 = nn.LayerNorm(n_embd)
        self.mlp = nn.Sequential(nn.Linear(n_embd, 4 * n_embd), nn.GELU(), nn.Linear(4 * n_embd, n_embd))

    def forward(self, x):
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    def __init__(self):
        super().__init__()
        self.wte = nn.Embedding(vocab_size, args.n_embd)
        self.wpe = nn.Embedding(args.block_size, args.n_embd)
        self.h = nn.ModuleList([Block(args.n_embd, 4) for _ in range(args.n_layer)])
        self.ln_f = nn.LayerNorm(args.n_embd)
        self.lm_head = nn.Linear(args.n_embd, vocab_size, bias=False)
        self.wte.weight = self.lm_head.weight  # weight tying, as in GPT-2

    def forward(self, idx, targets=None):
        pos = torch.arange(0, idx.size(1), dtype=torch.long)
        x = self.wte(idx) + self.wpe(pos)
        for block in self.h:
            x = block(x)
        logits = self.lm_head(self.ln_f(x))
        loss = None if targets is None else F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1))
        return logits, loss


model = GPT()
optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.99), weight_decay=0.1)
scaler = torch.amp.GradScaler("cpu", enabled=False)  # float16 only; bf16 and CPU runs keep it off
if args.compile:
    model = torch.compile(model, backend="eager", fullgraph=True)
ema = copy.deepcopy(model) if args.ema else None


@torch.no_grad()
def estimate_loss():
    model.eval()
    losses = torch.zeros(args.eval_iters)
    for k in range(args.eval_iters):
        _, loss = model(*get_batch())
        losses[k] = loss.item()
    model.train()
    return losses.mean()


def get_lr(it):
    warmup = 10
    if it < warmup:
        return 1e-3 * (it + 1) / (warmup + 1)
    ratio = (it - warmup) / max(1, args.max_iters - warmup)
    return 1e-4 + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (1e-3 - 1e-4)


X, Y = get_batch()
t0 = time.time()
for it in range(args.max_iters):
    for group in optimizer.param_groups:
        group["lr"] = get_lr(it)
    if it % args.eval_interval == 0 and it > 0:
        print(f"step {it}: val loss {estimate_loss():.4f}", flush=True)
        if args.checkpoint:
            torch.save(model, args.checkpoint)  # the whole model, not just its state_dict
    _, loss = model(X, Y)
    X, Y = get_batch()  # prefetch while the backward is still to run
    scaler.scale(loss).backward()
    scaler.unscale_(optimizer)
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    scaler.step(optimizer)
    scaler.update()
    optimizer.zero_grad(set_to_none=True)
    if ema is not None:
        with torch.no_grad():
            for e, p in zip(ema.parameters(), model.parameters()):
                e.mul_(0.99).add_(p.detach(), alpha=0.01)
    t1 = time.time()
    print(f"iter {it}: loss {loss.item():.4f}, time {(t1 - t0) * 1000:.2f}ms", flush=True)
    t0 = t1

if args.checkpoint:
    torch.save(model, args.checkpoint)
    restored = torch.load(args.checkpoint, weights_only=False)
    print(f"checkpoint reloaded: {type(restored).__name__} with "
          f"{sum(p.numel() for p in restored.parameters())} parameters", flush=True)
