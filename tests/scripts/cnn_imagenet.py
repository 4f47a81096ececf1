"""An image classifier trained the way pytorch/examples/imagenet/main.py does it, with --dummy data (CPU).

DataLoader workers over a synthetic dataset, a residual conv net, SGD with
momentum, ``batch_time``/``data_time`` meters and one progress line per
iteration, validation under no_grad after each epoch, and a checkpoint of
the state_dict plus optimizer state (``save_checkpoint``).
"""
import argparse
import os
import tempfile
import time

import torch
import torch.nn as nn
from torch.utils.data import DataLoader, Dataset

parser = argparse.ArgumentParser()
parser.add_argument("--epochs", type=int, default=1)
parser.add_argument("--batches", type=int, default=40, help="training batches per epoch")
parser.add_argument("-b", "--batch-size", type=int, default=16)
parser.add_argument("-j", "--workers", type=int, default=2)
parser.add_argument("--size", type=int, default=48, help="image side")
args = parser.parse_args()
torch.manual_seed(0)


class DummyImages(Dataset):
    """Random images and labels made on the fly, like torchvision's FakeData behind --dummy."""

    def __init__(self, n: int, size: int) -> None:
        self.n, self.size = n, size

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int):
        g = torch.Generator().manual_seed(i)
        return torch.randn(3, self.size, self.size, generator=g), int(torch.randint(0, 10, (1,), generator=g))


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.down = None if stride == 1 and cin == cout else nn.Sequential(
            nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        identity = x if self.down is None else self.down(x)
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(out)) + identity)


class ResNetSmall(nn.Module):
    def __init__(self, classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU(inplace=True))
        self.layers = nn.Sequential(BasicBlock(16, 16, 1), BasicBlock(16, 32, 2), BasicBlock(32, 64, 2))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(64, classes)

    def forward(self, x):
        return self.fc(torch.flatten(self.pool(self.layers(self.stem(x))), 1))


train_loader = DataLoader(DummyImages(args.batches * args.batch_size, args.size), batch_size=args.batch_size,
                          shuffle=True, num_workers=args.workers)
val_loader = DataLoader(DummyImages(4 * args.batch_size, args.size), batch_size=args.batch_size,
                        num_workers=args.workers)
model = ResNetSmall()
criterion = nn.CrossEntropyLoss()
optimizer = torch.optim.SGD(model.parameters(), 0.1, momentum=0.9, weight_decay=1e-4)


def train(epoch: int) -> None:
    model.train()
    end = time.time()
    for i, (images, target) in enumerate(train_loader):
        data_time = time.time() - end
        output = model(images)
        loss = criterion(output, target)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        batch_time = time.time() - end
        end = time.time()
        print(f"Epoch: [{epoch}][{i}/{len(train_loader)}] time {batch_time * 1000:.2f}ms "
              f"data {data_time * 1000:.2f}ms loss {loss.item():.4f}", flush=True)


def validate() -> float:
    model.eval()
    correct = 0
    with torch.no_grad():
        for images, target in val_loader:
            correct += int((model(images).argmax(1) == target).sum())
    return correct / len(val_loader.dataset)


checkpoint = os.path.join(tempfile.mkdtemp(prefix="cnn-imagenet-"), "checkpoint.pth.tar")
for epoch in range(args.epochs):
    train(epoch)
    print(f" * Acc@1 {100 * validate():.1f}", flush=True)
    torch.save({"epoch": epoch + 1, "state_dict": model.state_dict(), "optimizer": optimizer.state_dict()},
               checkpoint)
