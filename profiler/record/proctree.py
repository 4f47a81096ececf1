"""The training process and its children (DataLoader workers), cached.

Listing children walks all of /proc, which costs milliseconds on a busy
host; doing that at 10 Hz would cost the training loop.  The list is
refreshed every ``refresh_s`` seconds and the per-process readings in between
use the cached ``psutil.Process`` objects.

Children that train (``mp.spawn`` ranks, hogwild processes) are ranks of
the run, not workers: each leaves a file named after its pid in the run's
``trainers/`` directory (:data:`TRAINERS_DIR`), and :meth:`workers` leaves
them out.
"""
from __future__ import annotations

import os
import time
from pathlib import Path

import psutil

#: Directory of a run where child processes that train announce their pids.
TRAINERS_DIR = "trainers"
#: What multiprocessing's helper processes run (``python -c 'from multiprocessing.resource_tracker import
#: main;main(5)'``): a DataLoader with a spawn context, or a process pool, starts one.
_HELPERS = ("multiprocessing.resource_tracker", "multiprocessing.forkserver", "multiprocessing.semaphore_tracker")


class ProcessTree:
    def __init__(self, pid: int | None = None, refresh_s: float = 1.0, trainers: Path | None = None) -> None:
        self.root = psutil.Process(pid or os.getpid())
        self.refresh_s = refresh_s
        self.trainers_dir = trainers
        self._children: dict[int, psutil.Process] = {}
        self._trainers: set[int] = set()
        self._helpers: dict[int, bool] = {}  # pid -> a multiprocessing helper (see _is_helper)
        self._listed_at = -1e9

    def children(self) -> dict[int, psutil.Process]:
        now = time.monotonic()
        if now - self._listed_at >= self.refresh_s:
            self._listed_at = now
            try:
                fresh = self.root.children(recursive=True)
            except psutil.Error:
                fresh = []
            known = self._children
            # keep existing objects: psutil caches per-object state (cpu times)
            self._children = {p.pid: known.get(p.pid, p) for p in fresh if not self._is_helper(p)}
            self._trainers = self._list_trainers()
        return self._children

    def _is_helper(self, proc: psutil.Process) -> bool:
        """multiprocessing's own helpers (the resource tracker every spawn start makes, a forkserver):
        children that neither train nor load data.  Each child's command line is read once."""
        pid = proc.pid
        if pid in self._children:
            return False
        if pid not in self._helpers:
            try:
                cmdline = " ".join(proc.cmdline()[-4:])
            except psutil.Error:
                cmdline = ""
            self._helpers[pid] = any(h in cmdline for h in _HELPERS)
        return self._helpers[pid]

    def workers(self) -> dict[int, psutil.Process]:
        """The children that are not ranks of the run themselves: DataLoader and compile workers."""
        children = self.children()
        if not self._trainers:
            return children
        return {pid: p for pid, p in children.items() if pid not in self._trainers}

    def _list_trainers(self) -> set[int]:
        if self.trainers_dir is None:
            return set()
        try:
            return {int(name) for name in os.listdir(self.trainers_dir) if name.isdigit()}
        except OSError:
            return set()

    def forget(self, pid: int) -> None:
        self._children.pop(pid, None)

    def pids(self) -> set[int]:
        return {self.root.pid, *self.children().keys()}
