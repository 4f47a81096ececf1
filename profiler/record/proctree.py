"""The training process and its children (DataLoader workers, compile workers, subprocesses), cached.

Listing children walks all of /proc, which costs milliseconds on a busy
host; doing that at 10 Hz would cost the training loop.  The list is
refreshed every ``refresh_s`` seconds and the per-process readings in between
use the cached ``psutil.Process`` objects.

Children that train (``mp.spawn`` ranks, hogwild processes) are ranks of
the run, not workers: each leaves a file named after its pid in the run's
``trainers/`` directory (:data:`TRAINERS_DIR`), and :meth:`workers` leaves
them out.

DataLoader workers are the processes a DataLoader says it started
(:func:`note_loader_workers`, called by gpulens' hook on the loader's
multiprocessing iterator; a child rank announces its loaders' workers in the
run's ``loader_workers/`` directory) and their descendants: torch.compile's
compiler processes, a g++ it runs, a subprocess the script starts are children
too, but they load no data (:meth:`ProcessTree.other_children`).
"""
from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Iterable
from pathlib import Path

import psutil

#: Directory of a run where child processes that train announce their pids.
TRAINERS_DIR = "trainers"
#: Directory of a run where child ranks announce their DataLoader workers' pids.
LOADERS_DIR = "loader_workers"

log = logging.getLogger("gpulens")
_loader_lock = threading.Lock()
_loader_pids: set[int] = set()
_announce_dir: Path | None = None


def note_loader_workers(pids: Iterable[int]) -> None:
    """A DataLoader started these worker processes (and, in a child rank, tell the node's sampler)."""
    fresh = [int(pid) for pid in pids if pid]
    with _loader_lock:
        _loader_pids.update(fresh)
        folder = _announce_dir
    if folder is not None:
        try:
            folder.mkdir(exist_ok=True)
            for pid in fresh:
                (folder / str(pid)).touch()
        except OSError:
            pass


def announce_loader_workers_in(run_dir: Path | None) -> None:
    """This process is a child rank of the run in ``run_dir``: its loaders' workers are announced there."""
    global _announce_dir
    with _loader_lock:
        _announce_dir = run_dir / LOADERS_DIR if run_dir is not None else None


def announce_trainer(run_dir: Path) -> None:
    """This child process is a rank of the run in ``run_dir``, not a DataLoader worker: the parent's sampler
    reads ``trainers/`` and leaves it out of the workers (its DataLoaders' workers are announced too)."""
    announce_loader_workers_in(run_dir)
    try:
        (run_dir / TRAINERS_DIR).mkdir(exist_ok=True)
        (run_dir / TRAINERS_DIR / str(os.getpid())).touch()
    except OSError as exc:
        log.debug("gpulens: could not announce this child as a rank: %s", exc)

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
        self._parents: dict[int, int] = {}  # pid -> parent pid, read once per child
        self._loaders: set[int] = set()  # children that are DataLoader workers or their descendants
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
            self._trainers = self._list_pids(TRAINERS_DIR)
            self._loaders = self._find_loaders()
        return self._children

    def _find_loaders(self) -> set[int]:
        with _loader_lock:
            announced = _loader_pids | self._list_pids(LOADERS_DIR)
        if not announced:
            return set()
        for pid, proc in self._children.items():
            if pid not in self._parents:
                try:
                    self._parents[pid] = proc.ppid()
                except psutil.Error:
                    self._parents[pid] = -1
        self._parents = {pid: parent for pid, parent in self._parents.items() if pid in self._children}
        found: set[int] = set()
        for pid in self._children:
            at, hops = pid, 0
            while at in self._children and hops < 64:
                if at in announced:
                    found.add(pid)
                    break
                at, hops = self._parents.get(at, -1), hops + 1
        return found

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
        """The DataLoader workers (and what they started) among the children."""
        children = self.children()
        return {pid: p for pid, p in children.items() if pid in self._loaders and pid not in self._trainers}

    def other_children(self) -> dict[int, psutil.Process]:
        """The children that neither train nor load data: compile workers, a compiler, the script's subprocesses."""
        children = self.children()
        return {pid: p for pid, p in children.items() if pid not in self._loaders and pid not in self._trainers}

    def _list_pids(self, name: str) -> set[int]:
        if self.trainers_dir is None:
            return set()
        try:
            return {int(entry) for entry in os.listdir(self.trainers_dir.parent / name) if entry.isdigit()}
        except OSError:
            return set()

    def forget(self, pid: int) -> None:
        self._children.pop(pid, None)

    def pids(self) -> set[int]:
        return {self.root.pid, *self.children().keys()}
