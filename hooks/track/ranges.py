"""Steps and phases as named ranges in other tools' timelines.

Inside a torch.profiler window each step and phase is also a
``record_function`` range (``gpulens.step#12``, ``gpulens.forward``, ...), so
the chrome trace -- Perfetto, chrome://tracing, HTA, TensorBoard's plugin --
shows data wait / forward / backward / optimizer per step above the kernels,
instead of only ``ProfilerStep#N``.  Under Nsight Systems (``--nvtx``, or
detected from the NVTX injection nsys sets up) the same ranges are NVTX
push/pop ranges on every step.  Outside windows and without NVTX nothing
here runs: the step recorder holds ``None``.
"""
from __future__ import annotations

import os
from typing import Any

PREFIX = "gpulens."


def under_nsight(env: dict[str, str] | None = None) -> bool:
    """Is this process being traced by Nsight Systems (which injects its NVTX and CUDA hooks by env)?"""
    env = dict(os.environ) if env is None else env
    if env.get("NVTX_INJECTION64_PATH"):
        return True
    return any(tool in env.get(key, "").lower() for key in ("CUDA_INJECTION64_PATH", "LD_PRELOAD")
               for tool in ("nsys", "nsight"))


class TraceRanges:
    """Opens and closes named ranges in LIFO order: torch.profiler's (in windows) and/or NVTX."""

    def __init__(self, torch: Any, nvtx: bool) -> None:
        self.torch = torch
        self.profiler = False  # while a profiler window records (set_profiler)
        self.nvtx = nvtx and _nvtx_works(torch)
        self.active = self.nvtx  # a plain attribute: read on every phase change of the hot path
        self._open: list[Any] = []  # record_function handles (None where only NVTX opened)

    def set_profiler(self, recording: bool) -> None:
        self.profiler = recording
        self.active = recording or self.nvtx

    def push(self, name: str) -> None:
        handle = None
        if self.profiler:
            handle = self.torch.autograd.profiler.record_function(PREFIX + name)
            handle.__enter__()
        if self.nvtx:
            self.torch.cuda.nvtx.range_push(PREFIX + name)
        self._open.append((handle, self.nvtx))

    def pop(self) -> None:
        if not self._open:
            return
        handle, nvtx = self._open.pop()
        if nvtx:
            self.torch.cuda.nvtx.range_pop()
        if handle is not None:
            handle.__exit__(None, None, None)

    def pop_all(self) -> None:
        while self._open:
            self.pop()

    @property
    def depth(self) -> int:
        return len(self._open)


def _nvtx_works(torch: Any) -> bool:
    """NVTX needs a CUDA build of torch; a CPU build has no NVTX library to call."""
    try:
        torch.cuda.nvtx.range_push("gpulens.check")
        torch.cuda.nvtx.range_pop()
        return True
    except Exception:
        return False
