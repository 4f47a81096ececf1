"""Step and phase timing on the training thread.

Time is charged *exclusively* to the innermost active phase (or to "other"
when none is active) at every transition, so the phases of a step add up to
its wall time by construction and nested phases never double count.  Each
transition costs one ``perf_counter()`` call and a list update; everything
else (GPU event resolution, writing) happens off this path or later.

:meth:`StepRecorder.enter` and :meth:`StepRecorder.exit` run several times
per step for every hook of ``gpulens run``: they read the clock and charge
the elapsed time in their own frame (a Python call costs as much as the
accounting), which is why the charge appears inline there and again in
:meth:`StepRecorder._charge` for the rarer callers.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from gpulens.hooks.track import thread_times
from gpulens.profiler.store import clock
from gpulens.profiler.store.schema import FLAG_WARMUP, LOSS, PHASES

DATA, FORWARD, BACKWARD, OPTIMIZER, OTHER = range(5)
_NO_PHASE: tuple[int, str | None] = (OTHER, None)  # the top of an empty phase stack
PHASE_NAMES = PHASES  # slot i of the step recorder is PHASES[i]
ALIASES = {
    "data_wait": DATA, "data": DATA, "dataloader": DATA, "data_loading": DATA, "input": DATA,
    "forward": FORWARD, "fwd": FORWARD, "fw": FORWARD,
    "backward": BACKWARD, "bwd": BACKWARD, "bw": BACKWARD,
    "optimizer": OPTIMIZER, "optim": OPTIMIZER, "opt": OPTIMIZER, "optimizer_step": OPTIMIZER,
    "other": OTHER,
}

#: A step row before it is written: the columns of ``schema.STEP_COLUMNS``.
Row = list


def phase_slot(name: str) -> tuple[int, str | None]:
    """Slot for a phase name; unknown names count as "other" and are kept by name."""
    slot = ALIASES.get(name.lower())
    if slot is not None:
        return slot, None
    return OTHER, name


def infer_batch_size(batch: Any) -> int | None:
    """First dimension of the first tensor-like object in a batch (depth <= 2)."""
    stack = [(batch, 0)]
    while stack:
        obj, depth = stack.pop(0)
        shape = getattr(obj, "shape", None)
        if shape is not None and len(shape) > 0:
            try:
                return int(shape[0])
            except (TypeError, ValueError):
                return None
        if depth >= 2:
            continue
        if isinstance(obj, dict):
            stack.extend((v, depth + 1) for v in obj.values())
        elif isinstance(obj, (list, tuple)):
            stack.extend((v, depth + 1) for v in obj)
    return None


#: One data wait in this many is measured (two reads of the thread's times, ~7 µs): a sample of every
#: loader's waits at an eighth of the cost (bench/hook_cost.py: +3 µs per step on the hot path at one in four).
WAIT_SAMPLE = 8
#: How often (in measured waits) the totals reach the run's metadata; the last totals land at close.
REPORT_WAITS = 8


@dataclass
class WaitTotals:
    """The measured data waits of the training thread: how many, their wall time, and how much of it the
    thread ran (CPU) or stood runnable in the run queue; the rest it was blocked."""

    waits: int = 0
    wall_s: float = 0.0
    cpu_s: float = 0.0
    runnable_s: float = 0.0

    def as_meta(self) -> dict[str, float]:
        return {"waits": self.waits, "wall_s": round(self.wall_s, 6), "cpu_s": round(self.cpu_s, 6),
                "runnable_s": round(self.runnable_s, 6)}


class StepRecorder:
    """Per-step accounting; ``emit`` receives finished rows (schema.STEP_COLUMNS order).

    ``gpu`` is an optional object with ``begin_step``, ``mark``, ``end_step``
    and ``poll`` (see :class:`gpulens.hooks.track.cuda.CudaStepTimer`); it is
    attached once the training code initialises CUDA.
    """

    def __init__(self, emit: Callable[[Row], None], warmup_steps: int = 2,
                 batch_size: int | None = None, sync: Callable[[], None] | None = None) -> None:
        self._emit = emit
        self.warmup_steps = warmup_steps
        self.batch_size = batch_size
        self._sync = sync
        #: The clock of every transition: perf_counter itself (a C call, no frame) unless phases sync the device.
        self._clock: Callable[[], float] = self._synced_now if sync is not None else time.perf_counter
        self.gpu: Any = None
        self._acc = [0.0] * 5
        self._extra: dict[str, float] = {}
        self._stack: list[tuple[int, str | None]] = []
        now = time.perf_counter()
        self._t_last = now
        self._step_start = now
        self._idle_since = now
        self._open = False
        self._timing = False
        self.step_index = 0
        self.step_calls = 0  # manual step() calls
        self.pre_step: Callable[[int], int] | None = None  # returns extra flags for the ending step
        self.post_step: Callable[[int, Any], None] | None = None  # called as the next step opens
        self.step_flags: Callable[[int], int] | None = None  # flags by step index (a what-if's stretch)
        self.ranges: Any = None  # TraceRanges (hooks/track/ranges.py): steps and phases as trace/NVTX ranges
        self._range_depths: list[int] = []  # phase-stack depth each open range was pushed at (-1: the step)
        self._batch_samples: int | None = None
        #: the data wait being measured: (phase-stack depth, perf_counter, thread CPU s, run-queue s) at its start
        self._wait_at: tuple[int, float, float, float] | None = None
        self._wait_count = 0  # data waits entered; every WAIT_SAMPLE-th is measured
        self._thread_times: thread_times.Reader | None = None
        self._close_thread_times: Callable[[], None] | None = None
        self.waits = WaitTotals()
        self.on_waits: Callable[[dict[str, float]], None] | None = None  # the totals, every REPORT_WAITS waits
        #: the warm-up grew after its steps were emitted (see :meth:`step`): the run's metadata must say so
        self.on_warmup: Callable[[int], None] | None = None

    # ------------------------------------------------------------------ core accounting
    def _synced_now(self) -> float:
        assert self._sync is not None
        self._sync()
        return time.perf_counter()

    def _charge(self, now: float) -> None:
        slot, name = self._stack[-1] if self._stack else _NO_PHASE
        dt = now - self._t_last
        self._acc[slot] += dt
        if name is not None:
            self._extra[name] = self._extra.get(name, 0.0) + dt
        self._t_last = now
        if self._timing:
            self.gpu.mark(slot)

    def _open_step(self, start: float) -> None:
        self._open = True
        self._step_start = start
        self._t_last = start
        self._acc = [0.0] * 5
        self._extra = {}
        self._timing = self.gpu.begin_step(start) if self.gpu is not None else False

    def enter(self, slot: int, name: str | None = None) -> None:
        now = self._clock()
        stack = self._stack
        if self._open:  # _charge(now), inline
            top, top_name = stack[-1] if stack else _NO_PHASE
            dt = now - self._t_last
            self._acc[top] += dt
            self._t_last = now
            if top_name is not None:
                self._extra[top_name] = self._extra.get(top_name, 0.0) + dt
            if self._timing:
                self.gpu.mark(top)
        else:
            self._open_step(now)
        stack.append((slot, name))
        if slot == DATA and self._wait_at is None:
            self._begin_wait(len(stack), now)
        ranges = self.ranges
        if ranges is not None and ranges.active:
            ranges.push(name or PHASE_NAMES[slot])
            self._range_depths.append(len(stack))

    def charge_to(self, slot: int) -> None:
        """Charge the time since the last transition to ``slot`` instead of "other" (no phase was open).

        For a phase known only in hindsight: a backward that follows no timed
        forward was preceded by one that ran outside any hooked module.
        """
        if self._open and not self._stack:
            self._stack.append((slot, None))
            self._charge(self._clock())
            self._stack.pop()

    def exit(self) -> None:
        """Leave the innermost phase; nothing to do when none is open (the time since the last transition
        stays "other" either way, charged at the next one)."""
        stack = self._stack
        if not stack:
            return
        now = self._clock()
        if self._open:  # _charge(now), inline
            top, top_name = stack[-1]
            dt = now - self._t_last
            self._acc[top] += dt
            self._t_last = now
            if top_name is not None:
                self._extra[top_name] = self._extra.get(top_name, 0.0) + dt
            if self._timing:
                self.gpu.mark(top)
        wait = self._wait_at
        if wait is not None and wait[0] == len(stack):
            self._end_wait(now, wait)
        if self._range_depths and self._range_depths[-1] == len(stack):
            self._range_depths.pop()
            self.ranges.pop()
        stack.pop()

    def _begin_wait(self, depth: int, now: float) -> None:
        self._wait_count += 1
        if self._wait_count % WAIT_SAMPLE:
            return
        if self._thread_times is None:  # opened here: the reader reads the thread that opened it
            self._thread_times, self._close_thread_times = thread_times.for_this_thread()
        try:
            cpu, queued = self._thread_times()
        except (OSError, ValueError, IndexError):  # closed under us (the run closing), or unreadable
            return
        self._wait_at = (depth, now, cpu, queued)

    def _end_wait(self, now: float, wait: tuple[int, float, float, float]) -> None:
        """A measured data wait ended: how much of it this thread computed (loading in the training process),
        stood in the run queue (a busy host) or was blocked (on workers, storage, the network) -- what a
        prediction of more workers needs (hooks/track/thread_times.py)."""
        self._wait_at = None
        read = self._thread_times
        if read is None:
            return
        try:
            cpu, queued = read()
        except (OSError, ValueError, IndexError):
            return
        totals = self.waits
        totals.waits += 1
        totals.wall_s += now - wait[1]
        totals.cpu_s += cpu - wait[2]
        totals.runnable_s += queued - wait[3]
        if self.on_waits is not None and totals.waits % REPORT_WAITS == 0:
            self.on_waits(totals.as_meta())

    def close_waits(self) -> None:
        """Let go of the thread-time reader (a file descriptor on Linux)."""
        self._wait_at = None
        close, self._close_thread_times, self._thread_times = self._close_thread_times, None, None
        if close is not None:
            close()

    def _close_ranges(self) -> None:
        """End every open range (the step's end; a window may stop right after)."""
        self._range_depths.clear()
        self.ranges.pop_all()

    def step(self, samples: int | None = None, tokens: int | None = None, loss: Any = None,
             manual: bool = True, flags: int = 0) -> None:
        if self._range_depths:
            self._close_ranges()
        if self.pre_step is not None:
            flags |= self.pre_step(self.step_index)  # profiler windows, FLOP counting end here
        now = self._clock()
        if manual:
            if self.step_calls == 0 and self.step_index > 0:
                # the loop's first own step() after iterations the loader took for steps: those were micro-batches
                # of a step accumulated over several (gradient accumulation) -- warm-up, out of the figures
                self.warmup_steps = max(self.warmup_steps, self.step_index + 1)
                if self.on_warmup is not None:
                    self.on_warmup(self.warmup_steps)
            self.step_calls += 1
        if not self._open:
            self._open_step(self._idle_since)
        self._charge(now)
        acc = self._acc
        if samples is None:
            samples = self._batch_samples if self._batch_samples is not None else self.batch_size
        self._batch_samples = None
        row = self._row(self._step_start, now, acc, self._extra, samples, tokens, flags)
        self.step_index += 1
        if self.gpu is not None:
            self.gpu.end_step(row, loss, self._timing)
        else:
            if loss is not None:
                row[LOSS] = loss_value(loss)
            self._emit(row)
        self._open_step(now)  # the next step starts where this one ended
        if self.post_step is not None:
            self.post_step(self.step_index, (samples, tokens))
        ranges = self.ranges
        if ranges is not None and ranges.active:
            ranges.push(f"step#{self.step_index}")
            self._range_depths.append(-1)

    def _row(self, start: float, end: float, acc: list[float], extra: dict[str, float], samples: int | None,
             tokens: int | None, flags: int) -> Row:
        if self.step_flags is not None:
            flags |= self.step_flags(self.step_index)
        return [
            self.step_index,
            clock.from_perf(start),
            clock.from_perf(end),
            acc[DATA], acc[FORWARD], acc[BACKWARD], acc[OPTIMIZER], acc[OTHER],
            samples, tokens, None,
            None, None, None, None, None, None,  # GPU-side times
            None, None, None,  # CUDA memory
            (FLAG_WARMUP if self.step_index < self.warmup_steps else 0) | flags,
            _extra_json(extra) if extra else None,
        ]

    def in_phase(self, slot: int) -> bool:
        """The innermost open phase is ``slot``."""
        return bool(self._stack) and self._stack[-1][0] == slot

    def drop_phases(self) -> None:
        """Forget the open phases (one left open by an exception must not leak into the next step)."""
        self._stack.clear()
        self._wait_at = None

    def measure(self, key: str, seconds: float) -> None:
        """A measurement of the open step kept beside its phases (``@compile``, ``@comm``: '@', not a phase)."""
        self._extra[key] = seconds

    def add_samples(self, n: int) -> None:
        """A batch of ``n`` samples fetched for the open step (several fetches add up)."""
        self._batch_samples = (self._batch_samples or 0) + n

    def snapshot(self) -> tuple[float, list[float], dict[str, float], int | None]:
        """Where the open step stands now: a place it may later be cut at (:meth:`emit_until`)."""
        now = time.perf_counter()
        if self._open:
            self._charge(now)
        return now, list(self._acc), dict(self._extra), self._batch_samples

    def emit_until(self, snap: tuple[float, list[float], dict[str, float], int | None], loss: Any = None) -> None:
        """Emit the part of the open step before ``snap`` as a step of its own; the rest stays open.

        For boundaries known only in hindsight (was that backward an update or
        one micro-batch of several?).  Such steps carry no GPU-side phase times.
        """
        t, acc, extra, samples = snap
        if not self._open or t < self._step_start:
            return
        row = self._row(self._step_start, t, acc, extra, samples, None, 0)
        if loss is not None:
            row[LOSS] = loss_value(loss)
        self.step_index += 1
        self._emit(row)
        self._step_start = t
        self._acc = [max(a - b, 0.0) for a, b in zip(self._acc, acc)]
        self._extra = {k: v - extra.get(k, 0.0) for k, v in self._extra.items() if v - extra.get(k, 0.0) > 0}
        if samples is not None and self._batch_samples is not None:
            self._batch_samples = (self._batch_samples - samples) or None

    def break_step(self) -> None:
        """Discard the open step (an epoch ended): idle time belongs to no step."""
        if self._range_depths:
            self._close_ranges()
        now = time.perf_counter()
        self._open = False
        self._timing = False
        self._idle_since = now
        self._batch_samples = None

    # ------------------------------------------------------------------ DataLoader
    def loader_next(self, first: bool) -> None:
        """Called before fetching a batch; closes the previous step in auto mode."""
        if first:
            if self._open:
                self.break_step()
        elif self.step_calls == 0:
            # the user has not called step(): one iteration of the for loop is one step.  Once they have, their
            # calls make the steps, and iterations between two calls are micro-batches of one step (gradient
            # accumulation: step() once per k batches)
            self.step(manual=False)
        self.enter(DATA)

    def loader_got(self, batch: Any) -> None:
        self.exit()
        n = infer_batch_size(batch)
        if n is not None:
            self.add_samples(n)  # micro-batches of one step add up

    def loader_end(self) -> None:
        self.exit()
        self.break_step()


def _extra_json(extra: dict[str, float]) -> str:
    import json

    return json.dumps({k: round(v, 9) for k, v in extra.items()})


def loss_value(loss: Any) -> float | None:
    try:
        if hasattr(loss, "item"):
            return float(loss.item())
        return float(loss)
    except Exception:
        return None
