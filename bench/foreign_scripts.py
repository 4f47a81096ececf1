"""Shared by the benches that time unmodified training scripts with and without ``gpulens run``.

Each arm is a fresh process running a script from tests/scripts/, which
prints one line per iteration with its wall time (``time 12.34ms``), as
nanoGPT and pytorch/examples scripts do; the arms alternate order pair by
pair so drift of the machine hits both alike.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

SCRIPTS = Path(__file__).resolve().parent.parent / "tests" / "scripts"
GPULENS = str(Path(sys.executable).with_name("gpulens"))
_TIME = re.compile(r"time (\d+(?:\.\d+)?)ms")

#: name -> (script, arguments): a Python-heavy nanoGPT-like loop and a conv net with DataLoader workers.
WORKLOADS = {
    "char-gpt": ("char_gpt.py", ["--max-iters", "{iters}", "--eval-interval", "100000"]),
    "cnn": ("cnn_imagenet.py", ["--batches", "{iters}", "--workers", "2"]),
}


def iteration_times(argv: list[str], env: dict[str, str] | None = None, timeout: float = 900) -> list[float]:
    """Seconds per iteration, as the script itself logs them."""
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                          env=env if env is not None else clean_env())
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} exited {proc.returncode}: {proc.stderr[-2000:]}")
    return [float(m.group(1)) / 1e3 for m in map(_TIME.search, proc.stdout.splitlines()) if m]


def clean_env(threads: int | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GPULENS_")}
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    return env


def arms(workload: str, iters: int, runs_dir: str, gpulens_args: list[str] | None = None
         ) -> tuple[list[str], list[str]]:
    """(plain argv, gpulens run argv) for ``workload``."""
    script, args = WORKLOADS[workload]
    cmd = [sys.executable, str(SCRIPTS / script), *(a.format(iters=iters) for a in args)]
    return cmd, [GPULENS, "run", "--runs-dir", runs_dir, "--no-advise", "--quiet", *(gpulens_args or []), "--", *cmd]


def runs_dir() -> tempfile.TemporaryDirectory:
    return tempfile.TemporaryDirectory(prefix="gpulens-bench-")
