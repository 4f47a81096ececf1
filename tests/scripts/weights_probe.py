"""Trains a small model and saves its weights: run with and without gpulens, the files must be equal bit for bit.

--mode eager | compiled (torch.compile, inductor) | tensors (bare tensor ops, no module);
--deterministic turns on torch.use_deterministic_algorithms; --autocast trains under CPU bf16 autocast.
Prints the final loss.
"""
import argparse

import torch
import torch.nn.functional as F

parser = argparse.ArgumentParser()
parser.add_argument("--mode", choices=("eager", "compiled", "tensors"), default="eager")
parser.add_argument("--deterministic", action="store_true")
parser.add_argument("--autocast", action="store_true")
parser.add_argument("--steps", type=int, default=12)
parser.add_argument("--out", required=True)
args = parser.parse_args()

torch.manual_seed(0)
if args.deterministic:
    torch.use_deterministic_algorithms(True)
data = torch.randn(args.steps, 16, 32)
labels = torch.randint(0, 4, (args.steps, 16))

if args.mode == "tensors":
    w1 = (torch.randn(32, 64) * 0.1).requires_grad_()
    w2 = (torch.randn(64, 4) * 0.1).requires_grad_()
    opt = torch.optim.SGD([w1, w2], lr=0.1)
    for i in range(args.steps):
        h = F.dropout(torch.relu(data[i] @ w1), 0.1)
        loss = F.cross_entropy(h @ w2, labels[i])
        opt.zero_grad()
        loss.backward()
        opt.step()
    torch.save({"w1": w1.detach(), "w2": w2.detach(), "rng": torch.get_rng_state()}, args.out)
else:
    model = torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.ReLU(), torch.nn.Dropout(0.1),
                                torch.nn.Linear(64, 4))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    net = torch.compile(model) if args.mode == "compiled" else model
    for i in range(args.steps):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.autocast):
            loss = F.cross_entropy(net(data[i]), labels[i])
        opt.zero_grad()
        loss.backward()
        opt.step()
    torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "rng": torch.get_rng_state()}, args.out)
print(f"loss {loss.item():.6f}")
