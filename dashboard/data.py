"""The dashboard's only door to runs: ids checked against the runs root, readers and analyses cached.

Every run id arrives from a browser (URL paths, dropdowns, stores), so each one
goes through :func:`run_path`, which refuses anything that is not a plain
directory name directly under the runs root.  Readers stay open between
callbacks (opening a run checks headers and schema), and the expensive part
-- trace analysis, summary and advice -- is computed once per version of a
run's files, on a small thread pool so that a page never waits for another
run's analysis.
"""
from __future__ import annotations

import multiprocessing
import os
import signal
import threading
import time
from collections import OrderedDict
from concurrent.futures import Executor, Future, ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gpulens.profiler import GpulensError, RunError, RunReader, open_run
from gpulens.profiler.analysis.gpus import mean_over_gpus
from gpulens.profiler.analysis.report import Report, WindowError
from gpulens.profiler.analysis.trace.result import TraceAnalysis
from gpulens.profiler.store.reader import Window
from gpulens.profiler.store.runstore import is_run_dir, list_runs, member_dbs, run_dir_in

CONFIG_KEY = "GPULENS_RUNS_ROOT"
#: Set when no root was given: the sample runs, shown while the default root has no runs yet.
FALLBACK_KEY = "GPULENS_SAMPLES_ROOT"
_default_root: Path | None = None
_default_fallback: Path | None = None

#: Analyses an analysis process makes before it is replaced (its peak memory goes back to the system): the
#: pool of processes is replaced after this many per process.  Not ``max_tasks_per_child``: Python 3.11 and
#: 3.12 can stop replacing its processes while work is queued (CPython gh-115634), and every analysis after
#: that waits forever.
TASKS_PER_WORKER = 8
#: A running run's analysis is recomputed at most this often (its files change every flush).
LIVE_ANALYSIS_EVERY_S = 15.0
#: A running run's metadata (status, heartbeat) is re-read at most this often.
REFRESH_EVERY_S = 0.5
#: How often the default root is re-checked for its first run while the sample runs are shown.
ROOT_RECHECK_S = 2.0


def configure(root: Path | str, fallback: Path | str | None = None) -> None:
    """The runs root used outside a Flask app context (tests calling callbacks as functions)."""
    global _default_root, _default_fallback
    _default_root = Path(root)
    _default_fallback = Path(fallback) if fallback is not None else None


@dataclass(frozen=True)
class RootChoice:
    """Where the dashboard looks: ``root``; ``preferred`` is the root it would use once it holds a run."""

    root: Path
    preferred: Path
    fallback: Path | None

    @property
    def showing_samples(self) -> bool:
        return self.fallback is not None and self.root == self.fallback


_has_runs: dict[Path, tuple[bool, float]] = {}


def _holds_runs(root: Path) -> bool:
    """Whether ``root`` has a run yet; once it has, it stays chosen (checked every ROOT_RECHECK_S until then)."""
    hit = _has_runs.get(root)
    now = time.monotonic()
    if hit is not None and (hit[0] or now - hit[1] < ROOT_RECHECK_S):
        return hit[0]
    found = bool(list_runs(root))
    _has_runs[root] = (found, now)
    return found


def root_choice() -> RootChoice:
    preferred, fallback = _configured()
    if fallback is not None and not _holds_runs(preferred):
        return RootChoice(fallback, preferred, fallback)
    return RootChoice(preferred, preferred, fallback)


def _configured() -> tuple[Path, Path | None]:
    try:
        from flask import current_app, has_app_context

        if has_app_context() and CONFIG_KEY in current_app.config:
            fallback = current_app.config.get(FALLBACK_KEY)
            return Path(current_app.config[CONFIG_KEY]), Path(fallback) if fallback else None
    except ImportError:  # pragma: no cover - flask comes with dash
        pass
    if _default_root is None:
        raise GpulensError("the dashboard has no runs root configured")
    return _default_root, _default_fallback


def runs_root() -> Path:
    """The root runs are read from now: the configured one, or the sample runs while it has none."""
    return root_choice().root


def run_path(run_id: Any) -> Path:
    """The directory of ``run_id`` inside the runs root; one-line error for anything else."""
    if not isinstance(run_id, str) or not run_id:
        raise GpulensError("no run selected")
    path = run_dir_in(runs_root(), run_id)  # refuses '..', separators, absolute paths, escaping links
    if not is_run_dir(path):
        raise RunError(run_id, "no such run in this runs root")
    return path


