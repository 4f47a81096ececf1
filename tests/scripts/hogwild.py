"""Hogwild training as pytorch/examples/mnist_hogwild does it: shared-memory model, one
``multiprocessing.Process`` per worker (fork), the parent evaluates at the end (CPU)."""
import argparse

import torch
import torch.multiprocessing as mp
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

parser = argparse.ArgumentParser()
parser.add_argument("--num-processes", type=int, default=2)
parser.add_argument("--batches", type=int, default=12, help="batches per worker")
parser.add_argument("--start-method", default="fork")
args = parser.parse_args()


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(32, 64)
        self.fc2 = nn.Linear(64, 10)

    def forward(self, x):
        return F.log_softmax(self.fc2(F.relu(self.fc1(x))), dim=1)


def dataset(seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(args.batches * 16, 32, generator=g)
    return TensorDataset(x, (x[:, 0] > 0).long())


def train(rank, model):
    torch.manual_seed(rank)
    loader = DataLoader(dataset(rank), batch_size=16, shuffle=True)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.5)
    model.train()
    for data, target in loader:
        optimizer.zero_grad()
        F.nll_loss(model(data), target).backward()
        optimizer.step()
    print(f"worker {rank} done", flush=True)


def test(model):
    model.eval()
    with torch.no_grad():
        data, target = dataset(99).tensors
        correct = (model(data).argmax(1) == target).sum().item()
    print(f"accuracy {correct / len(target):.2f}", flush=True)


if __name__ == "__main__":
    mp.set_start_method(args.start_method)
    model = Net()
    model.share_memory()  # gradients are allocated lazily; see "Sharing CUDA tensors"
    processes = []
    for rank in range(args.num_processes):
        p = mp.Process(target=train, args=(rank, model))
        p.start()
        processes.append(p)
    for p in processes:
        p.join()
    test(model)
