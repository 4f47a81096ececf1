"""DDP with torch.multiprocessing.spawn and gloo, as PyTorch's DDP tutorial writes it (CPU).

The parent builds nothing and trains nothing: ``mp.spawn(train, nprocs=2)``
starts two fresh interpreters that join a process group, wrap the model in
DDP, train, save a checkpoint from rank 0 and tear the group down.
"""
import argparse
import os
import tempfile

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel as DDP


class ToyModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.net1 = nn.Linear(10, 10)
        self.relu = nn.ReLU()
        self.net2 = nn.Linear(10, 5)

    def forward(self, x):
        return self.net2(self.relu(self.net1(x)))


def setup(rank, world_size, port):
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    dist.init_process_group("gloo", rank=rank, world_size=world_size)


def train(rank, world_size, steps, port, checkpoint):
    setup(rank, world_size, port)
    torch.manual_seed(rank)
    model = ToyModel()
    ddp_model = DDP(model)
    loss_fn = nn.MSELoss()
    optimizer = torch.optim.SGD(ddp_model.parameters(), lr=0.001)
    for _ in range(steps):
        optimizer.zero_grad()
        outputs = ddp_model(torch.randn(20, 10))
        loss_fn(outputs, torch.randn(20, 5)).backward()
        optimizer.step()
    if rank == 0:
        torch.save(ddp_model.state_dict(), checkpoint)
    dist.barrier()
    print(f"rank {rank} done: {steps} steps", flush=True)
    dist.destroy_process_group()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--world-size", type=int, default=2)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--port", type=int, default=29640)
    args = parser.parse_args()
    checkpoint = os.path.join(tempfile.mkdtemp(), "model.checkpoint")
    mp.spawn(train, args=(args.world_size, args.steps, args.port, checkpoint), nprocs=args.world_size, join=True)
