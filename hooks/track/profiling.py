"""torch.profiler windows on a schedule, written into the run directory.

Every ``every`` steps (first at step ``first``) one window is recorded:
``warmup`` steps with the profiler running but discarding, then ``active``
steps recorded with CPU and CUDA activities and input shapes.  A fresh
profiler is created per window and stopped after it, so steps outside
windows pay nothing.  Window steps are flagged as profiled (throughput
figures leave them out).

What the user's loop still sees is bounded: stopping the profiler (Kineto
collects the window's events) is the one part that must run on the training
thread; the chrome trace export (which releases the GIL) and its gzip run on
a background thread at the lowest CPU priority, so a busy host gives the
training threads the cores first.  The window is recorded in the database
only once its file is complete.  Kineto's log lines are kept out of the
user's terminal (:mod:`gpulens.hooks.track.kineto_output`).
"""
from __future__ import annotations

import gzip
import logging
import os
import shutil
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gpulens.hooks.track.kineto_output import kineto_quiet
from gpulens.profiler.store import clock
from gpulens.profiler.store.writer import RunWriter

log = logging.getLogger("gpulens")

#: Trace JSON compresses ~10x even at level 1, which costs a third of level 6's CPU.
GZIP_LEVEL = 1


def _lowest_priority() -> None:
    """Give this thread the lowest CPU priority (Linux: nice applies per thread), so the training wins."""
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)
    except (AttributeError, OSError):
        pass


@dataclass
class ProfileConfig:
    """When and how to run torch.profiler (``every=0`` turns windows off)."""

    every: int = 500
    first: int = 10
    warmup: int = 1
    active: int = 3
    max_windows: int = 10
    #: Input shapes serve one analysis, the GEMM alignment of CUDA runs, and with them stopping the
    #: profiler -- the part the training thread waits for -- takes about 3x longer.  None (default):
    #: the first ``shapes_windows`` windows of a run with CUDA record them; True: every window; False: none.
    record_shapes: bool | None = None
    shapes_windows: int = 1
    profile_memory: bool = False
    with_stack: bool = False

    @property
    def enabled(self) -> bool:
        return self.every > 0 and self.active > 0 and self.max_windows > 0

    def window_start(self, k: int) -> int:
        return self.first + k * self.every

    def validate(self) -> None:
        if self.every and self.every < self.warmup + self.active + 1:
            raise ValueError("profile every must exceed warmup + active steps")
        if min(self.first, self.warmup, self.active, self.max_windows, self.every) < 0:
            raise ValueError("profile schedule values must not be negative")


