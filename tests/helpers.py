"""Small helpers shared by tests (no fakes here: see tests/fakes/)."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from gpulens.profiler import open_run
from gpulens.profiler.record.recorder import Recorder, SamplingConfig

FAST = dict(device_interval=0.02, util_interval=0.05, gpm_interval=0.12, slow_interval=0.1,
            host_interval=0.02, workers_interval=0.1, flush_interval=0.1)


def fast_sampling(**over: Any) -> SamplingConfig:
    return SamplingConfig(**{**FAST, **over})


def record_for(path: Path, seconds: float, nvml: Any = None, during=None, until=None, **over: Any):
    """Run a Recorder for ``seconds`` (calling ``during(elapsed)`` meanwhile); return an open reader.

    ``until()``: go on past ``seconds`` until it is true (at most a minute), for a test that needs a number of
    sampler ticks, which a busy host spreads over more time."""
    rec = Recorder(path / "rank-0.db", {"name": path.name}, fast_sampling(**over), nvml)
    t0 = time.perf_counter()
    while (elapsed := time.perf_counter() - t0) < seconds or (until is not None and not until() and elapsed < 60):
        if during is not None:
            during(elapsed)
        time.sleep(0.01)
    rec.close("finished")
    return open_run(path)


#: A tiny training script for subprocess tests (``python -c TINY_TRAIN SECONDS``): a linear model, a loss
#: passed to ``run.step``, fast sampling, no profiler window; prints "started" once recording.
TINY_TRAIN = """
import sys, time, torch, torch.nn as nn, gpulens
from gpulens.profiler.record.recorder import SamplingConfig
seconds = float(sys.argv[1])
model = nn.Linear(64, 64)
opt = torch.optim.SGD(model.parameters(), lr=1e-3)
x = torch.randn(32, 64)
sampling = SamplingConfig(device_interval=0.05, util_interval=0.05, host_interval=0.05, slow_interval=0.1,
                          flush_interval=0.2)
with gpulens.track("stored", quiet=True, sampling=sampling, profile=False) as run:
    print("started", flush=True)
    end = time.time() + seconds
    while time.time() < end:
        loss = model(x).square().mean()
        loss.backward()
        opt.step()
        opt.zero_grad()
        run.step(loss=loss)
        time.sleep(0.005)
"""
