"""Who else uses the host's CPU: other processes' CPU time, by name.

A training job that shares its node (another user's job, a forgotten
notebook, a compile farm) gets "waits for data" or "slow steps" advice that
misses the cause.  Knowing *who* takes the CPU needs a walk of /proc --
milliseconds on a busy host -- so the host sampler asks for one only while
the host is busier than the run itself, and at most every
``SamplingConfig.others_interval`` seconds -- after a first walk at the
run's start (a baseline) and a second one second after contention is first
seen, so a short contended run names the others too.  Each name comes with
its PIDs: "python train.py" may be the user's own script name.  Processes of this run are left
out: the training process and its children, and other ranks of the same
job (the same command line, e.g. torchrun's siblings) with their children.
"""
from __future__ import annotations

import os

import psutil

from gpulens.profiler.record.proctree import ProcessTree

#: How many names the run's metadata keeps (by CPU used), and PIDs per name.
TOP = 5
PIDS = 8


def display_name(name: str, cmdline: list[str]) -> str:
    """``python3 burn.py`` rather than ``python3``: interpreters are told apart by what they run."""
    if not cmdline or not (name.startswith("python") or name in ("node", "java", "ruby", "perl", "bash", "sh")):
        return name
    args = cmdline[1:]
    for i, arg in enumerate(args):
        if arg in ("-c",):
            return f"{name} -c"
        if arg == "-m" and i + 1 < len(args):
            return f"{name} -m {args[i + 1]}"[:60]
        if not arg.startswith("-"):
            return f"{name} {os.path.basename(arg)}"[:60]
    return name


class OtherProcesses:
    """CPU seconds of the processes outside this run, summed by display name between scans."""

    def __init__(self, tree: ProcessTree, interval: float) -> None:
        self.tree = tree
        self.interval = interval
        self._last_scan = float("-inf")
        self._prev: dict[tuple[int, float], float] = {}  # (pid, create time) -> CPU seconds at the last scan
        self._names: dict[tuple[int, float], str] = {}
        self._cpu_by_name: dict[str, float] = {}
        self._procs_by_name: dict[str, set[int]] = {}
        self._covered = 0.0
        self.scans = 0
        self._sibling: dict[tuple[int, float], bool] = {}  # same command line as ours: another rank
        try:
            self._own_cmdline = tree.root.cmdline()
            self._own_name = tree.root.name()
        except psutil.Error:
            self._own_cmdline, self._own_name = [], ""

    def due(self, t: float) -> bool:
        """A walk is due: the baseline at once, the first CPU deltas a second later, then every ``interval``."""
        if self.scans == 0:
            return True
        return t - self._last_scan >= (min(1.0, self.interval) if self.scans == 1 else self.interval)

    def scan(self, t: float) -> dict[str, object] | None:
        """One walk of /proc; returns the metadata value once two scans give CPU deltas."""
        dt = t - self._last_scan
        self._last_scan = t
        ours = self.tree.pids()
        procs: list[tuple[int, int, str, float, float]] = []  # pid, ppid, name, cpu seconds, create time
        for p in psutil.process_iter(["ppid", "name", "cpu_times", "create_time"]):
            info = p.info
            times = info.get("cpu_times")
            if times is None or info.get("create_time") is None:
                continue
            procs.append((p.pid, info.get("ppid") or 0, info.get("name") or "?",
                          times.user + times.system, info["create_time"]))
        excluded = set(ours)
        siblings = self._same_job(procs, ours)
        excluded |= siblings
        changed = True
        while changed:  # the children of excluded processes (other ranks' DataLoader workers)
            changed = False
            for pid, ppid, *_ in procs:
                if ppid in excluded and pid not in excluded:
                    excluded.add(pid)
                    changed = True
        fresh: dict[tuple[int, float], float] = {}
        for pid, _ppid, name, cpu, created in procs:
            if pid in excluded:
                continue
            key = (pid, created)
            fresh[key] = cpu
            prev = self._prev.get(key)
            if prev is None or self.scans == 0:
                continue
            used = cpu - prev
            if used <= 0:
                continue
            label = self._names.get(key)
            if label is None:
                label = self._names[key] = self._label(pid, name)
            self._cpu_by_name[label] = self._cpu_by_name.get(label, 0.0) + used
            self._procs_by_name.setdefault(label, set()).add(pid)
        self._names = {k: v for k, v in self._names.items() if k in fresh}
        self._prev = fresh
        if self.scans > 0:
            self._covered += dt
        self.scans += 1
        if self._covered <= 0:
            return None
        top = sorted(self._cpu_by_name.items(), key=lambda kv: -kv[1])[:TOP]
        return {"scans": self.scans, "seconds": round(self._covered, 3),
                "cores": round(sum(self._cpu_by_name.values()) / self._covered, 3),
                "top": [{"name": name, "cores": round(cpu / self._covered, 3),
                         "processes": len(self._procs_by_name.get(name, ())),
                         "pids": sorted(self._procs_by_name.get(name, ()))[:PIDS]} for name, cpu in top]}

    def _same_job(self, procs: list[tuple[int, int, str, float, float]], ours: set[int]) -> set[int]:
        """Other ranks of this job: processes running the very same command line (checked once per process)."""
        if not self._own_cmdline:
            return set()
        out = set()
        seen: dict[tuple[int, float], bool] = {}
        for pid, _ppid, name, _cpu, created in procs:
            if pid in ours or name != self._own_name:
                continue
            key = (pid, created)
            same = self._sibling.get(key)
            if same is None:
                try:
                    same = psutil.Process(pid).cmdline() == self._own_cmdline
                except psutil.Error:
                    same = False
            seen[key] = same
            if same:
                out.add(pid)
        self._sibling = seen
        return out

    @staticmethod
    def _label(pid: int, name: str) -> str:
        try:
            return display_name(name, psutil.Process(pid).cmdline())
        except psutil.Error:
            return name