class ProfilerWindows:
    """Drives torch.profiler from the run's step boundaries."""

    def __init__(self, torch: Any, run_dir: Path, rank: int, config: ProfileConfig, writer: RunWriter) -> None:
        self.torch = torch
        self.config = config
        self.rank = rank
        self.writer = writer
        self.dir = run_dir / "traces"
        self._k = 0  # next window index
        self._prof: Any = None
        self._start_step = -1
        self._t_start = 0.0
        self._threads: list[threading.Thread] = []
        self._quiet = kineto_quiet
        self._last_ended = -1  # last step that ended: a window cut short by the run's end stops there
        self.disabled = not config.enabled
        self._next_begin = config.window_start(0) - 1  # the step at whose end the next window starts

    # ------------------------------------------------------------------ step hook
    def profiled(self, step: int) -> bool:
        """Is ``step`` inside the window currently running?"""
        return self._prof is not None and self._start_step <= step

    def idle_through(self, step: int) -> bool:
        """Does no window record ``step`` or the step after it?"""
        return self._prof is None and step != self._next_begin

    def on_step_end(self, step: int) -> bool:
        """Called when ``step`` ends; returns whether that step was profiled."""
        if self._prof is None and step != self._next_begin:
            return False  # the common case: between windows, one comparison
        if self.disabled:
            return False
        self._last_ended = step
        was_profiled = self._prof is not None
        try:
            if self._prof is not None:
                with self._quiet(self._kineto_said):
                    self._prof.step()
                    if step >= self._start_step + self.config.warmup + self.config.active - 1:
                        self._prof.stop()  # on_trace_ready ran inside step()
                        self._prof = None
                        self._k += 1
            if self._prof is None and self._k < self.config.max_windows \
                    and step + 1 == self.config.window_start(self._k):
                with self._quiet(self._kineto_said):
                    self._begin(step + 1)
            self._next_begin = (self.config.window_start(self._k) - 1 if self._k < self.config.max_windows
                                else -2)
        except Exception as exc:  # a profiler failure must never reach the loop
            log.warning("gpulens: torch.profiler window failed (%s: %s); profiling stops for this run",
                        type(exc).__name__, exc)
            self.writer.event("profiler_error", f"{type(exc).__name__}: {exc}")
            self._abandon()
        return was_profiled

    def begin_if_first(self) -> None:
        """Start a window due at step 0 (``first=0``) before the first step runs."""
        if not self.disabled and self.config.window_start(0) == 0 and self._prof is None:
            try:
                with self._quiet(self._kineto_said):
                    self._begin(0)
            except Exception as exc:
                log.warning("gpulens: torch.profiler could not start (%s)", exc)
                self._abandon()

    def _begin(self, start: int) -> None:
        torch = self.torch
        prof_mod = torch.profiler
        activities = [prof_mod.ProfilerActivity.CPU]
        if torch.cuda.is_available():
            activities.append(prof_mod.ProfilerActivity.CUDA)
        warmup, active = self.config.warmup, self.config.active

        def schedule(step_num: int) -> Any:
            rel = step_num - start
            if rel < 0:
                return prof_mod.ProfilerAction.NONE
            if rel < warmup:
                return prof_mod.ProfilerAction.WARMUP
            if rel < warmup + active - 1:
                return prof_mod.ProfilerAction.RECORD
            if rel == warmup + active - 1:
                return prof_mod.ProfilerAction.RECORD_AND_SAVE
            return prof_mod.ProfilerAction.NONE

        k = self._k
        shapes = self.config.record_shapes
        if shapes is None:
            shapes = k < self.config.shapes_windows and torch.cuda.is_available()
        prof = prof_mod.profile(activities=activities, schedule=schedule,
                                on_trace_ready=lambda p, k=k, s=start: self._save(p, k, s),
                                record_shapes=shapes,
                                profile_memory=self.config.profile_memory, with_stack=self.config.with_stack)
        prof.step_num = start  # ProfilerStep#N in the trace is the run's step number
        self._start_step = start
        self._t_start = clock.now()
        prof.start()
        self._prof = prof

    def _kineto_said(self, line: str) -> None:
        self.writer.event("profiler_log", line)

    def _save(self, prof: Any, k: int, start: int) -> None:
        """on_trace_ready, on the training thread: hand the finished window to a background thread."""
        first_active = start + self.config.warmup
        last_active = min(start + self.config.warmup + self.config.active - 1, self._last_ended)
        if last_active < first_active:
            return  # the run ended during the window's warm-up: nothing was recorded
        thread = threading.Thread(target=self._export, name="gpulens-trace-export", daemon=True,
                                  args=(prof, k, first_active, last_active, self._t_start, clock.now()))
        thread.start()
        self._threads = [t for t in self._threads if t.is_alive()] + [thread]

    def _export(self, prof: Any, k: int, first: int, last: int, t0: float, t1: float) -> None:
        """Write the window's chrome trace, gzip it, then record the window (background, lowest priority)."""
        _lowest_priority()
        name = f"rank-{self.rank}.window-{k}.steps-{first}-{last}.pt.trace.json"
        raw = self.dir / (name + ".tmp")
        final = self.dir / (name + ".gz")
        part = final.with_name(final.name + ".part")
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            prof.export_chrome_trace(str(raw))  # Kineto writes the JSON without holding the GIL
        except Exception as exc:
            self.writer.window(k, first, last, t0, t1, None, "failed", f"export failed: {type(exc).__name__}: {exc}")
            raw.unlink(missing_ok=True)
            return
        try:
            with open(raw, "rb") as src, gzip.open(part, "wb", compresslevel=GZIP_LEVEL) as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
            os.replace(part, final)
            raw.unlink(missing_ok=True)
            self.writer.window(k, first, last, t0, t1, f"traces/{final.name}", "ok", None)
        except Exception as exc:
            part.unlink(missing_ok=True)
            self.writer.window(k, first, last, t0, t1, None, "failed", f"gzip failed: {exc}")

    def _abandon(self) -> None:
        self.disabled = True
        self._next_begin = -2
        prof, self._prof = self._prof, None
        if prof is not None:
            try:
                with self._quiet(self._kineto_said):
                    prof.stop()
            except Exception:
                pass

    def close(self, timeout: float = 60.0) -> None:
        """Stop a window cut short by the end of the run, and wait for pending compression."""
        if self._prof is not None:
            self._abandon()
        for thread in self._threads:
            thread.join(timeout)
