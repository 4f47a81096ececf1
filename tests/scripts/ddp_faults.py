"""DDP under torchrun (gloo, CPU) with one fault planted on one rank, the way real jobs go wrong.

``--fault compute``: the rank's forward takes longer (a slower GPU, a throttled one);
``--fault data``: its data loading is slower (its shard on slower storage, larger samples);
``--fault collective``: it stalls in backward right before its gradients are all-reduced (the others wait
for it inside the collective).  ``--delay`` seconds per step on ``--slow-rank``; every other rank is
unchanged.  The training itself is pytorch/examples' DDP loop.
"""
import argparse
import time

import torch
import torch.distributed as dist
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.utils.data import DataLoader, Dataset
from torch.utils.data.distributed import DistributedSampler

parser = argparse.ArgumentParser()
parser.add_argument("--fault", choices=("compute", "data", "collective", "none"), default="none")
parser.add_argument("--slow-rank", type=int, default=0)
parser.add_argument("--delay", type=float, default=0.1)
parser.add_argument("--steps", type=int, default=24)
parser.add_argument("--batch-size", type=int, default=8)
args = parser.parse_args()

dist.init_process_group("gloo")
rank = dist.get_rank()
slow = rank == args.slow_rank
torch.manual_seed(0)
torch.set_num_threads(1)


class Samples(Dataset):
    def __init__(self, n: int) -> None:
        g = torch.Generator().manual_seed(1)
        self.x = torch.randn(n, 32, generator=g)
        self.y = (self.x.sum(dim=1) > 0).long()

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int):
        if slow and args.fault == "data":
            time.sleep(args.delay / args.batch_size)
        return self.x[i], self.y[i]


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 2))

    def forward(self, x):
        if slow and args.fault == "compute":
            time.sleep(args.delay)
        return self.body(x)


dataset = Samples(args.steps * args.batch_size * dist.get_world_size())
loader = DataLoader(dataset, batch_size=args.batch_size, sampler=DistributedSampler(dataset, shuffle=False))
net = Net()
if slow and args.fault == "collective":  # runs in backward, before DDP all-reduces this bucket's gradients
    net.body[2].weight.register_hook(lambda grad: (time.sleep(args.delay), grad)[1])
model = DDP(net)
optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
loss_fn = nn.CrossEntropyLoss()
for xb, yb in loader:
    optimizer.zero_grad()
    loss = loss_fn(model(xb), yb)
    loss.backward()
    optimizer.step()
if rank == 0:
    print(f"done {args.fault} slow rank {args.slow_rank}: loss {loss.item():.4f}", flush=True)
dist.destroy_process_group()
