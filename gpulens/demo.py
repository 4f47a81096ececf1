"""``gpulens demo``: a small CNN trained on the CPU under ``track()``, followed live in the dashboard.

The trainer runs in its own process (``python -m gpulens.demo --train ...``)
so the dashboard serves it exactly as it would a real training job: through
the run's database, while it is being written.  Data is made in code.
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from gpulens.profiler import GpulensError

#: The trainer starts recording once PyTorch is imported: seconds on a quiet machine, a minute or more on one
#: that other jobs keep busy.  After SLOW_START_S the demo says it is still waiting; it gives up only
#: after STARTUP_LIMIT_S (or when the trainer exits, or at Ctrl-C).
SLOW_START_S = 15.0
STARTUP_LIMIT_S = 600.0


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


def _port_free(host: str, port: int) -> None:
    """Fail before anything starts (a trainer, a temporary folder) when the dashboard could not listen."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server: TIME_WAIT is no obstacle
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise GpulensError(f"cannot listen on {host}:{port} ({exc.strerror or exc}); pick another --port") \
                from None


def _announce_end(proc: subprocess.Popen, seconds: float) -> None:
    """Wait for the trainer (no defunct process left behind) and say that training ended."""
    code = proc.wait()
    how = f"after {seconds:.0f} s" if code == 0 else f"with exit status {code} (its log is beside the run)"
    print(f"gpulens demo: training ended {how}; the run stays on the dashboard until Ctrl-C", file=sys.stderr,
          flush=True)


def run_demo(port: int, seconds: float, runs_dir: str | None) -> int:
    """Start the trainer in the background and serve its live page until Ctrl-C (training ends on its own)."""
    if importlib.util.find_spec("torch") is None:
        raise GpulensError("gpulens demo trains a small model on the CPU and needs PyTorch: pip install torch")
    from gpulens.dashboard.serve import prepare, serve
    from gpulens.profiler.store.runstore import new_run_id

    if runs_dir:
        root, made = Path(runs_dir), False
        root.mkdir(parents=True, exist_ok=True)
    else:
        root, made = Path(tempfile.mkdtemp(prefix="gpulens-demo-")), True
    try:
        access = prepare(root, port=port)
        _port_free(access.host, access.port)
    except BaseException:
        if made:
            shutil.rmtree(root, ignore_errors=True)  # nothing was recorded: leave nothing behind
        raise
    run_id = new_run_id("demo")
    env = dict(os.environ, GPULENS_DIR=str(root))
    log = open(root / f"{run_id}.trainer.log", "wb")  # the trainer's own output (torch, profiler) stays out of the way
    proc = subprocess.Popen([sys.executable, "-m", "gpulens.demo", "--train", "--runs-dir", str(root),
                             "--run-id", run_id, "--seconds", str(seconds)], env=env, stdout=log, stderr=log)
    recorded = False
    try:
        db = root / run_id / "rank-0.db"
        started, said = time.monotonic(), False
        while not db.exists():
            if proc.poll() is not None:
                raise GpulensError(f"the demo trainer exited with status {proc.returncode} before recording")
            waited = time.monotonic() - started
            if waited > STARTUP_LIMIT_S:
                raise GpulensError(f"the demo trainer did not start recording within {STARTUP_LIMIT_S:.0f} s "
                                   f"(its log: {root / f'{run_id}.trainer.log'})")
            if waited > SLOW_START_S and not said:
                said = True
                print(f"gpulens demo: the trainer is still importing PyTorch after {SLOW_START_S:.0f} s "
                      "(a busy machine); waiting", file=sys.stderr, flush=True)
            time.sleep(0.2)
        recorded = True
        print(f"gpulens demo: training a small CNN on the CPU for {seconds:.0f} s into {root / run_id}",
              file=sys.stderr)
        threading.Thread(target=_announce_end, args=(proc, seconds), name="gpulens-demo-trainer",
                         daemon=True).start()
        serve(root, access, open_path=f"/live/{run_id}")
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        log.close()
        if made and not recorded:
            shutil.rmtree(root, ignore_errors=True)
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
