"""The reader API: the only way the report, the advisor and the dashboard see a run.

Every method returns plain numpy arrays or dataclasses; nothing here knows
about plots.  A run can be read while it is being written (WAL snapshot
reads), after it crashed (the WAL holds everything up to the last flush), or
after it finished (a single database file per rank).
"""
from __future__ import annotations

import functools
import json
import os
import socket
import sqlite3
import struct
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast
from urllib.parse import quote

import numpy as np

from gpulens.profiler.errors import RunError
from gpulens.profiler.store import schema
from gpulens.profiler.store.members import Entry, resolve
from gpulens.profiler.store.runstore import STORE_ERROR_FILE, member_dbs
from gpulens.profiler.store.schema import SAMPLED_ELSEWHERE

#: A run whose heartbeat is older than this, seen from another host (where
#: the writer's pid cannot be checked), is reported as crashed.
STALE_AFTER_S = 60.0


@dataclass
class Series:
    """One metric of one GPU (or of the host) over a time range."""

    metric: str
    gpu: int
    unit: str
    rank: int
    t: np.ndarray  # float64 epoch seconds, ascending
    v: np.ndarray  # float64

    def __len__(self) -> int:
        return int(self.t.size)


@dataclass
class SeriesView:
    """A series over a range at about the resolution asked for.

    ``kind`` is "raw" (every point: ``v`` set, ``vmin``/``vmax`` None) or
    "buckets" (pre-aggregated: ``t`` is each bucket's start, ``v`` its mean,
    ``vmin``/``vmax`` its extremes, ``level`` its width in seconds).
    """

    metric: str
    gpu: int
    unit: str
    kind: str
    t: np.ndarray
    v: np.ndarray
    vmin: np.ndarray | None = None
    vmax: np.ndarray | None = None
    level: int | None = None

    def __len__(self) -> int:
        return int(self.t.size)


@dataclass
class StepView:
    """Step times over a range: one row per step ("raw") or per time bucket ("buckets").

    ``t`` is the step end (raw) or bucket start (buckets), epoch seconds;
    ``dur`` the step time (mean per bucket), ``dur_min``/``dur_max`` its
    extremes per bucket; ``phases`` the mean seconds per step of each phase
    (data_wait, forward, backward, optimizer, other); ``n`` steps per row.
    """

    rank: int
    kind: str
    t: np.ndarray
    dur: np.ndarray
    dur_min: np.ndarray
    dur_max: np.ndarray
    phases: dict[str, np.ndarray]
    n: np.ndarray
    level: int | None = None

    def __len__(self) -> int:
        return int(self.t.size)


@dataclass(frozen=True)
class SeriesStats:
    """Exact count / mean / min / max of a series over a range (from rollups when there are any)."""

    n: int
    mean: float | None
    vmin: float | None
    vmax: float | None


PHASE_COLUMNS = schema.PHASES  # the phase columns of the steps table

#: A view reads raw points while the range holds at most this many per point asked for.
RAW_PER_POINT = 50


@dataclass(frozen=True)
class SeriesInfo:
    metric: str
    gpu: int
    unit: str
    rank: int
    status: str  # ok | unsupported | failed
    reason: str | None
    count: int
    t_first: float | None
    t_last: float | None


@dataclass
class StepTable:
    """Per-step records of one rank, one numpy array per column of ``steps``."""

    rank: int
    columns: dict[str, np.ndarray]
    extra: list[dict[str, float]] = field(default_factory=list)

    def __len__(self) -> int:
        return int(self.columns["step"].size)

    def __getattr__(self, name: str) -> np.ndarray:
        try:
            return cast(np.ndarray, self.__dict__["columns"][name])
        except KeyError:
            raise AttributeError(name) from None

    @property
    def duration(self) -> np.ndarray:
        return np.asarray(self.columns["t_end"] - self.columns["t_start"])

    def steady(self) -> np.ndarray:
        """Mask of the steps run as the user's loop runs: not warm-up, profiled, compiling or a what-if."""
        if not len(self):
            return np.zeros(0, dtype=bool)
        return np.asarray(self.columns["flags"] == 0)

    def counted(self) -> np.ndarray:
        """Mask of the steps every figure of the run's pace is computed over (report, advisor, compare,
        energy, nodes and ranks): the steady ones, or every step of a run too short to have any -- its
        warm-up is then all the evidence there is, and a figure from it beats none.  One rule, here."""
        steady = self.steady()
        return steady if steady.any() or not len(self) else np.ones(len(self), dtype=bool)


@dataclass(frozen=True)
class Event:
    t: float
    kind: str
    gpu: int
    message: str
    data: dict[str, Any] | None
    rank: int


@dataclass(frozen=True)
class Window:
    """A torch.profiler window of one rank: its steps and its (gzipped) chrome trace."""

    rank: int
    index: int
    first_step: int
    last_step: int
    t_start: float
    t_end: float
    path: Path | None  # absolute path of the trace, None when the window failed
    status: str  # ok | failed | imported
    error: str | None
    trigger: str | None = None  # None: the schedule; "on demand" (gpulens profile, the live page)


@dataclass(frozen=True)
class FlopCount:
    rank: int
    step: int
    total: float
    by_dtype: dict[str, float]
    source: str


