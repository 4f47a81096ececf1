"""Shared fixtures.  GPU tests (marker ``gpu``) skip cleanly without CUDA."""
from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared"
sys.path.insert(0, str(Path(__file__).resolve().parent))  # tests/fakes, tests/helpers

# A suite started in the background of a non-interactive shell (`./test.sh &`, a CI runner, nohup) inherits
# SIGINT *ignored*: Python then never raises KeyboardInterrupt and every child it starts ignores Ctrl-C too, so the
# tests that press Ctrl-C would wait for a process that cannot hear it. Users press Ctrl-C in a terminal where
# SIGINT is not ignored: the suite and its children start the way theirs do.
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

# The suite's training scripts share two cores with the other pytest worker and its scripts; torch's OpenMP pool
# (a thread per core) spin-waits for the core another process holds. One thread each, unless the caller chose:
# the char-GPT script took 7.7 CPU-s with it and 11.4 without beside one busy loop, 33 in the suite. What the
# tests check (steps, phases, losses, bit-for-bit weights with and without gpulens) does not depend on it.
os.environ.setdefault("OMP_NUM_THREADS", "1")


def _cuda_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if not any("gpu" in item.keywords for item in items):
        return
    if _cuda_available():
        return
    skip = pytest.mark.skip(reason="needs an NVIDIA GPU with CUDA (run with the device tool)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def runs_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "runs"
    monkeypatch.setenv("GPULENS_DIR", str(root))
    return root


@pytest.fixture(autouse=True)
def _no_leftover_active_run():
    yield
    import gpulens.hooks.track.tracking as track_mod

    active = track_mod._active
    if active is not None and not active._closed:
        active._nesting = 0
        active.close("finished")


@pytest.fixture(autouse=True, scope="module")
def _no_leftover_analysis_processes():
    """The dashboard's analysis processes are children of the test process: stopped after each module,
    so a later test that counts a training script's child processes sees only its own."""
    yield
    data = sys.modules.get("gpulens.dashboard.data")
    if data is not None:
        data.shutdown()


@pytest.fixture
def gpu_out() -> Path | None:
    """Where GPU tests write their measured figures ($OUT on the device machine)."""
    out = os.environ.get("GPULENS_GPU_OUT")
    return Path(out) if out else None


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    """Keep each phase's report on the item, so fixtures can act on failures (browser screenshots)."""
    outcome = yield
    rep = outcome.get_result()
    setattr(item, f"rep_{rep.when}", rep)