def fingerprint(path: Path) -> tuple:
    """Changes whenever a rank database (or its WAL) changes: the cache key of an analysis."""
    out = []
    for db in member_dbs(path):
        for p in (db, Path(f"{db}-wal")):
            try:
                st = p.stat()
                out.append((p.name, st.st_mtime_ns, st.st_size, st.st_ino))
            except OSError:
                pass
    return tuple(out)


# ---------------------------------------------------------------------- readers
class _Readers:
    """Open readers by run directory, least recently used closed first."""

    def __init__(self, size: int = 24) -> None:
        self.size = size
        self._lock = threading.Lock()
        self._open: OrderedDict[Path, tuple[RunReader, tuple, float]] = OrderedDict()

    def get(self, path: Path) -> RunReader:
        ranks = tuple((p.name, p.stat().st_ino) for p in member_dbs(path))
        with self._lock:
            hit = self._open.get(path)
            if hit is not None and hit[1] == ranks:
                self._open.move_to_end(path)
                reader, _, refreshed = hit
                if reader.info.status == "running" and time.monotonic() - refreshed > REFRESH_EVERY_S:
                    reader.refresh()
                    self._open[path] = (reader, ranks, time.monotonic())
                return reader
            if hit is not None:  # ranks added, or the run was replaced: reopen
                self._open.pop(path)[0].close()
        reader = open_run(path)
        with self._lock:
            self._open[path] = (reader, ranks, time.monotonic())
            while len(self._open) > self.size:
                # not closed here: another request may still be reading it; the GC closes it after
                self._open.popitem(last=False)
        return reader

    def clear(self) -> None:
        with self._lock:
            for reader, _, _ in self._open.values():
                reader.close()
            self._open.clear()


_readers = _Readers()


def reader(run_id: Any) -> RunReader:
    return _readers.get(run_path(run_id))


# ---------------------------------------------------------------------- analyses
@dataclass(frozen=True)
class RunFigures:
    """What the runs page shows of a run: kept for every run of a big root, where whole analyses are kept
    only for the latest (a team store's thousand runs)."""

    steps_per_s: float | None
    samples_per_s: float | None
    gpu_busy: float | None  # NVML busy, the mean over GPUs as the run page's card
    sm_active: float | None
    mfu_pct: float | None

    @classmethod
    def of(cls, report: Report) -> RunFigures:
        return cls(report.throughput.steps_per_s, report.throughput.samples_per_s,
                   mean_over_gpus(report.gpus, "gpu.util"), mean_over_gpus(report.gpus, "gpm.sm_active"),
                   report.mfu.mfu_pct)


@dataclass
class Analysis:
    """A run's report (``gpulens report`` without its suggestions), advice, and per-window kernel analyses."""

    report: Report | None = None
    advice: dict[str, Any] | None = None
    windows: list[tuple[Window, TraceAnalysis]] = field(default_factory=list)
    problems: list[WindowError] = field(default_factory=list)
    error: str | None = None
    seconds: float = 0.0
    broken: bool = False  # the run's files could not be read (RunError), not an analysis bug
    figures: RunFigures | None = None  # the runs page's figures (kept when the report is dropped)


def analyse(path: Path) -> Analysis:
    """Everything ``gpulens report`` computes, for one run; errors become ``Analysis.error``."""
    from gpulens.profiler import RunAnalysis

    t0 = time.perf_counter()
    try:
        with open_run(path) as run:
            analysis = RunAnalysis(run)
            report = analysis.figures
            advice = analysis.advice.as_dict()
            windows = [(a.window, a.analysis) for a in analysis.windows]
            problems = analysis.window_problems
        return Analysis(report, advice, windows, problems, None, time.perf_counter() - t0,
                        figures=RunFigures.of(report))
    except GpulensError as exc:
        return Analysis(error=str(exc), seconds=time.perf_counter() - t0, broken=True)
    except Exception as exc:  # a bug in one analysis must not take the page down
        return Analysis(error=f"analysis failed: {type(exc).__name__}: {exc}", seconds=time.perf_counter() - t0)


