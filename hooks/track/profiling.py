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
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gpulens.hooks.track.kineto_output import kineto_quiet
from gpulens.profiler.store import clock
from gpulens.profiler.store.requests import Progress
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


@dataclass(frozen=True)
class Demand:
    """A window asked for while the run goes on (``gpulens profile``, the live page): the next ``steps`` steps."""

    id: str
    steps: int
    memory: bool = False
    trigger: str = "on demand"
    at: int | None = None  # the first step to record (several ranks align on it); None: the next one


@dataclass
class DemandState(Progress):
    """How far a demand got, for its acknowledgement (read by the request watcher's thread)."""

    version: int = 0  # bumped on each change: the watcher writes an acknowledgement per version


@dataclass(frozen=True)
class _Window:
    index: int
    start: int  # the step whose start began it (warm-up first)
    warmup: int
    active: int
    trigger: str | None  # None: the schedule
    demand: str | None  # the request it answers


#: On-demand windows one process records at most (each is a trace file: the disk is the user's).
MAX_DEMANDS = 20


class ProfilerWindows:
    """Drives torch.profiler from the run's step boundaries: the schedule's windows, and windows on demand.

    A demand (:meth:`request`, from the request watcher's thread) waits in a
    queue the step hook reads as one more truth test, and begins at the next
    step boundary with no window running (one warm-up step, then its steps),
    or, asked for a first step (every rank of a job on the same steps), with
    the warm-up step just before it -- or as soon as it can, if that passed;
    a scheduled window whose start passes while a demand's window runs is
    skipped, not shifted, so the schedule stays where the run's config put it.
    """

    def __init__(self, torch: Any, run_dir: Path, rank: int, config: ProfileConfig, writer: RunWriter) -> None:
        self.torch = torch
        self.config = config
        self.rank = rank
        self.writer = writer
        self.run_dir = run_dir
        self.dir = run_dir / "traces"
        self._index = 0  # the next window's number (file names, the windows table)
        self._scheduled = 0  # scheduled windows begun or skipped
        self._prof: Any = None
        self._cur: _Window | None = None
        self._t_start = 0.0
        self._threads: list[threading.Thread] = []
        self._quiet = kineto_quiet
        self._last_ended = -1  # last step that ended: a window cut short by the run's end stops there
        self.disabled = False  # the profiler failed: no more windows in this run
        self.failure: str | None = None
        self._schedule_on = config.enabled
        self._queue: deque[Demand] = deque()
        self.demands: dict[str, DemandState] = {}
        self._next_begin = config.window_start(0) - 1 if self._schedule_on else -2  # the step at whose end the
        # next scheduled window starts

    # ------------------------------------------------------------------ demands (another thread)
    def request(self, demand: Demand) -> DemandState:
        """Queue ``demand`` (or refuse it, with the reason in its state).  Called from the request watcher's
        thread; the step hook takes it at the next step boundary."""
        state = self.demands.get(demand.id)
        if state is not None:
            return state
        state = DemandState()
        if self.disabled:
            state.status, state.reason = "refused", f"the profiler failed earlier in this run ({self.failure})"
        elif sum(1 for s in self.demands.values() if s.status != "refused") >= MAX_DEMANDS:
            state.status, state.reason = "refused", f"this process recorded its {MAX_DEMANDS} on-demand windows"
        self.demands[demand.id] = state
        if state.status == "queued":
            self._queue.append(demand)
        return state

    def _update(self, demand: str | None, **changes: Any) -> None:
        state = self.demands.get(demand) if demand else None
        if state is not None:
            for key, value in changes.items():
                setattr(state, key, value)
            state.version += 1

    # ------------------------------------------------------------------ step hook
    def profiled(self, step: int) -> bool:
        """Is ``step`` inside the window currently running?"""
        return self._prof is not None and self._cur is not None and self._cur.start <= step

    def idle_through(self, step: int) -> bool:
        """Does no window record ``step`` or the step after it?"""
        return self._prof is None and step != self._next_begin and not self._queue

    def on_step_end(self, step: int) -> bool:
        """Called when ``step`` ends; returns whether that step was profiled."""
        if self._prof is None and step != self._next_begin and not self._queue:
            return False  # the common case: between windows, no demand: two comparisons
        if self.disabled:
            return False
        self._last_ended = step
        was_profiled = self._prof is not None
        demand: Demand | None = None
        try:
            cur = self._cur
            if self._prof is not None and cur is not None:
                with self._quiet(self._kineto_said):
                    self._prof.step()
                    if step >= cur.start + cur.warmup + cur.active - 1:
                        self._prof.stop()  # on_trace_ready ran inside step()
                        self._prof, self._cur = None, None
            if self._prof is None:
                demand = self._queue[0] if self._queue else None
                if demand is not None and (demand.at is None or step + 2 >= demand.at):  # its warm-up: at - 1
                    self._queue.popleft()
                    with self._quiet(self._kineto_said):
                        self._begin(step + 1, 1, demand.steps, demand.trigger, demand.id)
                    if demand.memory:
                        self._memory_snapshot(demand)
                elif step == self._next_begin:
                    with self._quiet(self._kineto_said):
                        self._begin(step + 1, self.config.warmup, self.config.active, None, None)
                    self._scheduled += 1
            if self._schedule_on:  # scheduled starts that passed while a demand's window ran: skipped
                while self._scheduled < self.config.max_windows and \
                        self.config.window_start(self._scheduled) <= step + 1:
                    self._scheduled += 1
            self._next_begin = (self.config.window_start(self._scheduled) - 1
                                if self._schedule_on and self._scheduled < self.config.max_windows else -2)
        except Exception as exc:  # a profiler failure must never reach the loop
            log.warning("gpulens: torch.profiler window failed (%s: %s); profiling stops for this run",
                        type(exc).__name__, exc)
            self.writer.event("profiler_error", f"{type(exc).__name__}: {exc}")
            if demand is not None and self.demands[demand.id].status == "queued":  # taken, never begun
                self._update(demand.id, status="failed", reason=f"the profiler failed ({type(exc).__name__}: {exc})")
            self._abandon(f"{type(exc).__name__}: {exc}")
        return was_profiled

    def begin_if_first(self) -> None:
        """Start a window due at step 0 (``first=0``) before the first step runs."""
        if self._schedule_on and self.config.window_start(0) == 0 and self._prof is None:
            try:
                with self._quiet(self._kineto_said):
                    self._begin(0, self.config.warmup, self.config.active, None, None)
                self._scheduled = 1
                self._next_begin = (self.config.window_start(1) - 1 if self.config.max_windows > 1 else -2)
            except Exception as exc:
                log.warning("gpulens: torch.profiler could not start (%s)", exc)
                self._abandon(str(exc))

    def _begin(self, start: int, warmup: int, active: int, trigger: str | None, demand: str | None) -> None:
        torch = self.torch
        prof_mod = torch.profiler
        activities = [prof_mod.ProfilerActivity.CPU]
        if torch.cuda.is_available():
            activities.append(prof_mod.ProfilerActivity.CUDA)

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

        window = _Window(self._index, start, warmup, active, trigger, demand)
        shapes = self.config.record_shapes
        if shapes is None:
            shapes = window.index < self.config.shapes_windows and torch.cuda.is_available()
        prof = prof_mod.profile(activities=activities, schedule=schedule,
                                on_trace_ready=lambda p, w=window: self._save(p, w),
                                record_shapes=shapes,
                                profile_memory=self.config.profile_memory, with_stack=self.config.with_stack)
        prof.step_num = start  # ProfilerStep#N in the trace is the run's step number
        self._t_start = clock.now()
        prof.start()
        self._prof, self._cur = prof, window
        self._index += 1
        self._update(demand, status="profiling", window=window.index, first_step=start + warmup,
                     last_step=start + warmup + active - 1)

    def _memory_snapshot(self, demand: Demand) -> None:
        """The CUDA caching allocator's state at this step boundary (training thread: the call itself); pickled
        and gzipped on a background thread."""
        torch = self.torch
        if not (torch.cuda.is_available() and torch.cuda.is_initialized()):
            self._update(demand.id, memory_path=None, reason="no memory snapshot: this process uses no CUDA device")
            return
        try:
            snapshot = torch.cuda.memory._snapshot()
        except Exception as exc:
            self._update(demand.id, reason=f"no memory snapshot ({type(exc).__name__}: {exc})")
            return
        thread = threading.Thread(target=self._write_snapshot, args=(demand.id, snapshot),
                                  name="gpulens-memory-snapshot", daemon=True)
        thread.start()
        self._threads = [t for t in self._threads if t.is_alive()] + [thread]

    def _write_snapshot(self, demand: str, snapshot: Any) -> None:
        _lowest_priority()
        from gpulens.hooks.track.memory_snapshot import write_snapshot

        path, reason = write_snapshot(self.run_dir, self.rank, demand, snapshot)
        self._update(demand, memory_path=path, **({"reason": reason} if reason else {}))

    def _kineto_said(self, line: str) -> None:
        self.writer.event("profiler_log", line)

    def _save(self, prof: Any, window: _Window) -> None:
        """on_trace_ready, on the training thread: hand the finished window to a background thread."""
        first_active = window.start + window.warmup
        last_active = min(window.start + window.warmup + window.active - 1, self._last_ended)
        if last_active < first_active:
            self._update(window.demand, status="failed", reason="the run ended before the window recorded a step")
            return  # the run ended during the window's warm-up: nothing was recorded
        thread = threading.Thread(target=self._export, name="gpulens-trace-export", daemon=True,
                                  args=(prof, window, first_active, last_active, self._t_start, clock.now()))
        thread.start()
        self._threads = [t for t in self._threads if t.is_alive()] + [thread]

    def _export(self, prof: Any, window: _Window, first: int, last: int, t0: float, t1: float) -> None:
        """Write the window's chrome trace, gzip it, then record the window (background, lowest priority)."""
        _lowest_priority()
        k, trigger = window.index, window.trigger
        name = f"rank-{self.rank}.window-{k}.steps-{first}-{last}.pt.trace.json"
        raw = self.dir / (name + ".tmp")
        final = self.dir / (name + ".gz")
        part = final.with_name(final.name + ".part")
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            prof.export_chrome_trace(str(raw))  # Kineto writes the JSON without holding the GIL
        except Exception as exc:
            error = f"export failed: {type(exc).__name__}: {exc}"
            self.writer.window(k, first, last, t0, t1, None, "failed", error, trigger)
            self._update(window.demand, status="failed", reason=error)
            raw.unlink(missing_ok=True)
            return
        try:
            with open(raw, "rb") as src, gzip.open(part, "wb", compresslevel=GZIP_LEVEL) as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
            os.replace(part, final)
            raw.unlink(missing_ok=True)
            self.writer.window(k, first, last, t0, t1, f"traces/{final.name}", "ok", None, trigger)
            self._update(window.demand, status="done", first_step=first, last_step=last,
                         path=f"traces/{final.name}")
        except Exception as exc:
            part.unlink(missing_ok=True)
            self.writer.window(k, first, last, t0, t1, None, "failed", f"gzip failed: {exc}", trigger)
            self._update(window.demand, status="failed", reason=f"gzip failed: {exc}")

    def _abandon(self, why: str = "stopped") -> None:
        self.disabled = True
        self.failure = why
        self._next_begin = -2
        prof, self._prof = self._prof, None
        self._cur = None
        while self._queue:
            self._update(self._queue.popleft().id, status="failed", reason=f"the profiler stopped ({why})")
        if prof is not None:
            try:
                with self._quiet(self._kineto_said):
                    prof.stop()
            except Exception:
                pass

    def close(self, timeout: float = 60.0) -> None:
        """Stop a window cut short by the end of the run, and wait for pending compression."""
        if self._prof is not None:
            self._abandon("the run ended")
        while self._queue:
            self._update(self._queue.popleft().id, status="failed", reason="the run ended before the next step")
        for thread in self._threads:
            thread.join(timeout)