@dataclass(frozen=True)
class Node:
    """One machine of a run: its ranks, who sampled its GPUs and host, those GPUs, and how it ended."""

    node_rank: int
    hostname: str
    ranks: list[int]
    sampling_rank: int | None  # the training rank that sampled it; None: a process that trains nothing, or none
    gpus: list[dict[str, Any]]  # the sampler's GPU descriptions (index, name, uuid, ...)
    clock: dict[str, Any] | None = None  # offset_s, uncertainty_s against rank 0 (hooks/track/clocksync.py)
    #: the reader's key of the database holding this node's GPU and host series: ``sampling_rank``, or the
    #: key of the node's sampling process (:func:`node_key`), None when nothing sampled it
    sampler: int | None = None
    status: str = "finished"  # running | finished | crashed | interrupted, over the node's processes
    status_reason: str | None = None

    @property
    def speaker(self) -> int:
        """The key whose series describe this node: its sampler, else its first rank."""
        return self.sampler if self.sampler is not None else self.ranks[0]


def node_key(node_rank: int) -> int:
    """The reader's key of node ``node_rank``'s sampling process (keys of training ranks are their ranks)."""
    return -1 - int(node_rank)


#: Steps averaged into each point of a long run's loss line (see RunReader.loss_view).
LOSS_SAMPLES = 8


@dataclass
class RunInfo:
    id: str
    path: Path
    name: str
    status: str  # running | finished | crashed | interrupted
    status_reason: str | None
    start: float | None
    end: float | None  # end, or last heartbeat for running/crashed runs
    ranks: list[int]
    meta: dict[str, Any]  # the primary rank's metadata (see RunReader.primary_rank)

    @property
    def duration_s(self) -> float | None:
        if self.start is None or self.end is None:
            return None
        return max(0.0, self.end - self.start)

    @property
    def gpus(self) -> list[dict[str, Any]]:
        return list(self.meta.get("gpus") or [])

    @property
    def replay(self) -> bool:
        return bool(self.meta.get("replay"))


_EMPTY = np.empty(0, dtype=np.float64)