def _quiet_worker(dashboard: int) -> None:
    """An analysis process leaves Ctrl-C to the dashboard (which stops it), instead of a traceback each, and
    ends when the dashboard is gone however it went (SIGKILL, a crash: no ``finally`` ran there), instead of
    living on as an orphan that holds its memory.  It imports what an analysis needs as it starts: the first
    analysis a page asks for does not wait for them."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    threading.Thread(target=_exit_with_parent, args=(dashboard,), name="gpulens-parent-watch",
                     daemon=True).start()
    import gpulens.profiler.analysis.run_analysis  # noqa: F401


def _ready() -> None:
    """The task that starts an analysis process ahead of the first analysis (:meth:`_Analyses.warm`)."""


#: How often an analysis process checks that the dashboard that started it still runs.
PARENT_CHECK_S = 1.0


def _exit_with_parent(parent: int) -> None:
    while os.getppid() == parent:  # an orphan is adopted by init (or a subreaper): its parent id changes.
        # ``parent`` comes from the dashboard: read here it could already be init's (killed while we started)
        time.sleep(PARENT_CHECK_S)
    os._exit(0)


def _pool(processes: bool, workers: int) -> Executor:
    """Where analyses run.  Processes by default: an analysis is seconds of Python and numpy, and in the
    server's process it would hold the GIL the request threads need (/healthz waited 1.5 s behind two of
    them) and keep its peak memory there; the pool is replaced after a few analyses per process
    (:data:`TASKS_PER_WORKER`), so that memory goes back too.  Threads where processes cannot be had
    (GPULENS_ANALYSIS_PROCESSES=0)."""
    if processes:
        try:
            return ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                                       initializer=_quiet_worker, initargs=(os.getpid(),))
        except (OSError, ValueError, NotImplementedError):
            pass
    return ThreadPoolExecutor(max_workers=workers, thread_name_prefix="gpulens-analysis")


@dataclass
class _Entry:
    fp: tuple = ()  # fingerprint of the files ``result`` was computed from
    result: Analysis | None = None
    done_at: float = 0.0
    future: Future | None = None
    future_fp: tuple = ()
    queued: bool = False  # waiting for a worker (not submitted yet)


class _Analyses:
    """Analyses by run directory: computed once per version of a run's files however many ask, at most
    ``workers`` at a time, those a page is looking at before those a runs list wants (a root of a
    thousand runs must not make the run someone just opened wait behind all of them)."""

    def __init__(self, size: int = 64, workers: int | None = None, processes: bool | None = None) -> None:
        self.size = size
        if processes is None:
            processes = os.environ.get("GPULENS_ANALYSIS_PROCESSES", "1") != "0"
        self._processes = processes
        # one core left to the server on a small machine; two analyses at once on a larger one
        self._workers = workers or max(1, min(2, (os.cpu_count() or 2) - 1))
        self._pool: Executor | None = None  # started on the first analysis
        self._lock = threading.RLock()  # a future already done runs its callback (which locks) at once
        self._cache: OrderedDict[Path, _Entry] = OrderedDict()
        self._urgent: OrderedDict[Path, tuple] = OrderedDict()  # path -> fingerprint, first come first
        self._later: OrderedDict[Path, tuple] = OrderedDict()
        self._running = 0
        self._pool_tasks = 0  # analyses handed to the current pool
        self.pools_started = 0

    def _collect(self, entry: _Entry) -> None:
        if entry.future is not None and entry.future.done():
            try:
                result = entry.future.result()
            except BrokenProcessPool as exc:  # a worker died (out of memory, killed): a new pool for the next
                result = Analysis(error=f"analysis failed: its process died ({exc})")
                self._pool = None
            except Exception as exc:  # the result could not come back (not picklable, ...)
                result = Analysis(error=f"analysis failed: {type(exc).__name__}: {exc}")
            entry.result, entry.fp, entry.done_at = result, entry.future_fp, time.monotonic()
            entry.future = None

    def get(self, path: Path, wait: float = 0.0, live: bool = False, urgent: bool = True) -> Analysis | None:
        """The analysis of the run's current files, waiting up to ``wait`` s for it (tools and tests; pages
        pass none and poll: a thread held per open page would soon be every thread of the server).

        While a new one is computed the previous one (or None) is returned.  A running run keeps its
        analysis for LIVE_ANALYSIS_EVERY_S before the next one starts, so a live page does not re-analyse
        on every flush.  ``urgent``: a page shows this run (else a list wants it: it waits its turn).
        """
        fp = fingerprint(path)
        with self._lock:
            entry = self._cache.get(path)
            if entry is None:
                entry = self._cache[path] = _Entry()
                self._evict(keep=path)
            self._cache.move_to_end(path)
            self._collect(entry)
            fresh = entry.result is not None and (
                entry.fp == fp or (live and time.monotonic() - entry.done_at < LIVE_ANALYSIS_EVERY_S))
            if fresh:
                return entry.result
            if entry.future is None:
                if urgent and path in self._later:
                    del self._later[path]
                if path not in self._urgent and path not in self._later:
                    (self._urgent if urgent else self._later)[path] = fp
                    entry.queued = True
                self._start_waiting()
            future = entry.future
        if wait > 0:
            deadline = time.monotonic() + wait
            while future is None and time.monotonic() < deadline:  # queued: wait for its turn first
                time.sleep(0.05)
                with self._lock:
                    future = entry.future
            try:
                if future is not None:
                    future.result(timeout=max(0.0, deadline - time.monotonic()))
            except Exception:  # not done in time, or failed: _collect says which
                pass
            with self._lock:
                self._collect(entry)
        return entry.result

    def _start_waiting(self) -> None:
        """Hand queued analyses to the workers, urgent ones first (called with the lock held)."""
        while self._running < self._workers and (self._urgent or self._later):
            queue = self._urgent if self._urgent else self._later
            path, fp = queue.popitem(last=False)
            entry = self._cache.get(path)
            if entry is None or entry.future is not None:
                continue
            pool = self._pool
            if pool is not None and self._processes and self._pool_tasks >= self._workers * TASKS_PER_WORKER:
                pool.shutdown(wait=False)  # what it is analysing finishes; then its processes exit
                pool = None
            if pool is None:
                pool = self._new_pool()
            try:
                future = pool.submit(analyse, path)
            except BrokenProcessPool:  # a worker died since the last analysis: start a new pool
                pool = self._new_pool()
                future = pool.submit(analyse, path)
            except RuntimeError:  # shut down (the interpreter is exiting)
                return
            self._pool_tasks += 1
            entry.future, entry.future_fp, entry.queued = future, fp, False
            self._running += 1
            future.add_done_callback(self._finished)

    def warm(self) -> None:
        """Start the analysis process now (the dashboard calls this as it starts serving): the first page
        opened then finds one ready instead of waiting ~1 s for a new interpreter and its imports, which on a
        small machine cost the page one more poll."""
        with self._lock:
            if self._pool is not None or not self._processes:
                return
            try:
                self._new_pool().submit(_ready)
            except (BrokenProcessPool, RuntimeError):  # cannot start one now: the first analysis will
                self._pool = None

    def _new_pool(self) -> Executor:
        pool = self._pool = _pool(self._processes, self._workers)
        self._pool_tasks = 0
        self.pools_started += 1
        return pool

    def _finished(self, _future: Future) -> None:
        with self._lock:
            self._running -= 1
            self._start_waiting()

    def _evict(self, keep: Path) -> None:
        """Drop the least recently used analyses beyond ``size`` -- never one still being computed or
        waiting for a worker: a big runs root would otherwise evict its own pending work and start it
        again on every refresh."""
        for path in list(self._cache):
            if len(self._cache) <= self.size:
                return
            entry = self._cache[path]
            if path != keep and not entry.queued and (entry.future is None or entry.future.done()):
                del self._cache[path]

    def peek(self, path: Path) -> Analysis | None:
        """The latest finished analysis of the run, if any, without starting one (figures that only refine
        themselves with it: the run page redraws them when its own analysis is done)."""
        with self._lock:
            entry = self._cache.get(path)
            if entry is None:
                return None
            self._collect(entry)
            return entry.result

    def clear(self) -> None:
        with self._lock:
            self._cache.clear()
            self._urgent.clear()
            self._later.clear()

    def shutdown(self, now: bool = False) -> None:
        """Stop the worker processes (they start again with the next analysis); ``now``: without waiting
        for the analyses they are computing (the dashboard stops: Ctrl-C must not wait a minute)."""
        with self._lock:
            pool, self._pool = self._pool, None
            self._cache.clear()
            self._urgent.clear()
            self._later.clear()
        if pool is None:
            return
        if now:
            for proc in list((getattr(pool, "_processes", None) or {}).values()):
                proc.terminate()
        pool.shutdown(wait=not now, cancel_futures=True)
        manager = getattr(pool, "_executor_manager_thread", None)
        if now and manager is not None:
            # the pool's own thread notices the terminated processes and closes its wake-up pipe; exiting while
            # it does so races with the executor's exit hook, which then prints a traceback (CPython < 3.12)
            manager.join(timeout=5.0)


_analyses = _Analyses()


def analysis_if_done(run_id: Any) -> Analysis | None:
    return _analyses.peek(run_path(run_id))


def analysis(run_id: Any, wait: float = 0.0, live: bool = False) -> Analysis | None:
    return _analyses.get(run_path(run_id), wait, live)


def warm_analyses() -> None:
    _analyses.warm()


def shutdown(now: bool = False) -> None:
    """Forget every analysis and stop the analysis processes (tests; ``now``: the dashboard stops)."""
    _analyses.shutdown(now)


def reset() -> None:
    """Forget cached readers and analyses (tests; a runs root that changed under the app)."""
    _readers.clear()
    _analyses.clear()
    with _listed_lock:
        _listed.clear()


# ---------------------------------------------------------------------- runs list
@dataclass
class RunRow:
    id: str
    name: str
    status: str
    status_reason: str | None
    replay: bool
    gpu: str
    start: float | None
    duration_s: float | None
    ranks: int
    error: str | None = None
    analysis: Analysis | None = None


def _light(a: Analysis) -> Analysis:
    """What the runs page shows of an analysis -- throughput, GPU and SM busy, MFU, the top suggestion -- kept for
    every run of a big root (a team store's thousand runs), where whole analyses are kept only for the latest."""
    advice = {"suggestions": ((a.advice or {}).get("suggestions") or [])[:1]}
    return Analysis(None, advice if a.advice is not None else None, error=a.error, seconds=a.seconds,
                    broken=a.broken, figures=a.figures)


@dataclass
class _Listed:
    fp: tuple
    row: RunRow
    light: Analysis | None = None
    light_fp: tuple = ()


_listed: dict[Path, _Listed] = {}
_listed_lock = threading.Lock()


def _row_of(root: Path, path: Path, fp: tuple) -> RunRow:
    """A run's row (its metadata only), read once per version of its files; running runs every time."""
    with _listed_lock:
        hit = _listed.get(path)
    if hit is not None and hit.fp == fp and hit.row.status != "running":
        return hit.row
    try:
        with open_run(run_dir_in(root, path.name)) as run:  # a symlink out of the root is listed as broken
            info = run.info
    except GpulensError as exc:
        return RunRow(path.name, path.name, "broken", str(exc), False, "", None, None, 0, str(exc))
    except OSError as exc:
        return RunRow(path.name, path.name, "broken", str(exc), False, "", None, None, 0,
                      f"{path.name}: cannot read ({exc.strerror or exc})")
    gpus = info.gpus
    names = sorted({str(g.get("name") or "GPU") for g in gpus})
    gpu = f"{names[0]} × {len(gpus)}" if len(names) == 1 else ", ".join(names) if gpus else "CPU only"
    row = RunRow(info.id, info.name, info.status, info.status_reason, info.replay, gpu, info.start, info.duration_s,
                 len(info.ranks))
    with _listed_lock:
        old = _listed.get(path)
        _listed[path] = _Listed(fp, row, old.light if old else None, old.light_fp if old else ())
    return row


def runs(wait: float = 0.0) -> tuple[list[RunRow], bool]:
    """Every run under the root (broken ones with their error) and whether analyses are still pending.

    Analyses are started for all runs at once; the page shows what is done and
    polls for the rest (``wait``, in total, is for tools and tests: a request
    thread never waits for an analysis); once a run's analysis is done,
    what the page shows of it is kept (for every run, however many) until
    its files change, so a refresh of a big root reads only file times.
    """
    root = runs_root()
    rows: list[RunRow] = []
    fps: dict[str, tuple] = {}
    for path in list_runs(root):
        fp = fingerprint(path)
        row = _row_of(root, path, fp)
        fps[row.id] = fp
        rows.append(RunRow(**{**row.__dict__, "analysis": None}))
    deadline = time.monotonic() + wait
    pending = False
    for row in rows:
        if row.error:
            continue
        path = root / row.id
        with _listed_lock:
            hit = _listed.get(path)
        live = row.status == "running"
        if hit is not None and hit.light is not None and (hit.light_fp == fps[row.id] or live):
            row.analysis = hit.light
            if not live:
                continue
        left = max(0.0, deadline - time.monotonic())
        got = _analyses.get(run_dir_in(root, row.id), wait=left, live=live, urgent=False)
        if got is not None:
            row.analysis = _light(got)
            with _listed_lock:
                if path in _listed:
                    _listed[path].light, _listed[path].light_fp = row.analysis, fps[row.id]
        pending = pending or row.analysis is None or live
    return rows, pending
