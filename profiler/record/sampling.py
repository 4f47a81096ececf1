"""A thread that runs sampling tasks at their own intervals.

Each task is scheduled on a fixed grid (``start + k * interval``) so rates do
not drift, and a task that falls behind skips ticks instead of bursting.  A
task that raises is reported once per distinct error and keeps its schedule:
a sampler problem must never reach the training loop.
"""
from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from gpulens.profiler.store import clock

log = logging.getLogger("gpulens")


@dataclass
class Task:
    name: str
    interval: float
    fn: Callable[[float], None]
    next_due: float = 0.0
    errors: set[str] = field(default_factory=set)
    ticks: int = 0
    busy_s: float = 0.0  # wall time inside fn (NVML calls sleep in the driver, GIL released)
    cpu_s: float = 0.0  # CPU time of this thread inside fn: what sampling costs the host


class SamplerThread:
    def __init__(self, name: str, tasks: list[Task],
                 on_error: Callable[[Task, BaseException], None] | None = None) -> None:
        self.name = name
        self.tasks = tasks
        self._on_error = on_error
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> None:
        start = time.perf_counter()
        for task in self.tasks:
            task.next_due = start
        self._thread.start()

    def stop(self, timeout: float = 5.0, final_tick: bool = True) -> None:
        """Stop, then take one last reading of every task: a short run still gets its end state."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)
        if final_tick and not self._thread.is_alive():
            for task in self.tasks:
                self._run_task(task)

    def _run(self) -> None:
        while not self._stop.is_set():
            now = time.perf_counter()
            for task in self.tasks:
                if now >= task.next_due:
                    self._run_task(task)
                    task.next_due += task.interval
                    after = time.perf_counter()
                    if task.next_due <= after:  # fell behind: skip, don't burst
                        missed = int((after - task.next_due) / task.interval) + 1
                        task.next_due += missed * task.interval
            wait = min(t.next_due for t in self.tasks) - time.perf_counter()
            if wait > 0:
                self._stop.wait(wait)

    def _run_task(self, task: Task) -> None:
        t0 = time.perf_counter()
        c0 = time.thread_time()
        try:
            task.fn(clock.from_perf(t0))
        except Exception as exc:
            key = f"{type(exc).__name__}: {exc}"
            if key not in task.errors:
                task.errors.add(key)
                log.warning("gpulens: %s sampler error (%s); sampling continues", task.name, key)
                if self._on_error is not None:
                    try:
                        self._on_error(task, exc)
                    except Exception:
                        pass
        task.ticks += 1
        task.busy_s += time.perf_counter() - t0
        task.cpu_s += time.thread_time() - c0
