"""The training process and its children (DataLoader workers), cached.

Listing children walks all of /proc, which costs milliseconds on a busy
host; doing that at 10 Hz would cost the training loop.  The list is
refreshed every ``refresh_s`` seconds and the per-process readings in between
use the cached ``psutil.Process`` objects.
"""
from __future__ import annotations

import os
import time

import psutil


class ProcessTree:
    def __init__(self, pid: int | None = None, refresh_s: float = 1.0) -> None:
        self.root = psutil.Process(pid or os.getpid())
        self.refresh_s = refresh_s
        self._children: dict[int, psutil.Process] = {}
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
            self._children = {p.pid: known.get(p.pid, p) for p in fresh}
        return self._children

    def forget(self, pid: int) -> None:
        self._children.pop(pid, None)

    def pids(self) -> set[int]:
        return {self.root.pid, *self.children().keys()}