class _RankDB:
    """A read-only connection to one rank database, with one-line errors."""

    def __init__(self, rank: int, path: Path) -> None:
        self.rank = rank
        self.path = path
        #: seconds added to this rank's times to put them on rank 0's clock (its node's measured offset)
        self.shift = 0.0
        self._lock = threading.Lock()
        schema.check_header(path)
        _check_not_truncated(path)
        self.conn = _connect_ro(path)
        with self._lock:
            try:
                schema.check_version(self.conn, path)
                rows = self.conn.execute("SELECT key, value FROM meta").fetchall()
            except sqlite3.DatabaseError as exc:
                self.conn.close()
                raise RunError(path, _db_error(exc)) from None
            except ValueError as exc:  # stored text that is not UTF-8
                self.conn.close()
                raise RunError(path, f"corrupt database ({exc})") from None
        try:
            self.meta = _checked_meta(rows)
        except RunError as exc:
            self.conn.close()
            raise RunError(path, exc.message) from None

    def query(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        with self._lock:
            try:
                return self.conn.execute(sql, params).fetchall()
            except sqlite3.DatabaseError as exc:
                raise RunError(self.path, _db_error(exc)) from None

    def has_table(self, name: str) -> bool:
        """Older databases (first sample runs) lack later tables: read those as empty."""
        return bool(self.query("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (name,)))

    def has_column(self, table: str, column: str) -> bool:
        """Older databases lack later columns (``windows.trigger``)."""
        return any(row[1] == column for row in self.query(f"PRAGMA table_info({table})"))

    def reload_meta(self) -> None:
        try:
            self.meta = _checked_meta(self.query("SELECT key, value FROM meta"))
        except RunError as exc:
            raise RunError(self.path, exc.message) from None

    def has_steps(self) -> bool:
        return self.has_table("steps") and bool(self.query("SELECT 1 FROM steps LIMIT 1"))

    @functools.cached_property
    def rollup_levels(self) -> tuple[int, ...]:
        """The rollup levels this database keeps (none in the first sample runs; coarser ones in a mirror)."""
        if not self.has_table("rollups"):
            return ()
        return schema.MIRROR_ROLLUP_LEVELS if self.has_table("mirror_applied") else schema.ROLLUP_LEVELS

    def close(self) -> None:
        with self._lock:
            self.conn.close()


_NUMBER = (int, float)
_OPTIONAL_NUMBER = (int, float, type(None))
_OPTIONAL_STR = (str, type(None))
_OPTIONAL_DICT = (dict, type(None))
#: Types of the metadata keys the readers and analyses rely on: a run whose metadata says otherwise is broken.
_META_TYPES: dict[str, tuple[type, ...]] = {
    "pid": (int, type(None)), "pid_create_time": _OPTIONAL_NUMBER, "start": _OPTIONAL_NUMBER,
    "end": _OPTIONAL_NUMBER, "heartbeat": _OPTIONAL_NUMBER, "status": (str,), "error": _OPTIONAL_STR,
    "name": _OPTIONAL_STR, "host": _OPTIONAL_STR, "rank": (int,), "local_rank": (int,), "world_size": (int,),
    "local_world_size": (int,), "node_rank": (int,), "gpus": (list, type(None)), "nvml": _OPTIONAL_DICT,
    "host_info": _OPTIONAL_DICT,
    "batch_size": _OPTIONAL_NUMBER, "warmup_steps": (int, type(None)), "steps": (int, type(None)),
    "model": _OPTIONAL_DICT, "auto": _OPTIONAL_DICT, "child": _OPTIONAL_DICT, "profile": _OPTIONAL_DICT,
    "sampling": _OPTIONAL_DICT, "batch_probe": _OPTIONAL_DICT, "user_flops": _OPTIONAL_DICT,
    "records_lost": _OPTIONAL_DICT, "optimizers": (list, type(None)), "clock": _OPTIONAL_DICT,
}
#: What a GPU record of the metadata holds (the device sampler and the importer write all of them).
_GPU_FIELDS = ("nvml_index", "name", "uuid", "pci_bus_id", "memory_total", "compute_capability", "sm_count",
               "power_limit_w", "max_sm_clock_mhz", "mig_enabled", "gpm_supported", "gpm_reason")
#: Times (epoch seconds) a run can have: beyond them a datetime cannot be made, so the value is corrupt.
_TIME_KEYS = ("start", "end", "heartbeat", "pid_create_time")
_LATEST_TIME = 1e11  # year 5138


def _checked_meta(rows: list[tuple[Any, ...]]) -> dict[str, Any]:
    """The metadata rows decoded, with the types the readers rely on; RunError (one line) otherwise."""
    meta: dict[str, Any] = {}
    for key, value in rows:
        try:
            meta[str(key)] = json.loads(value)
        except (TypeError, ValueError):
            raise RunError("", f"corrupt metadata: {str(key)[:40]!r} is not valid JSON") from None
    for key, types in _META_TYPES.items():
        value = meta.get(key)
        if key in meta and not isinstance(value, types) or isinstance(value, bool) and bool not in types:
            expected = " or ".join(t.__name__ for t in types)
            raise RunError("", f"corrupt metadata: {key} is {_short(value)}, not {expected}")
    if any(not isinstance(g, dict) or not isinstance(g.get("index", 0), int) for g in meta.get("gpus") or []):
        raise RunError("", "corrupt metadata: gpus is not a list of GPU records")
    for i, g in enumerate(meta.get("gpus") or []):  # a record written short still has every field, unknown
        g.setdefault("index", i)
        for name in _GPU_FIELDS:
            g.setdefault(name, None)
        if not isinstance(g["name"], (str, type(None))):
            raise RunError("", f"corrupt metadata: GPU {g['index']}'s name is {_short(g['name'])}")
        g["name"] = g["name"] or "unknown GPU"
    for key in _TIME_KEYS:
        value = meta.get(key)
        if value is not None and not (0 <= value < _LATEST_TIME):
            raise RunError("", f"corrupt metadata: {key} is {_short(value)}, not a time")
    lost = meta.get("records_lost") or {}
    if not all(isinstance(n, int) and not isinstance(n, bool) for n in lost.values()):
        raise RunError("", "corrupt metadata: records_lost is not a count per kind of record")
    if not all(isinstance(o, dict) for o in meta.get("optimizers") or []):
        raise RunError("", "corrupt metadata: optimizers is not a list of optimizer records")
    return meta


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def corrupt_run_errors(method: Any) -> Any:
    """Decoding and type errors inside a reader method become the run's one-line :class:`RunError`.

    Whatever a damaged or foreign file holds, reading it ends in a valid
    value or in that error -- never in an exception that escapes the one
    run (and takes a runs list or a dashboard page down with it).
    """
    @functools.wraps(method)
    def wrapper(self: RunReader, *args: Any, **kwargs: Any) -> Any:
        try:
            return method(self, *args, **kwargs)
        except RunError:
            raise
        except _DECODE_ERRORS as exc:
            raise RunError(self.path, f"corrupt run data ({type(exc).__name__}: {_short_text(exc)})") from None

    return wrapper


_DECODE_ERRORS = (ValueError, TypeError, KeyError, IndexError, AttributeError, struct.error, OverflowError,
                  sqlite3.Error, MemoryError)


def _short_text(exc: BaseException, limit: int = 160) -> str:
    text = str(exc)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _db_error(exc: sqlite3.DatabaseError) -> str:
    text = str(exc)
    if "malformed" in text or "not a database" in text:
        return f"corrupt or truncated database ({text})"
    if "locked" in text or "busy" in text:
        return f"database busy ({text}); try again"
    return f"cannot read database ({text})"


def _check_not_truncated(path: Path) -> None:
    """Compare the page count in the header with the file size.

    A truncated database often still opens and fails later with "malformed"
    on some query; checking the header up front names the problem exactly.
    Not while a WAL file is there: the pages may live in it (a run whose
    disk filled up mid-checkpoint has a short main file and a complete WAL).
    """
    try:
        if Path(f"{path}-wal").stat().st_size > 32:  # more than a WAL header: frames to read
            return
    except OSError:
        pass
    with open(path, "rb") as fh:
        head = fh.read(100)
    page_size = struct.unpack(">H", head[16:18])[0]
    page_size = 65536 if page_size == 1 else page_size
    change_counter = struct.unpack(">I", head[24:28])[0]
    pages = struct.unpack(">I", head[28:32])[0]
    valid_for = struct.unpack(">I", head[92:96])[0]
    if pages and change_counter == valid_for and page_size:
        size = path.stat().st_size
        if size < pages * page_size:
            raise RunError(path, f"truncated database ({size} bytes, header says {pages * page_size})")


def _connect_ro(path: Path) -> sqlite3.Connection:
    uri = f"file:{quote(os.fsencode(path.resolve()))}?mode=ro"  # bytes: any file name, UTF-8 or not
    try:
        conn = sqlite3.connect(uri, uri=True, timeout=10, check_same_thread=False)
        conn.execute("SELECT 1 FROM sqlite_master LIMIT 1").fetchall()
        return conn
    except sqlite3.OperationalError:
        # A WAL database in a read-only directory without its -shm file:
        # read the main file as immutable instead (a finished or copied run).
        pass
    except sqlite3.DatabaseError as exc:
        raise RunError(path, _db_error(exc)) from None
    except ValueError as exc:  # text in the schema that is not UTF-8
        raise RunError(path, f"corrupt database ({exc})") from None
    try:
        conn = sqlite3.connect(f"{uri}&immutable=1", uri=True, timeout=10, check_same_thread=False)
        conn.execute("SELECT 1 FROM sqlite_master LIMIT 1").fetchall()
        return conn
    except sqlite3.DatabaseError as exc:
        raise RunError(path, _db_error(exc)) from None
    except ValueError as exc:
        raise RunError(path, f"corrupt database ({exc})") from None


def _pid_alive(pid: int, create_time: float | None) -> bool:
    try:
        import psutil

        proc = psutil.Process(pid)
        if create_time is not None and abs(proc.create_time() - create_time) > 2.0:
            return False  # the pid was reused by another process
        return bool(proc.status() != psutil.STATUS_ZOMBIE)
    except Exception:
        return False


def rank_status(meta: dict[str, Any], now: float | None = None,
                hostname: str | None = None) -> tuple[str, str | None]:
    """Effective status of one rank: a 'running' rank whose process is gone crashed."""
    status = meta.get("status", "running")
    if status != "running":
        return status, meta.get("error")
    now = time.time() if now is None else now
    hostname = socket.gethostname() if hostname is None else hostname
    heartbeat = meta.get("heartbeat") or meta.get("start") or 0.0
    pid = meta.get("pid")
    if meta.get("host") == hostname and pid:
        if not _pid_alive(int(pid), meta.get("pid_create_time")):
            return "crashed", f"process {pid} ended without closing the run (killed or crashed)"
        return "running", None
    if now - heartbeat > STALE_AFTER_S:
        return "crashed", f"no heartbeat for {now - heartbeat:.0f} s (writer on {meta.get('host')} gone)"
    return "running", None


def combine_status(states: list[tuple[str, str | None]]) -> tuple[str, str | None]:
    """The status of several processes: running while any runs, else crashed, interrupted, finished."""
    for wanted in ("running", "crashed", "interrupted"):
        for status, reason in states:
            if status == wanted:
                return status, reason
    return (states[0] if states else ("finished", None))


def _level(levels: tuple[int, ...], span: float, max_points: int) -> int | None:
    """The coarsest rollup level that still gives ``max_points / 2`` buckets over ``span`` seconds, the finest
    when none does; None (read raw points) when the database keeps none that fine."""
    if not levels:
        return None
    fitting = [lv for lv in levels if span / lv >= max(max_points // 2, 1)]
    if fitting:
        return fitting[-1]
    return levels[0] if levels[0] == schema.ROLLUP_LEVELS[0] else None


class RunReader:
    """Read access to one run directory (all of its ranks)."""

    def __init__(self, run_dir: str | Path) -> None:
        self.path = Path(run_dir)
        try:  # a run mirrored from a store whose objects there are not gpulens'
            error = (self.path / STORE_ERROR_FILE).read_text()[:300]
        except OSError:
            error = None
        if error is not None:
            raise RunError(self.path, f"broken in its store: {error}")
        dbs = member_dbs(self.path)
        if not dbs:
            raise RunError(self.path, "not a gpulens run (no rank-N.db inside)")
        self._dbs: dict[int, _RankDB] = {}
        opened: list[_RankDB] = []
        try:
            inside = self.path.resolve()
            for db_path in dbs:
                if db_path.resolve().parent != inside:  # a link to a file elsewhere, like a link out of the root
                    raise RunError(db_path, "a symbolic link out of its run directory: refused")
                opened.append(_RankDB(-1, db_path))
            members = resolve([Entry(db.path, db.meta, db.has_steps()) for db in opened])
        except RunError:
            for db in opened:
                db.close()
            raise
        by_path = {db.path: db for db in opened}
        for m in members:  # torch's ranks; a node's sampling process under node_key(node)
            db = by_path[m.path]
            db.rank = m.rank if m.rank is not None else node_key(m.node)
            self._dbs[db.rank] = db
        self._dbs = dict(sorted(self._dbs.items(), key=lambda kv: (kv[0] < 0, abs(kv[0]))))
        self.info = self._make_info()

    # ------------------------------------------------------------------ metadata
    @property
    def ranks(self) -> list[int]:
        """The training ranks, as torch numbers them (a node's process that trains nothing is no rank)."""
        return [key for key in self._dbs if key >= 0]

    def meta(self, rank: int | None = None) -> dict[str, Any]:
        return dict(self._db(rank).meta)

    @corrupt_run_errors
    def nodes(self) -> list[Node]:
        """The machines of the run, by node rank (runs recorded before node ranks existed: one node).

        A node's sampler is the process that recorded its host series: its sampling process when one trained
        nothing (the parent of ``mp.spawn`` ranks), else its local rank 0, which speaks for the node's GPUs
        and host.  Its status combines its processes' (a node whose processes were killed reads crashed while
        the others finished)."""
        by_node: dict[int, list[int]] = {}
        for key, db in self._dbs.items():
            by_node.setdefault(int(db.meta.get("node_rank") or 0) if key >= 0 else -1 - key, []).append(key)
        sampled = {s.rank for s in self.series_list() if s.gpu < 0 and s.metric.startswith("host.")}
        out = []
        for node, keys in sorted(by_node.items()):
            ranks = sorted(k for k in keys if k >= 0)
            processes = [k for k in keys if k < 0]
            sampler = next((k for k in processes + ranks if k in sampled), processes[0] if processes else None)
            speaker = sampler if sampler is not None else ranks[0]
            meta = self._dbs[speaker].meta
            clock = next((self._dbs[k].meta["clock"] for k in keys
                          if isinstance(self._dbs[k].meta.get("clock"), dict)), None)
            status, reason = combine_status([rank_status(self._dbs[k].meta) for k in keys])
            out.append(Node(node, str(meta.get("host") or "?"), ranks,
                            sampler if sampler is not None and sampler >= 0 else None,
                            [dict(g) for g in meta.get("gpus") or []], clock, sampler, status, reason))
        return out

    @corrupt_run_errors
    def step_durations(self, rank: int | None = None) -> np.ndarray:
        """Wall time of every steady step of one rank (not warm-up, not profiled), in step order."""
        rows = self._db(rank).query("SELECT t_end - t_start FROM steps WHERE flags = 0 ORDER BY step")
        return np.asarray([r[0] for r in rows], dtype=np.float64)

    @corrupt_run_errors
    def refresh(self) -> RunInfo:
        """Re-read metadata (status, heartbeat) of a run that is still being written."""
        for db in self._dbs.values():
            db.reload_meta()
        self.info = self._make_info()
        return self.info

    @property
    def primary_rank(self) -> int:
        """The rank read when none is named: the lowest that recorded steps, else the lowest.

        Rank 0 when it trained.  When training ran in child processes
        (``mp.spawn``, hogwild), rank 0 is the parent, which recorded the
        node's samples but no step, and the first child that trained speaks
        for the run.
        """
        return self._primary

    @corrupt_run_errors
    def _align_clocks(self) -> None:
        """Put every rank on rank 0's clock: each node's offset measured against it (hooks/track/clocksync.py)."""
        by_node: dict[int, list[_RankDB]] = {}
        for db in self._dbs.values():
            by_node.setdefault(int(db.meta.get("node_rank") or 0), []).append(db)
        for members in by_node.values():
            clock = next((m.meta["clock"] for m in members if isinstance(m.meta.get("clock"), dict)), None)
            offset = (clock or {}).get("offset_s")
            shift = 0.0
            if isinstance(offset, (int, float)) and not isinstance(offset, bool) and abs(offset) < 86400 \
                    and not (clock or {}).get("reference"):
                shift = -float(offset)
            for m in members:
                m.shift = shift

    def _make_info(self) -> RunInfo:
        self._align_clocks()
        ranks = self.ranks
        self._primary = next((rank for rank in ranks if self._dbs[rank].has_steps()),
                             ranks[0] if ranks else next(iter(self._dbs)))
        first = self._dbs[self._primary].meta
        if (first.get("nvml") or {}).get("reason") == SAMPLED_ELSEWHERE:
            # a rank that did not sample its node: GPUs and driver are those of the process that did
            sampler = next((db.meta for db in self._dbs.values()
                            if (db.meta.get("nvml") or {}).get("reason") != SAMPLED_ELSEWHERE), None)
            if sampler is not None:
                first = {**first, "gpus": sampler.get("gpus") or [], "nvml": sampler.get("nvml")}
        status, reason = self._run_status()
        starts: list[float] = [db.meta["start"] + db.shift for db in self._dbs.values() if db.meta.get("start")]
        ends = []
        for db in self._dbs.values():
            end = db.meta.get("end") or db.meta.get("heartbeat") or db.meta.get("start")
            if end:
                ends.append(end + db.shift)
        return RunInfo(
            id=self.path.name,
            path=self.path,
            name=str(first.get("name") or self.path.name),
            status=status,
            status_reason=reason,
            start=min(starts) if starts else None,
            end=max(ends) if ends else None,
            ranks=ranks,
            meta=first,
        )

    def _run_status(self) -> tuple[str, str | None]:
        """The run's status over its processes; a multi-node run says which nodes crashed."""
        by_node: dict[int, list[tuple[str, str | None]]] = {}
        for key, db in self._dbs.items():
            node = int(db.meta.get("node_rank") or 0) if key >= 0 else -1 - key
            by_node.setdefault(node, []).append(rank_status(db.meta))
        status, reason = combine_status([state for states in by_node.values() for state in states])
        if len(by_node) > 1 and status in ("crashed", "interrupted"):
            bad = [(node, r) for node, states in sorted(by_node.items())
                   for st, r in [combine_status(states)] if st == status]
            if len(bad) < len(by_node):
                node, why = bad[0]
                reason = f"{len(bad)} of {len(by_node)} nodes {status} (node {node}: {why or status})"
        return status, reason

    def _db(self, rank: int | None) -> _RankDB:
        if rank is None:
            return self._dbs[self._primary]
        try:
            return self._dbs[rank]
        except KeyError:
            raise RunError(self.path, f"no rank {rank} in this run (ranks: {self.ranks})") from None

    # ------------------------------------------------------------------ series
    @corrupt_run_errors
    def series_list(self, rank: int | None = None) -> list[SeriesInfo]:
        """Every series declared in the run, with its status and point count."""
        out: list[SeriesInfo] = []
        dbs = [self._db(rank)] if rank is not None else list(self._dbs.values())
        for db in dbs:
            stats = {sid: (n, t0, t1) for sid, n, t0, t1 in db.query(
                "SELECT series_id, SUM(n), MIN(t0), MAX(t1) FROM chunks GROUP BY series_id")}
            for sid, metric, gpu, unit, status, reason in db.query(
                    "SELECT id, metric, gpu, unit, status, reason FROM series ORDER BY gpu, metric"):
                n, t0, t1 = stats.get(sid, (0, None, None))
                if db.shift and t0 is not None and t1 is not None:
                    t0, t1 = t0 + db.shift, t1 + db.shift
                out.append(SeriesInfo(metric, gpu, unit, db.rank, status, reason, int(n or 0), t0, t1))
        return out

    @corrupt_run_errors
    def gpus_recorded(self) -> list[int]:
        return sorted({s.gpu for s in self.series_list() if s.gpu >= 0})

    @corrupt_run_errors
    def series(self, metric: str, gpu: int = -1, rank: int | None = None,
               t0: float | None = None, t1: float | None = None) -> Series | None:
        """Points of one series in ``[t0, t1]`` (whole run by default).

        Returns ``None`` when the run has no such series at all; a series that
        exists but was unsupported comes back empty -- ask
        :meth:`series_list` for the reason.
        """
        hit = self._lookup(metric, gpu, rank)
        if hit is None:
            return None
        db, sid, unit = hit
        lo = -np.inf if t0 is None else float(t0) - db.shift  # in the rank's own clock
        hi = np.inf if t1 is None else float(t1) - db.shift
        chunks = db.query(
            "SELECT t, v FROM chunks WHERE series_id = ? AND t1 >= ? AND t0 <= ? ORDER BY t0",
            (sid, lo if np.isfinite(lo) else -1e300, hi if np.isfinite(hi) else 1e300))
        if chunks:
            t = np.concatenate([np.frombuffer(c[0], dtype=np.float64) for c in chunks])
            v = np.concatenate([np.frombuffer(c[1], dtype=np.float64) for c in chunks])
            if t.size > 1 and np.any(np.diff(t) < 0):
                order = np.argsort(t, kind="stable")
                t, v = t[order], v[order]
            keep = (t >= lo) & (t <= hi)
            if not keep.all():
                t, v = t[keep], v[keep]
        else:
            t, v = _EMPTY, _EMPTY
        return Series(metric, int(gpu), unit, db.rank, t + db.shift if db.shift else t, v)

    @corrupt_run_errors
    def series_view(self, metric: str, gpu: int = -1, t0: float | None = None, t1: float | None = None,
                    max_points: int = 2000, rank: int | None = None) -> SeriesView | None:
        """The series in [t0, t1] at about ``max_points`` resolution, from raw points or rollups.

        Raw points are read while the range holds at most RAW_PER_POINT x
        ``max_points`` of them (a zoom: a few large BLOBs, cheaper than
        thousands of bucket rows); beyond that, the coarsest rollup level that
        still gives ``max_points / 2`` buckets, each at most two pixels wide,
        whose min/max envelope loses nothing visible.  A day-long 10 Hz series
        then costs ~1,500 rows instead of ~900,000 points.  Runs written
        before rollups existed are always read raw.
        """
        hit = self._lookup(metric, gpu, rank)
        if hit is None:
            return None
        db, sid, unit = hit
        lo = -1e300 if t0 is None else float(t0) - db.shift  # in the rank's own clock
        hi = 1e300 if t1 is None else float(t1) - db.shift
        count, first, last = db.query(  # points in range, pro rata for chunks cut by its ends
            "SELECT COALESCE(SUM(CASE WHEN t1 > t0 THEN n * (min(t1, ?2) - max(t0, ?1)) / (t1 - t0) ELSE n END), "
            "0), MIN(t0), MAX(t1) FROM chunks WHERE series_id = ?3 AND t1 >= ?1 AND t0 <= ?2", (lo, hi, sid))[0]
        level = _level(db.rollup_levels, min(hi, last) - max(lo, first) if count else 0.0, max_points) \
            if count > RAW_PER_POINT * max_points else None
        if level is None:
            raw = self.series(metric, gpu, db.rank, t0, t1)
            assert raw is not None
            return SeriesView(metric, int(gpu), unit, "raw", raw.t, raw.v)
        rows = db.query(
            "SELECT bucket, vmin, vmax, vsum, n FROM rollups WHERE series_id = ? AND level = ? "
            "AND bucket >= ? AND bucket <= ? ORDER BY bucket",
            (sid, level, int(np.floor(max(lo, first) / level)), int(np.floor(min(hi, last) / level))))
        arr = np.asarray(rows, dtype=np.float64).reshape(-1, 5)
        return SeriesView(metric, int(gpu), unit, "buckets", arr[:, 0] * level + db.shift,
                          arr[:, 3] / np.maximum(arr[:, 4], 1), arr[:, 1], arr[:, 2], level)

    @corrupt_run_errors
    def series_stats(self, metric: str, gpu: int = -1, rank: int | None = None) -> SeriesStats | None:
        """Whole-run count, mean, min and max, exact and cheap: summed from the coarsest rollups."""
        hit = self._lookup(metric, gpu, rank)
        if hit is None:
            return None
        db, sid, _ = hit
        if db.rollup_levels:
            n, total, lo, hi = db.query(
                "SELECT COALESCE(SUM(n), 0), SUM(vsum), MIN(vmin), MAX(vmax) FROM rollups "
                "WHERE series_id = ? AND level = ?", (sid, db.rollup_levels[-1]))[0]
            return SeriesStats(int(n), total / n if n else None, lo, hi)
        raw = self.series(metric, gpu, db.rank)
        v = raw.v[np.isfinite(raw.v)] if raw is not None else _EMPTY
        if not v.size:
            return SeriesStats(0, None, None, None)
        return SeriesStats(int(v.size), float(v.mean()), float(v.min()), float(v.max()))

    def _lookup(self, metric: str, gpu: int, rank: int | None) -> tuple[_RankDB, int, str] | None:
        """(database, series id, unit) of the first rank holding (metric, gpu), or the given rank's."""
        dbs = [self._db(rank)] if rank is not None else list(self._dbs.values())
        for db in dbs:
            row = db.query("SELECT id, unit FROM series WHERE metric = ? AND gpu = ?", (metric, int(gpu)))
            if row:
                return db, int(row[0][0]), str(row[0][1])
        return None

    # ------------------------------------------------------------------ steps, events
    @corrupt_run_errors
    def steps(self, rank: int | None = None, t0: float | None = None, t1: float | None = None,
              columns: tuple[str, ...] | None = None) -> StepTable:
        """Every step of one rank (in ``[t0, t1]``); ``columns``: only these of :data:`schema.STEP_COLUMNS`
        (``step``, ``t_start``, ``t_end``, ``flags`` and ``extra`` always come: a 64-rank run read for its
        per-rank timings needs a third of the columns)."""
        db = self._db(rank)
        where = ""
        params: tuple[float, ...] = ()
        if t0 is not None or t1 is not None:
            where = " WHERE t_end >= ? AND t_start <= ?"
            params = (-1e300 if t0 is None else t0 - db.shift, 1e300 if t1 is None else t1 - db.shift)
        wanted = set(columns or schema.STEP_COLUMNS) | {"step", "t_start", "t_end", "flags", "extra"}
        cols = tuple(c for c in schema.STEP_COLUMNS if c in wanted)
        rows = db.query(f"SELECT {', '.join(cols)} FROM steps{where} ORDER BY step", params)
        extra_idx = cols.index("extra")
        data: dict[str, np.ndarray] = {}
        by_column = list(zip(*rows)) if rows else [()] * len(cols)  # one transpose, not a pass per column
        for i, name in enumerate(cols):
            if name == "extra":
                continue
            # NULL (None) reads as NaN in a float64 array; anything that is not a number is a corrupt run
            data[name] = np.array(by_column[i], dtype=np.int64 if name in ("step", "flags") else np.float64)
        extra = [json.loads(e) if e else {} for e in by_column[extra_idx]]
        if not all(isinstance(e, dict) for e in extra):
            raise RunError(db.path, "corrupt step records: an extra field is not a JSON object")
        if db.shift:
            data["t_start"] = data["t_start"] + db.shift
            data["t_end"] = data["t_end"] + db.shift
        warmup = db.meta.get("warmup_steps")
        if isinstance(warmup, int) and not isinstance(warmup, bool) and warmup > 0 and len(data["step"]):
            # warm-up found longer after its steps were written (a loop's first step() after the loader took
            # its batches for steps: micro-batches of an accumulated step): the metadata says how long it was
            data["flags"] = np.where(data["step"] < warmup, data["flags"] | schema.FLAG_WARMUP, data["flags"])
        return StepTable(db.rank, data, extra)

    @corrupt_run_errors
    def step_view(self, rank: int | None = None, t0: float | None = None, t1: float | None = None,
                  max_points: int = 2000) -> StepView:
        """Step times in [t0, t1] for plotting: per step, or per rollup bucket when there are too many."""
        db = self._db(rank)
        lo = -1e300 if t0 is None else float(t0) - db.shift  # in the rank's own clock
        hi = 1e300 if t1 is None else float(t1) - db.shift
        level = None
        if db.has_table("step_rollups"):
            first = db.query("SELECT step, t_end FROM steps WHERE t_end >= ? ORDER BY t_end LIMIT 1", (lo,))
            last = db.query("SELECT step, t_end FROM steps WHERE t_end <= ? ORDER BY t_end DESC LIMIT 1", (hi,))
            if first and last and last[0][0] - first[0][0] + 1 > RAW_PER_POINT * max_points:
                level = _level(db.rollup_levels, last[0][1] - first[0][1], max_points)
        if level is None:
            rows = db.query(
                f"SELECT t_end, t_end - t_start, {', '.join(PHASE_COLUMNS)} FROM steps "
                "WHERE t_end >= ? AND t_end <= ? ORDER BY t_end", (lo, hi))
            arr = np.asarray(rows, dtype=np.float64).reshape(-1, 2 + len(PHASE_COLUMNS))
            return StepView(db.rank, "raw", arr[:, 0] + db.shift, arr[:, 1], arr[:, 1], arr[:, 1],
                            {p: arr[:, 2 + i] for i, p in enumerate(PHASE_COLUMNS)},
                            np.ones(arr.shape[0], dtype=np.int64))
        rows = db.query(
            f"SELECT bucket, n, dur_sum, dur_min, dur_max, {', '.join(PHASE_COLUMNS)} FROM step_rollups "
            "WHERE level = ? AND bucket >= ? AND bucket <= ? ORDER BY bucket",
            (level, int(max(np.floor(lo / level), -2**62)), int(min(np.floor(hi / level), 2**62))))
        arr = np.asarray(rows, dtype=np.float64).reshape(-1, 5 + len(PHASE_COLUMNS))
        n = np.maximum(arr[:, 1], 1)
        return StepView(db.rank, "buckets", arr[:, 0] * level + db.shift, arr[:, 2] / n, arr[:, 3], arr[:, 4],
                        {p: arr[:, 5 + i] / n for i, p in enumerate(PHASE_COLUMNS)},
                        arr[:, 1].astype(np.int64), level)

    @corrupt_run_errors
    def events(self, rank: int | None = None, kind: str | None = None) -> list[Event]:
        dbs = [self._db(rank)] if rank is not None else list(self._dbs.values())
        out: list[Event] = []
        for db in dbs:
            sql = "SELECT t, kind, gpu, message, data FROM events"
            params: tuple[Any, ...] = ()
            if kind:
                sql += " WHERE kind = ?"
                params = (kind,)
            for t, k, gpu, message, data in db.query(sql + " ORDER BY t", params):
                out.append(Event(t + db.shift, k, gpu, message, json.loads(data) if data else None, db.rank))
        return sorted(out, key=lambda e: e.t)

    @corrupt_run_errors
    def windows(self, rank: int | None = None) -> list[Window]:
        """Profiler windows of one rank (or all), oldest first."""
        dbs = [self._db(rank)] if rank is not None else list(self._dbs.values())
        out: list[Window] = []
        for db in dbs:
            if not db.has_table("windows"):
                continue
            # runs recorded before on-demand windows have no trigger column: their windows were all scheduled
            trigger_col = "trigger" if db.has_column("windows", "trigger") else "NULL"
            for wid, first, last, t0, t1, path, status, error, trigger in db.query(
                    "SELECT id, first_step, last_step, t_start, t_end, path, status, error, "
                    f"{trigger_col} FROM windows ORDER BY id"):
                full = None
                if path:
                    full = (self.path / path).resolve()
                    if self.path.resolve() not in full.parents:  # never follow a path out of the run
                        full, status, error = None, "failed", f"trace path {path!r} leaves the run directory"
                out.append(Window(db.rank, wid, first, last, t0 + db.shift, t1 + db.shift, full, status, error,
                                  trigger if isinstance(trigger, str) else None))
        return out

    @corrupt_run_errors
    def loss_view(self, rank: int | None = None, t0: float | None = None, t1: float | None = None,
                  max_points: int = 2000) -> tuple[np.ndarray, np.ndarray]:
        """(step end, loss) of the steps that recorded a loss in [t0, t1].

        Up to 4 x ``max_points`` steps every loss is read.  Beyond, each point is the mean of
        ``LOSS_SAMPLES`` steps spread evenly over its stretch, read by step number (a day-long run's
        432,000 steps cost ~10,000 primary-key lookups, not a scan: the loss is a trend, and a mean of
        evenly spread steps draws it).  A run that logs its loss only every so many steps, which such a
        sample would mostly miss, is averaged per time bucket over all its rows instead.
        """
        db = self._db(rank)
        t, v = self._loss_view(db, -1e300 if t0 is None else float(t0) - db.shift,
                               1e300 if t1 is None else float(t1) - db.shift, max_points)
        return (t + db.shift if db.shift else t), v

    def _loss_view(self, db: _RankDB, lo: float, hi: float, max_points: int) -> tuple[np.ndarray, np.ndarray]:
        first = db.query("SELECT step FROM steps WHERE t_end >= ? ORDER BY t_end LIMIT 1", (lo,))
        last = db.query("SELECT step FROM steps WHERE t_end <= ? ORDER BY t_end DESC LIMIT 1", (hi,))
        if not first or not last or last[0][0] < first[0][0]:
            return np.zeros(0), np.zeros(0)
        a, b = int(first[0][0]), int(last[0][0])
        if b - a + 1 <= 4 * max_points:
            rows = db.query("SELECT t_end, loss FROM steps WHERE step >= ? AND step <= ? AND loss IS NOT NULL "
                            "ORDER BY step", (a, b))
            arr = np.asarray(rows, dtype=np.float64).reshape(-1, 2)
            return arr[:, 0], arr[:, 1]
        picks = np.unique(np.linspace(a, b, max_points * LOSS_SAMPLES).astype(np.int64))
        rows = db.query("SELECT step, t_end, loss FROM steps WHERE step IN (SELECT value FROM json_each(?)) "
                        "AND loss IS NOT NULL ORDER BY step", (json.dumps(picks.tolist()),))
        if len(rows) >= 0.1 * picks.size:
            arr = np.asarray(rows, dtype=np.float64).reshape(-1, 3)
            group = np.searchsorted(np.linspace(a, b + 1, max_points + 1), arr[:, 0], side="right") - 1
            starts = np.flatnonzero(np.r_[True, group[1:] != group[:-1]])
            counts = np.diff(np.r_[starts, group.size])
            return np.add.reduceat(arr[:, 1], starts) / counts, np.add.reduceat(arr[:, 2], starts) / counts
        span = db.query("SELECT MIN(t_end), MAX(t_end) FROM steps WHERE step >= ? AND step <= ? "
                        "AND loss IS NOT NULL", (a, b))
        t_first, t_last = span[0] if span else (None, None)
        if t_first is None:
            return np.zeros(0), np.zeros(0)
        width = max((t_last - t_first) / max(max_points, 1), 1e-9)
        rows = db.query("SELECT AVG(t_end), AVG(loss) FROM steps WHERE step >= ? AND step <= ? AND loss IS NOT NULL "
                        "GROUP BY CAST((t_end - ?) / ? AS INTEGER) ORDER BY 1", (a, b, t_first, width))
        arr = np.asarray(rows, dtype=np.float64).reshape(-1, 2)
        return arr[:, 0], arr[:, 1]

    @corrupt_run_errors
    def step_span(self, step: int, rank: int | None = None) -> tuple[float, float] | None:
        """(t_start, t_end) of one step, or None when it was not recorded."""
        db = self._db(rank)
        rows = db.query("SELECT t_start, t_end FROM steps WHERE step = ? LIMIT 1", (int(step),))
        return (float(rows[0][0]) + db.shift, float(rows[0][1]) + db.shift) if rows else None

    @corrupt_run_errors
    def flops(self, rank: int | None = None) -> list[FlopCount]:
        dbs = [self._db(rank)] if rank is not None else list(self._dbs.values())
        out: list[FlopCount] = []
        for db in dbs:
            if not db.has_table("flops"):
                continue
            for step, total, by_dtype, source in db.query(
                    "SELECT step, total, by_dtype, source FROM flops ORDER BY step"):
                out.append(FlopCount(db.rank, step, total, json.loads(by_dtype), source))
        return out

    # ------------------------------------------------------------------ lifecycle
    def close(self) -> None:
        for db in self._dbs.values():
            db.close()

    def __enter__(self) -> RunReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __iter__(self) -> Iterator[SeriesInfo]:
        return iter(self.series_list())


def open_run(path: str | Path) -> RunReader:
    """Open a run directory for reading; raises :class:`RunError` with one line."""
    return RunReader(path)
