"""``gpulens demo``: a small CNN trained on the CPU under ``track()``, followed live in the dashboard.

The trainer runs in its own process (``python -m gpulens.demo --train ...``)
so the dashboard serves it exactly as it would a real training job: through
the run's database, while it is being written.  Data is made in code.
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from gpulens.profiler import GpulensError


def train(runs_dir: str, run_id: str, seconds: float, batch: int = 32) -> None:
    import torch
    from torch import nn
    from torch.utils.data import DataLoader, Dataset

    import gpulens

    torch.set_num_threads(1)  # leave the other cores to the dashboard and the loader
    torch.manual_seed(0)

    class Synthetic(Dataset):
        """Random 3x32x32 images with a little per-sample work, like decoding and augmenting."""

        def __len__(self) -> int:
            return 10**9

        def __getitem__(self, i: int):
            g = torch.Generator().manual_seed(i)
            x = torch.rand(3, 32, 32, generator=g)
            x = (x - x.mean()) / (x.std() + 1e-6)
            return x, int(i % 10)

    model = nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
        nn.Flatten(), nn.Linear(32, 10))
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    loader = DataLoader(Synthetic(), batch_size=batch, num_workers=0)
    deadline = time.monotonic() + seconds
    with gpulens.track(name="demo", run_id=run_id, runs_dir=runs_dir, batch_size=batch, model=model, optimizer=opt,
                       profile_every=3000, config={"model": "small CNN", "data": "synthetic 3x32x32",
                                                  "num_workers": 0, "device": "cpu"}, advise=False) as run:
        for x, y in run.loader(loader):
            with run.phase("forward"):
                loss = nn.functional.cross_entropy(model(x), y)
            with run.phase("backward"):
                opt.zero_grad(set_to_none=True)
                loss.backward()
            with run.phase("optimizer"):
                opt.step()
            run.step(loss=loss)
            if time.monotonic() > deadline:
                break


def run_demo(port: int, seconds: float, runs_dir: str | None) -> int:
    """Start the trainer in the background and serve its live page until Ctrl-C (or the trainer ends)."""
    if importlib.util.find_spec("torch") is None:
        raise GpulensError("gpulens demo trains a small model on the CPU and needs PyTorch: pip install torch")
    from gpulens.dashboard.serve import prepare, serve
    from gpulens.profiler.store.runstore import new_run_id

    root = Path(runs_dir) if runs_dir else Path(tempfile.mkdtemp(prefix="gpulens-demo-"))
    root.mkdir(parents=True, exist_ok=True)
    access = prepare(root, port=port)
    run_id = new_run_id("demo")
    env = dict(os.environ, GPULENS_DIR=str(root))
    log = open(root / f"{run_id}.trainer.log", "wb")  # the trainer's own output (torch, profiler) stays out of the way
    proc = subprocess.Popen([sys.executable, "-m", "gpulens.demo", "--train", "--runs-dir", str(root),
                             "--run-id", run_id, "--seconds", str(seconds)], env=env, stdout=log, stderr=log)
    try:
        db = root / run_id / "rank-0.db"
        deadline = time.monotonic() + 60
        while not db.exists():
            if proc.poll() is not None:
                raise GpulensError(f"the demo trainer exited with status {proc.returncode} before recording")
            if time.monotonic() > deadline:
                raise GpulensError("the demo trainer did not start recording within 60 s")
            time.sleep(0.2)
        print(f"gpulens demo: training a small CNN on the CPU for {seconds:.0f} s into {root / run_id}",
              file=sys.stderr)
        serve(root, access, open_path=f"/live/{run_id}")
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
        log.close()
    return 0


def _main() -> None:
    parser = argparse.ArgumentParser(prog="python -m gpulens.demo")
    parser.add_argument("--train", action="store_true")
    parser.add_argument("--runs-dir", required=True)
    parser.add_argument("--run-id", required=True)
    parser.add_argument("--seconds", type=float, default=600.0)
    args = parser.parse_args()
    train(args.runs_dir, args.run_id, args.seconds)


if __name__ == "__main__":
    _main()
