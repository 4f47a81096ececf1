"""Automatic capture: a profiler window of a slowdown while it lasts, and of the first non-finite loss.

The moments that matter -- steps that got 2x slower at step 4,000, a loss
that became NaN -- are rarely inside a window on a schedule.  The training
thread hands each step row it emits to a bounded queue (one append); the
request watcher's thread (hooks/track/on_demand.py) looks at them: the first
row with a non-finite loss asks for a window of the next steps at once, and
every few seconds the recent steady steps are searched for a lasting
slowdown with the advisor's own change-point test
(:func:`gpulens.profiler.analysis.shifts.find_shifts`: medians 25 % apart,
most steps on their side, a rank-sum z of 5).  A slowdown whose slow level
has lasted :data:`MIN_AFTER` steps, and still does, asks for a window of the
slow regime (``trigger`` "slowdown at step S"), at most :data:`MAX_SLOWDOWNS`
times in a run, never twice for one change.  The report then links the
shift to its window.
"""
from __future__ import annotations

import logging
import math
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import numpy as np

from gpulens.hooks.track.profiling import Demand, ProfilerWindows
from gpulens.profiler.analysis.shifts import find_shifts
from gpulens.profiler.store.schema import COLUMN, FLAG_COMPILE, FLAG_PROFILED, FLAG_WARMUP, FLAG_WHATIF

log = logging.getLogger("gpulens")

#: Steady steps searched for a change (the newest), and steps after the change it must have lasted.
RECENT, MIN_AFTER = 240, 20
#: Windows of slow regimes one process records at most; a change this close to one captured is the same one.
MAX_SLOWDOWNS, SAME_CHANGE_STEPS = 3, 60
#: Steps each captured window records (after its warm-up step).
WINDOW_STEPS = 3
#: The search runs at most this often, and only after this many new steady steps (its cost: ~5 ms of a
#: background thread's CPU for 240 steps).
CHECK_EVERY_S, MIN_NEW_STEPS = 5.0, 20
_NOT_STEADY = FLAG_WARMUP | FLAG_PROFILED | FLAG_WHATIF | FLAG_COMPILE
_STEP, _START, _END, _LOSS, _FLAGS = (COLUMN[c] for c in ("step", "t_start", "t_end", "loss", "flags"))


class AutoCapture:
    """Watches the emitted step rows (``seen`` on the training thread; ``poll`` on the watcher's)."""

    def __init__(self, windows: Callable[[], ProfilerWindows | None], say: Callable[[str, str], None],
                 busy: Callable[[], bool] = lambda: False) -> None:
        """``busy``: a measured what-if's stretch is ahead or running -- a window now would take its steps
        out of the what-if's measurement, so what is found waits until the stretch is over."""
        self._windows = windows
        self._say = say  # (event kind, message): the run's event log and the user's
        self._busy = busy
        self._deferred: list[tuple[str, str]] = []  # (trigger, why) found while busy
        self._rows: deque[Any] = deque(maxlen=4 * RECENT)  # appended by the loop, taken by the watcher
        self._steady: deque[tuple[int, float, float]] = deque(maxlen=RECENT)  # (step, t_start, duration)
        self._new_steady = 0
        self._next_check = 0.0
        self._captured: list[int] = []  # the change points captured
        self._loss_captured = False
        self.closed = False  # the run is closing: nothing more is asked

    def seen(self, row: Any) -> None:
        """A step row was emitted (training thread: one append; a watcher that falls behind loses the oldest)."""
        self._rows.append(row)

    def poll(self, now: float | None = None) -> None:
        if self.closed:
            return
        now = time.monotonic() if now is None else now
        if self._deferred and not self._busy():
            deferred, self._deferred = self._deferred, []
            for trigger, why in deferred:
                self._ask(trigger, why)
        while True:
            try:
                row = self._rows.popleft()
            except IndexError:
                break
            loss = row[_LOSS]
            if not self._loss_captured and isinstance(loss, float) and not math.isfinite(loss):
                self._loss_captured = True
                self._ask(f"non-finite loss at step {row[_STEP]}", f"the loss was {loss} at step {row[_STEP]}")
            if not (row[_FLAGS] or 0) & _NOT_STEADY and row[_START] is not None and row[_END] is not None:
                self._steady.append((int(row[_STEP]), float(row[_START]), float(row[_END]) - float(row[_START])))
                self._new_steady += 1
        if len(self._captured) >= MAX_SLOWDOWNS or self._new_steady < MIN_NEW_STEPS or now < self._next_check:
            return
        self._next_check, self._new_steady = now + CHECK_EVERY_S, 0
        self._look_for_slowdown()

    def _look_for_slowdown(self) -> None:
        recent = np.array(self._steady, dtype=np.float64).reshape(-1, 3)
        if len(recent) < 2 * MIN_AFTER:
            return
        shifts = find_shifts(recent[:, 0].astype(np.int64), recent[:, 1], recent[:, 2])
        if not shifts:
            return
        latest = max(shifts, key=lambda s: s.step)  # the level the run is at now
        if not latest.slower or latest.steps_after < MIN_AFTER:
            return
        if any(abs(latest.step - c) < SAME_CHANGE_STEPS for c in self._captured):
            return
        self._captured.append(latest.step)
        self._ask(f"slowdown at step {latest.step}",
                  f"steps got {latest.ratio:.1f}x slower at step {latest.step} (median {latest.before_s * 1e3:.1f} "
                  f"-> {latest.after_s * 1e3:.1f} ms, {latest.steps_after} steps so far)")

    def _ask(self, trigger: str, why: str) -> None:
        if self._busy():
            self._deferred.append((trigger, why))
            return
        windows = self._windows()
        if windows is None:
            return
        state = windows.request(Demand(f"auto-{len(windows.demands)}", WINDOW_STEPS, trigger=trigger))
        self._say("auto_capture", f"{why}: {'profiling the next steps' if state.status == 'queued' else state.reason}")
