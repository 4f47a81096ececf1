"""GPU-side step and phase times with CUDA events -- no synchronisation on the hot path.

CUDA work is asynchronous: the host's phase times say when work was
*launched*.  On sampled steps (at most one per ``interval`` seconds) an event
is recorded at every phase transition; the events are resolved later, once
the GPU has passed them (``Event.query()``), which gives each phase's share of
GPU stream time without ever blocking the training thread.  The loss is
copied to pinned host memory asynchronously for the same reason: calling
``.item()`` on a CUDA tensor every step would synchronise every step.
"""
from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from typing import Any

from gpulens.hooks.track.steps import OTHER, Row, loss_value
from gpulens.profiler.store.schema import GPU_PHASES, GPU_STEP, LOSS, MEM_ALLOCATED, MEM_PEAK, MEM_RESERVED


class CudaStepTimer:
    def __init__(self, torch: Any, emit: Callable[[Row], None], interval: float = 0.1,
                 memory_interval: float = 0.1, loss_interval: float = 0.02) -> None:
        self.torch = torch
        self.cuda = torch.cuda
        self.device = torch.cuda.current_device()
        self._emit = emit
        self.interval = interval
        self.memory_interval = memory_interval
        self.loss_interval = loss_interval
        self._last_loss = -1e18
        self._pool: list[Any] = []
        self._marks: list[tuple[Any, int]] = []
        self._pending: deque[tuple[Row, Any, list[tuple[Any, int]] | None, Any]] = deque()
        self._last_timed = -1e18
        self._last_memory = -1e18
        # the allocator's peak is process-wide and may predate this run (an earlier run in the same
        # process, a notebook): it counts only once it moves past where it stood when the run began
        stats = self.cuda.memory_stats_as_nested_dict(self.device)
        try:
            self._peak_before = stats["allocated_bytes"]["all"]["peak"]
        except KeyError:
            self._peak_before = 0
        self._run_peak = 0

    def _event(self) -> Any:
        ev = self._pool.pop() if self._pool else self.cuda.Event(enable_timing=True)
        ev.record()
        return ev

    # -------------------------------------------------------------- StepRecorder protocol
    def begin_step(self, start: float) -> bool:
        if start - self._last_timed < self.interval:
            return False
        self._last_timed = start
        self._marks = [(self._event(), OTHER)]
        return True

    def mark(self, slot: int) -> None:
        self._marks.append((self._event(), slot))

    def end_step(self, row: Row, loss: Any, timed: bool) -> None:
        now = time.perf_counter()
        if now - self._last_memory >= self.memory_interval:
            self._last_memory = now
            # one allocator snapshot: memory_allocated() & co. each flatten the
            # whole statistics dict, three times the cost for the same numbers
            stats = self.cuda.memory_stats_as_nested_dict(self.device)
            try:
                current = stats["allocated_bytes"]["all"]["current"]
                peak = stats["allocated_bytes"]["all"]["peak"]
                row[MEM_ALLOCATED] = current
                row[MEM_RESERVED] = stats["reserved_bytes"]["all"]["current"]
                self._run_peak = max(self._run_peak, current, peak if peak > self._peak_before else 0)
                row[MEM_PEAK] = self._run_peak
            except KeyError:
                pass
        loss_host = None
        if loss is not None:
            if getattr(loss, "is_cuda", False):
                if now - self._last_loss >= self.loss_interval:
                    self._last_loss = now
                    loss_host = loss.detach().to("cpu", non_blocking=True)
            else:
                row[LOSS] = loss_value(loss)
        marks = self._marks if timed else None
        self._marks = []
        if marks is None and loss_host is None:
            self._emit(row)
        else:
            # the copy of the loss is queued after the last phase mark: wait for it
            ready = self._event() if loss_host is not None else marks[-1][0]  # type: ignore[index]
            self._pending.append((row, ready, marks, loss_host))
        self.poll()

    def poll(self) -> None:
        while self._pending and self._pending[0][1].query():
            self._finish(*self._pending.popleft())

    def flush(self) -> None:
        """Wait for every pending step (used once, when the run closes)."""
        while self._pending:
            row, ready, marks, loss_host = self._pending.popleft()
            ready.synchronize()
            self._finish(row, ready, marks, loss_host)

    def _finish(self, row: Row, ready: Any, marks: list[tuple[Any, int]] | None, loss_host: Any) -> None:
        if marks:
            totals = [0.0] * 5
            prev = marks[0][0]
            for ev, slot in marks[1:]:
                totals[slot] += prev.elapsed_time(ev) / 1000.0
                prev = ev
            row[GPU_STEP] = sum(totals)
            row[GPU_PHASES] = totals
            self._pool.extend(ev for ev, _ in marks)
        if loss_host is not None:
            row[LOSS] = loss_value(loss_host)
            if not marks or ready is not marks[-1][0]:
                self._pool.append(ready)
        self._emit(row)
