"""Real (small) CPU training loops used by several tests and the sample-run recorder."""
from __future__ import annotations

import time
from collections.abc import Iterable

import torch
import torch.nn as nn
from torch.utils.data import DataLoader, Dataset


class SlowImages(Dataset):
    """Synthetic images whose loading costs ``delay`` seconds (a slow disk or decoder)."""

    def __init__(self, n: int = 256, delay: float = 0.0, cpu_work: int = 0, size: int = 32) -> None:
        self.n, self.delay, self.cpu_work, self.size = n, delay, cpu_work, size

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int):
        if self.delay:
            time.sleep(self.delay)
        g = torch.Generator().manual_seed(i)
        x = torch.randn(3, self.size, self.size, generator=g)
        for _ in range(self.cpu_work):  # CPU-heavy "augmentation"
            x = torch.nn.functional.avg_pool2d(x.unsqueeze(0), 3, 1, 1).squeeze(0) * 1.01
        return x, i % 10


def small_cnn() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
        nn.Conv2d(16, 32, 3, padding=1, stride=2), nn.BatchNorm2d(32), nn.ReLU(),
        nn.AdaptiveAvgPool2d(4), nn.Flatten(), nn.Linear(512, 10),
    )


def train_cnn(run, loader: Iterable, epochs: int = 1, manual_step: bool = True, phases: bool = True,
              model: nn.Module | None = None) -> nn.Module:
    torch.manual_seed(0)
    model = model or small_cnn()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    for _ in range(epochs):
        for x, y in run.loader(loader):
            if phases:
                with run.phase("forward"):
                    loss = nn.functional.cross_entropy(model(x), y)
                with run.phase("backward"):
                    loss.backward()
                with run.phase("optimizer"):
                    opt.step()
                    opt.zero_grad(set_to_none=True)
            else:
                loss = nn.functional.cross_entropy(model(x), y)
                loss.backward()
                opt.step()
                opt.zero_grad(set_to_none=True)
            if manual_step:
                run.step(loss=loss)
    return model
