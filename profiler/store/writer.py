"""The rank's database writer: batched, off the training thread, crash-safe.

Producers (the training thread, sampler threads) only append tuples to
deques -- an atomic, lock-free operation under the GIL -- and a background
thread commits everything that arrived in one transaction every
``flush_interval`` seconds.  The database runs in WAL mode, so readers see a
consistent snapshot while the run is written, and a process killed with
SIGKILL loses at most the last interval.
"""
from __future__ import annotations

import json
import logging
import os
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from gpulens.profiler.store import clock, schema
from gpulens.profiler.store.sink import LiveValues, StepRow, StepTap

log = logging.getLogger("gpulens")

#: Chunks with fewer points than this are merged every COMPACT_EVERY_S seconds (and at close).
SMALL_CHUNK = 1024
COMPACT_EVERY_S = 60.0
#: Rows waiting for the writer thread beyond these are dropped, oldest first, and counted: memory
#: stays bounded however fast steps come, and one flush stays short -- the writer commits ~450k step
#: rows/s alone but ~30k/s behind a loop that never lets go of the GIL, so 10k steps are a third of a
#: second, and a SIGKILL loses under a second of steps at any rate (bench/writer_backlog.py).
MAX_PENDING = {"steps": 10_000, "points": 200_000, "events": 10_000, "bulk": 1_000}
#: Disk space set aside at the start and given back at close, so a run whose disk filled up can still
#: write its final status.
RESERVE_BYTES = 128 << 10
#: How often the writer checks that its database file still exists (one stat).
PRESENCE_CHECK_S = 1.0
#: Errors after which a batch is kept and tried again (the disk may free up), not dropped.
_RETRY_ERRORS = ("disk is full", "disk i/o error", "no space left", "file too large", "quota")

#: Step rows go in up to this many per statement.  sqlite3 lets go of the GIL around every statement it
#: steps, and taking it back waits out the interpreter's switch interval (5 ms) while the training
#: thread runs Python: one row per statement is 200 rows/s at best behind a tight loop, 512 per
#: statement keeps up with any loop (22 columns x 512 = 11,264 parameters, under SQLite's 32,766).
#: A flush's rows go in statements of power-of-two sizes (at most ten), each prepared once and then
#: taken from the connection's statement cache: a statement sized to each flush was parsed anew every
#: time, as much work on the writer's side of the GIL as binding the rows.
ROWS_PER_INSERT = 512
#: ``None`` goes in as ``''`` and ``NULLIF(?, '')`` makes it NULL again inside SQLite: sqlite3 binds str,
#: int and float directly but passes every other value, None included, through its adapter lookup,
#: which raises and formats two AttributeErrors under the GIL (four times a float's cost; a CPU run's
#: step row holds a dozen).  No column holds an empty string (``extra`` is JSON text or NULL).
_STEP_ROW = "(" + ", ".join(["NULLIF(?, '')"] * len(schema.STEP_COLUMNS)) + ")"
_STEP_INSERT = f"INSERT OR REPLACE INTO steps ({', '.join(schema.STEP_COLUMNS)}) VALUES "
_STEP_INSERTS: dict[int, str] = {}  # rows per statement -> its SQL


def _claim(made: Path, path: Path) -> None:
    """Put the finished database ``made`` at ``path``, failing with FileExistsError when the name is taken."""
    try:
        os.link(made, path)
        return
    except FileExistsError:
        raise FileExistsError(f"{path} already exists; each run and rank needs its own database") from None
    except OSError:  # a filesystem without hard links: claim the name, then replace it whole
        pass
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))
    except FileExistsError:
        raise FileExistsError(f"{path} already exists; each run and rank needs its own database") from None
    os.replace(made, path)


class RunWriter:
    """Append-only writer for one rank database.

    Every public method is safe to call from any thread and never touches the
    disk itself; only :meth:`close` blocks (it joins the writer thread).
    """

    def __init__(self, path: Path, meta: dict[str, Any], flush_interval: float = 0.5) -> None:
        self.path = Path(path)
        self.flush_interval = float(flush_interval)
        self._points: deque[tuple[int, float, float]] = deque()
        self._steps: deque[StepRow] = deque()
        self._events: deque[tuple[Any, ...]] = deque()
        self._series_rows: deque[tuple[Any, ...]] = deque()
        self._windows: deque[tuple[Any, ...]] = deque()
        self._bulk: deque[tuple[int, np.ndarray, np.ndarray]] = deque()
        self._flops: deque[tuple[Any, ...]] = deque()
        self._small: dict[int, float] = {}  # series id -> earliest t0 of its not-yet-merged small chunks
        self._last_compact = time.monotonic()
        self._meta_updates: dict[str, Any] = {}
        self._meta_lock = threading.Lock()
        self._series_lock = threading.Lock()
        self._series_ids: dict[tuple[str, int], int] = {}
        self._dropped = 0  # rows lost: not writable (an error other than a full disk)
        self._overflow = {kind: 0 for kind in MAX_PENDING}  # rows dropped because too many were waiting
        self._reported: dict[str, Any] = {}  # what meta "records_lost" said last
        self._failing: tuple[float, str] | None = None  # (since, error) while flushes keep failing
        self._last_error: str | None = None
        self._flushed = threading.Condition()
        self._flush_count = 0
        self._sync_target = 0  # flushes a sync() waits for: the writer does not sleep until they are done
        self._flush_requested = threading.Event()
        self._stop = threading.Event()
        self._closed = False
        #: Taps for live exposition (:meth:`start_exposing`): the latest value per series id, and a
        #: function given every step row.  None (the default) costs one attribute test per record.
        self.latest: dict[int, tuple[float, float]] | None = None
        self.first: dict[int, tuple[float, float]] = {}
        self.step_tap: StepTap | None = None

        #: What the database holds besides rows, to write again into a database made anew (see _recreate).
        self._meta_written: dict[str, Any] = dict(meta)
        self._series_written: list[tuple[Any, ...]] = []
        self._committed = 0  # rows the current database holds
        #: (when, rows lost with it) each time the database file was deleted under the writer and made again
        self.recreated: list[tuple[float, int]] = []
        self._last_presence_check = time.monotonic()
        self._watching = True  # False once a deleted database could not be made again
        self._conn = self._create(meta)
        self._reserve = self.path.with_name(f".{self.path.name}.reserve")
        _set_aside(self._reserve, RESERVE_BYTES)
        self._thread = threading.Thread(target=self._loop, name="gpulens-writer", daemon=True)
        self._thread.start()

    def _create(self, meta: dict[str, Any]) -> sqlite3.Connection:
        """A new database at :attr:`path` holding ``meta``, and its connection.

        It is made whole under a hidden name and then linked into place: a reader (``gpulens report``,
        ``gpulens profile``, the dashboard, another rank's publisher) that lists the run folder in the instant
        a rank starts sees no database or a complete one -- never an empty or unstamped file, which it could
        only call foreign.  The link is also the claim: it fails when the name is taken, so two processes
        claiming one rank cannot both get it."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if os.path.lexists(self.path):
            raise FileExistsError(f"{self.path} already exists; each run and rank needs its own database")
        tmp = self.path.with_name(f".{self.path.name}.creating-{os.getpid()}-{threading.get_ident()}")
        try:
            conn = sqlite3.connect(str(tmp), isolation_level=None)
            try:
                conn.execute("PRAGMA journal_mode=WAL")  # kept in the file's header
                schema.create(conn)
                conn.execute("BEGIN")
                conn.executemany(
                    "INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)",
                    [(k, json.dumps(v)) for k, v in meta.items()],
                )
                conn.execute("COMMIT")
            finally:
                conn.close()  # the last connection: its WAL is checkpointed into the file and removed
            _claim(tmp, self.path)
        finally:
            for suffix in ("", "-wal", "-shm"):
                Path(f"{tmp}{suffix}").unlink(missing_ok=True)
        try:
            conn = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None)
            conn.execute("PRAGMA synchronous=NORMAL")
        except BaseException:
            self.path.unlink(missing_ok=True)  # ours: a database that cannot be written would list as crashed
            raise
        return conn

    def _still_there(self) -> bool:
        """False when the database file is gone (its run folder deleted, say): SQLite would go on writing
        into the unlinked file, and everything recorded would vanish at close without a word."""
        now = time.monotonic()
        if not self._watching or now - self._last_presence_check < PRESENCE_CHECK_S:
            return True
        self._last_presence_check = now
        try:
            os.stat(self.path)  # a file put back in its place by someone else is theirs: left alone
        except FileNotFoundError:
            return False
        except OSError:
            pass
        return True

    def _recreate(self) -> None:
        """Make the deleted database again and go on recording into it, saying so once per deletion."""
        lost, when = self._committed, clock.now()
        recreated = [*self.recreated, (when, lost)]
        meta = {**self._meta_written, "recreated": [{"t": t, "rows_lost": n} for t, n in recreated],
                "records_lost": {**self.lost(), "deleted": sum(n for _, n in recreated)}}
        try:
            conn = self._create(meta)
        except (OSError, sqlite3.Error) as exc:  # its folder cannot be made again: nothing to write into
            self._watching = False
            log.warning("gpulens: %s was deleted while the run was recording and cannot be made again (%s); "
                        "what is recorded from now on is lost", self.path, exc)
            return
        old, self._conn = self._conn, conn
        try:
            old.close()
        except sqlite3.Error:
            pass
        self.recreated = recreated
        log.warning("gpulens: %s was deleted while the run was recording (%s rows with it); recording goes on "
                    "into a new one from %s", self.path, f"{lost:,}", time.strftime("%H:%M:%S",
                                                                                   time.localtime(when)))
        self._reported = meta["records_lost"]
        self._committed = 0
        self._small = {}
        if self._series_written:
            batch = _Batch(list(self._series_written), [], [], [], [], [], [], {})
            self._series_written = []
            self._flush(batch)  # the series ids later points name
        _set_aside(self._reserve, RESERVE_BYTES)

    # ------------------------------------------------------------------ producers
    def series(self, metric: str, gpu: int = -1, unit: str = "", status: str = "ok",
               reason: str | None = None) -> int:
        """Declare a series (idempotent) and return its id for :meth:`point`."""
        key = (metric, int(gpu))
        with self._series_lock:
            sid = self._series_ids.get(key)
            if sid is None:
                sid = len(self._series_ids) + 1
                self._series_ids[key] = sid
                self._series_rows.append(("insert", sid, metric, int(gpu), unit, status, reason))
            elif status != "ok":
                self._series_rows.append(("status", sid, status, reason))
        return sid

    def mark_series(self, metric: str, gpu: int, status: str, reason: str, unit: str = "") -> None:
        """Record that a series is unsupported or failed, with the reason (once)."""
        self.series(metric, gpu, unit, status, reason)

    def series_ids(self) -> dict[tuple[str, int], int]:
        """(metric, gpu) -> series id of every series declared so far."""
        with self._series_lock:
            return dict(self._series_ids)

    def start_exposing(self, step_tap: StepTap | None = None) -> LiveValues:
        """Keep the latest value of every series from now on, and give each step row to ``step_tap``.

        Returns this writer as the :class:`LiveValues` an exposition reads.
        """
        self.latest = {}
        self.step_tap = step_tap
        return self

    def stop_exposing(self) -> None:
        self.step_tap = None
        self.latest = None

    def _bounded(self, kind: str, queue: deque[Any]) -> None:
        """Called before an append: make room in ``queue`` by dropping its oldest row, counted."""
        if len(queue) >= MAX_PENDING[kind]:
            try:
                queue.popleft()
                self._overflow[kind] += 1
            except IndexError:
                pass

    def point(self, sid: int, t: float, value: float) -> None:
        points = self._points
        if len(points) >= MAX_PENDING["points"]:
            self._bounded("points", points)
        points.append((sid, t, value))
        latest = self.latest
        if latest is not None:
            if sid not in latest:
                self.first[sid] = (t, value)  # where counters stood when exposing began (run energy)
            latest[sid] = (t, value)

    def points_bulk(self, sid: int, t: np.ndarray, v: np.ndarray) -> None:
        """Many points of one series at once (importers, benchmarks): one chunk, no per-point cost."""
        self._bounded("bulk", self._bulk)
        self._bulk.append((sid, np.asarray(t, dtype=np.float64), np.asarray(v, dtype=np.float64)))

    def step(self, row: StepRow) -> None:
        """Append a step row, ordered as :data:`schema.STEP_COLUMNS`."""
        steps = self._steps
        if len(steps) >= MAX_PENDING["steps"]:
            self._bounded("steps", steps)
        steps.append(row)
        tap = self.step_tap
        if tap is not None:
            try:
                tap(row)
            except Exception:  # exposition must never cost a step
                self.step_tap = None

    def event(self, kind: str, message: str, gpu: int = -1, data: dict[str, Any] | None = None,
              t: float | None = None) -> None:
        self._bounded("events", self._events)
        self._events.append((t if t is not None else clock.now(), kind, int(gpu), message,
                             json.dumps(data) if data is not None else None))

    def window(self, index: int, first_step: int, last_step: int, t_start: float, t_end: float,
               path: str | None, status: str, error: str | None, trigger: str | None = None) -> None:
        """A profiler window whose trace file (relative to the run directory) is complete; ``trigger``: why it
        ran where not the schedule ("on demand")."""
        self._windows.append((index, first_step, last_step, t_start, t_end, path, status, error, trigger))

    def flops(self, step: int, total: float, by_dtype: dict[str, float], source: str) -> None:
        self._flops.append((step, total, json.dumps(by_dtype), source))

    def meta(self, **values: Any) -> None:
        with self._meta_lock:
            self._meta_updates.update(values)

    def sync(self, timeout: float = 10.0) -> bool:
        """Block until everything queued before this call is committed (tests, the notebook view, an import);
        False if ``timeout`` came first."""
        with self._flushed:
            target = self._flush_count + 2  # the flush under way may have taken its batch before this call
            self._sync_target = max(self._sync_target, target)
            self._flush_requested.set()
            return self._flushed.wait_for(lambda: self._flush_count >= target or self._closed, timeout)

    # ------------------------------------------------------------------ writer thread
    def _loop(self) -> None:
        while not self._stop.is_set():
            # wait for the interval, unless a backlog builds or a sync waits for a second flush: write it now
            waiting = self._flush_count < self._sync_target or len(self._steps) >= MAX_PENDING["steps"] // 2
            if self._failing is not None or not waiting:
                self._flush_requested.wait(self.flush_interval)
            self._flush_requested.clear()
            self._flush_once()
            if time.monotonic() - self._last_compact >= COMPACT_EVERY_S:
                self._compact_once()

    def _flush_once(self) -> bool:
        """Commit what is waiting; False if it could not be written (it waits for the next try, or is lost)."""
        batch = self._take()
        ok = True
        try:
            if not self._still_there():
                self._recreate()
            self._flush(batch)
            if self._failing is not None:
                since, error = self._failing
                self._failing = None
                self.event("write_recovered", f"writing works again after failing since "
                                              f"{time.strftime('%H:%M:%S', time.localtime(since))} ({error})")
        except Exception as exc:  # never let a disk problem kill the thread
            ok = False
            try:
                self._conn.execute("ROLLBACK")
            except sqlite3.Error:
                pass
            message = f"{type(exc).__name__}: {exc}"
            if _retryable(exc):  # a full disk may free up: keep the rows (bounded) for the next try
                self._requeue(batch)
                if self._failing is None:
                    self._failing = (clock.now(), str(exc))
                    log.warning("gpulens: cannot write %s (%s); keeping up to %d steps to retry, dropping older "
                                "ones (counted)", self.path, message, MAX_PENDING["steps"])
            else:  # the rows are lost (counted); the metadata (a final status) is tried again
                self._dropped += batch.rows()
                with self._meta_lock:
                    self._meta_updates = {**batch.meta, **self._meta_updates}
                if message != self._last_error:
                    log.warning("gpulens: cannot write %s (%s); dropping this interval's records",
                                self.path, message)
            self._last_error = message
        with self._flushed:
            self._flush_count += 1
            self._flushed.notify_all()
        return ok

    def _compact_once(self) -> None:
        self._last_compact = time.monotonic()
        try:
            self._compact()
        except Exception as exc:  # compaction is an optimisation: never fatal
            log.debug("gpulens: chunk compaction of %s failed: %s", self.path, exc)
            try:
                self._conn.execute("ROLLBACK")
            except sqlite3.Error:
                pass

    def _compact(self) -> None:
        self._small = compact_chunks(self._conn, self._small)  # on failure the same chunks wait for the next try

    @staticmethod
    def _drain(queue: deque[Any]) -> list[Any]:
        out = []
        for _ in range(len(queue)):
            out.append(queue.popleft())
        return out

    def _take(self) -> _Batch:
        with self._meta_lock:
            meta, self._meta_updates = self._meta_updates, {}
        return _Batch(self._drain(self._series_rows), self._drain(self._points), self._drain(self._bulk),
                      self._drain(self._steps), self._drain(self._events), self._drain(self._windows),
                      self._drain(self._flops), meta)

    def _requeue(self, batch: _Batch) -> None:
        """Put a batch that could not be written back in front of what came since, within the bounds."""
        for queue, rows, kind in ((self._series_rows, batch.series_rows, None), (self._points, batch.points, "points"),
                                  (self._bulk, batch.bulk, "bulk"), (self._steps, batch.steps, "steps"),
                                  (self._events, batch.events, "events"), (self._windows, batch.windows, None),
                                  (self._flops, batch.flops, None)):
            if not rows:
                continue
            if kind is not None:
                room = max(0, MAX_PENDING[kind] - len(queue))
                if len(rows) > room:
                    self._overflow[kind] += len(rows) - room
                    rows = rows[len(rows) - room:] if room else []
            queue.extendleft(reversed(rows))
        with self._meta_lock:
            self._meta_updates = {**batch.meta, **self._meta_updates}

    def lost(self) -> dict[str, int]:
        """Rows that never reached the database (meta ``records_lost``): dropped, oldest first, from a
        backlog over :data:`MAX_PENDING` (``steps``, ``points``, ``events``, ``bulk``), or ``unwritable``."""
        out = {kind: n for kind, n in self._overflow.items() if n}
        if self._dropped:
            out["unwritable"] = self._dropped
        deleted = sum(n for _, n in self.recreated)
        if deleted:
            out["deleted"] = deleted
        return out

    def _flush(self, batch: _Batch) -> None:
        series_rows, points, bulk, steps = batch.series_rows, batch.points, batch.bulk, batch.steps
        events, windows, flops, meta = batch.events, batch.windows, batch.flops, dict(batch.meta)
        meta["heartbeat"] = clock.now()
        lost = self.lost()
        if lost != self._reported:
            meta["records_lost"] = lost

        conn = self._conn
        conn.execute("BEGIN")
        for row in series_rows:
            if row[0] == "insert":
                conn.execute(
                    "INSERT OR IGNORE INTO series (id, metric, gpu, unit, status, reason) "
                    "VALUES (?, ?, ?, ?, ?, ?)", row[1:])
            else:
                conn.execute("UPDATE series SET status = ?, reason = ? WHERE id = ?",
                             (row[2], row[3], row[1]))
        chunks = _chunk_rows(points) if points else []
        chunks += [_chunk(sid, t, v) for sid, t, v in bulk if t.size]
        if chunks:
            conn.executemany(
                "INSERT INTO chunks (series_id, t0, t1, n, t, v) VALUES (?, ?, ?, ?, ?, ?)", chunks)
            conn.executemany(_ROLLUP_UPSERT, _rollup_rows(chunks))
            for sid, t0, _t1, n, _t, _v in chunks:
                if n < SMALL_CHUNK:
                    self._small[sid] = min(self._small.get(sid, np.inf), t0)
        if steps:
            _insert_steps(conn, steps)
            conn.executemany(_STEP_ROLLUP_UPSERT, _step_rollup_rows(steps))
        if events:
            conn.executemany(
                "INSERT INTO events (t, kind, gpu, message, data) VALUES (?, ?, ?, ?, ?)", events)
        if windows:
            conn.executemany(
                "INSERT OR REPLACE INTO windows (id, first_step, last_step, t_start, t_end, path, status, error, "
                "trigger) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", windows)
        if flops:
            conn.executemany("INSERT OR REPLACE INTO flops (step, total, by_dtype, source) VALUES (?, ?, ?, ?)",
                             flops)
        conn.executemany("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)",
                         [(k, json.dumps(v)) for k, v in meta.items()])
        conn.execute("COMMIT")
        self._committed += batch.rows()
        self._series_written += series_rows
        self._meta_written.update(meta)
        if "records_lost" in meta:
            self._reported = meta["records_lost"]
        self._last_error = None

    # ------------------------------------------------------------------ close
    def close(self, **final_meta: Any) -> None:
        """Commit the rest, write the final metadata and leave a single-file database.

        Switching back from WAL to a rollback journal at the end makes a
        finished run one self-contained file that opens read-only anywhere
        (a copied run, a read-only sample_runs/ checkout).  On a full disk
        the space set aside at the start is given back so the final status
        still lands (the run stays a valid WAL database); if even that fails,
        the rows still waiting are dropped, counted, and only the status is
        written.
        """
        if self._closed:
            return
        self.meta(**final_meta)
        self._last_presence_check = float("-inf")  # deleted in the last second: the final flush notices too
        self._stop.set()
        self._flush_requested.set()
        self._thread.join(timeout=30)
        ok = self._flush_once()
        if not ok:
            self._reserve.unlink(missing_ok=True)  # the run's last words need the space more
            ok = self._flush_once()
        if not ok:
            waiting = self._take()
            self._dropped += waiting.rows()
            ok = self._write_meta({**waiting.meta, "records_lost": self.lost()})
        if ok:
            self._compact_once()
        lost = {kind: n for kind, n in self.lost().items() if kind != "deleted"}  # that one was said when seen
        if lost:
            log.warning("gpulens: not everything reached %s: %s", self.path, describe_lost(lost))
        try:
            self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            self._conn.execute("PRAGMA journal_mode=DELETE")
        except sqlite3.Error:
            pass  # a reader holds the WAL open, or the disk is full: it stays a valid WAL database
        self._conn.close()
        self._reserve.unlink(missing_ok=True)
        with self._flushed:
            self._closed = True
            self._flushed.notify_all()

    def _write_meta(self, meta: dict[str, Any]) -> bool:
        """Only metadata, in one small transaction (the final status when nothing else fits)."""
        try:
            self._conn.execute("BEGIN")
            self._conn.executemany("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)",
                                   [(k, json.dumps(v)) for k, v in meta.items()])
            self._conn.execute("COMMIT")
            return True
        except sqlite3.Error as exc:
            try:
                self._conn.execute("ROLLBACK")
            except sqlite3.Error:
                pass
            log.warning("gpulens: could not write the final status of %s (%s): it will read as crashed",
                        self.path, exc)
            return False


@dataclass
class _Batch:
    """Everything one flush takes from the queues."""

    series_rows: list[Any]
    points: list[Any]
    bulk: list[Any]
    steps: list[Any]
    events: list[Any]
    windows: list[Any]
    flops: list[Any]
    meta: dict[str, Any]

    def rows(self) -> int:
        return len(self.points) + len(self.steps) + len(self.events) + sum(int(t.size) for _, t, _ in self.bulk)


def _insert_steps(conn: sqlite3.Connection, steps: Sequence[StepRow]) -> None:
    """Insert ``steps`` in order (a later row for the same step replaces an earlier one)."""
    i, left = 0, len(steps)
    while left:
        size = min(1 << (left.bit_length() - 1), ROWS_PER_INSERT)
        sql = _STEP_INSERTS.get(size)
        if sql is None:
            sql = _STEP_INSERTS[size] = _STEP_INSERT + ", ".join([_STEP_ROW] * size)
        conn.execute(sql, ["" if value is None else value for row in steps[i:i + size] for value in row])
        i, left = i + size, left - size


def describe_lost(lost: dict[str, int]) -> str:
    """``records_lost`` in words: '175,944 steps never written (a full backlog: a full disk, or steps faster
    than the writer), 50,282 rows the database refused'."""
    backlog = [f"{n:,} {kind}" for kind, n in lost.items() if kind not in ("unwritable", "deleted")]
    parts = [f"{', '.join(backlog)} never written (a full backlog: a full disk, or steps faster than the writer)"]
    parts = parts if backlog else []
    if lost.get("unwritable"):
        parts.append(f"{lost['unwritable']:,} rows the database refused")
    if lost.get("deleted"):
        parts.append(f"{lost['deleted']:,} rows deleted with the database file during the run")
    return ", ".join(parts)


def _retryable(exc: BaseException) -> bool:
    text = str(exc).lower()
    return isinstance(exc, (sqlite3.OperationalError, OSError)) and any(e in text for e in _RETRY_ERRORS)


def _set_aside(path: Path, size: int) -> None:
    """Hold ``size`` bytes of the disk in ``path`` (given back at close); nothing if there is no room now."""
    try:
        with open(path, "wb") as fh:
            if hasattr(os, "posix_fallocate"):
                os.posix_fallocate(fh.fileno(), 0, size)
            else:
                fh.write(b"\0" * size)
    except OSError:
        path.unlink(missing_ok=True)


def compact_chunks(conn: sqlite3.Connection, pending: dict[int, float]) -> dict[int, float]:
    """Merge each series' small chunks (one per flush, a few points each) into one; returns the series whose
    chunks are still small (series id -> earliest t0 of them), for the next time.

    A day at 10 Hz flushed every 0.3 s is ~290,000 chunks per series;
    compacted every minute it is ~1,400, so reading a long run is a few
    large BLOBs instead of row-by-row work.  One transaction: a reader
    sees either the small chunks or the merged one, never both.
    """
    small: dict[int, float] = {}
    if not pending:
        return small
    conn.execute("BEGIN")
    try:
        for sid, since in pending.items():
            rows = conn.execute(
                "SELECT rowid, t, v FROM chunks WHERE series_id = ? AND t1 >= ? AND n < ? ORDER BY t0",
                (sid, since, SMALL_CHUNK)).fetchall()
            if len(rows) < 2:
                if rows and len(rows[0][1]) // 8 < SMALL_CHUNK:
                    small[sid] = min(small.get(sid, np.inf), since)
                continue
            t = np.concatenate([np.frombuffer(r[1], dtype=np.float64) for r in rows])
            v = np.concatenate([np.frombuffer(r[2], dtype=np.float64) for r in rows])
            merged = _chunk(sid, t, v)
            conn.executemany("DELETE FROM chunks WHERE rowid = ?", [(r[0],) for r in rows])
            conn.execute("INSERT INTO chunks (series_id, t0, t1, n, t, v) VALUES (?, ?, ?, ?, ?, ?)", merged)
            if merged[3] < SMALL_CHUNK:
                small[sid] = min(small.get(sid, np.inf), merged[1])
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    return small


def step_rollup_upsert() -> str:
    """The statement that merges :func:`_step_rollup_rows` into ``step_rollups`` (the writer's and a mirror's)."""
    return _STEP_ROLLUP_UPSERT


def rollup_upsert() -> str:
    """The statement that merges :func:`_rollup_rows` into ``rollups``."""
    return _ROLLUP_UPSERT


_STEP_ROLLUP_UPSERT = (
    "INSERT INTO step_rollups (level, bucket, n, dur_sum, dur_min, dur_max, data_wait, forward, backward, "
    "optimizer, other, samples) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
    "ON CONFLICT (level, bucket) DO UPDATE SET n = n + excluded.n, dur_sum = dur_sum + excluded.dur_sum, "
    "dur_min = min(dur_min, excluded.dur_min), dur_max = max(dur_max, excluded.dur_max), "
    "data_wait = data_wait + excluded.data_wait, forward = forward + excluded.forward, "
    "backward = backward + excluded.backward, optimizer = optimizer + excluded.optimizer, "
    "other = other + excluded.other, samples = samples + excluded.samples")

_I_START, _I_END = schema.STEP_COLUMNS.index("t_start"), schema.STEP_COLUMNS.index("t_end")
_I_PHASES = [schema.STEP_COLUMNS.index(p) for p in schema.PHASES]
_PHASES = slice(_I_PHASES[0], _I_PHASES[-1] + 1)  # the phase columns follow each other
assert list(range(len(schema.STEP_COLUMNS)))[_PHASES] == _I_PHASES
_I_SAMPLES = schema.STEP_COLUMNS.index("samples")


def _step_rollup_rows(steps: Sequence[StepRow],
                      levels: tuple[int, ...] = schema.ROLLUP_LEVELS) -> list[tuple[Any, ...]]:
    """Step time and phase sums per time bucket: the step panels of a day-long run read these."""
    t_end = np.fromiter((r[_I_END] for r in steps), dtype=np.float64, count=len(steps))
    dur = t_end - np.fromiter((r[_I_START] for r in steps), dtype=np.float64, count=len(steps))
    phases = np.array([r[_PHASES] for r in steps], dtype=np.float64).reshape(-1, 5)
    samples = np.fromiter((r[_I_SAMPLES] or 0 for r in steps), dtype=np.float64, count=len(steps))
    order = np.argsort(t_end, kind="stable")
    t_end, dur, phases, samples = t_end[order], dur[order], phases[order], samples[order]
    rows: list[tuple[Any, ...]] = []
    for level in levels:
        b = np.floor(t_end / level).astype(np.int64)
        starts = np.flatnonzero(np.r_[True, b[1:] != b[:-1]])
        n = np.diff(np.r_[starts, b.size])
        sums = np.add.reduceat(phases, starts, axis=0)
        rows.extend(zip([level] * starts.size, b[starts].tolist(), n.tolist(),
                        np.add.reduceat(dur, starts).tolist(), np.minimum.reduceat(dur, starts).tolist(),
                        np.maximum.reduceat(dur, starts).tolist(), *(sums[:, j].tolist() for j in range(5)),
                        np.add.reduceat(samples, starts).tolist()))
    return rows


_ROLLUP_UPSERT = (
    "INSERT INTO rollups (series_id, level, bucket, vmin, vmax, vsum, n) VALUES (?, ?, ?, ?, ?, ?, ?) "
    "ON CONFLICT (series_id, level, bucket) DO UPDATE SET vmin = min(vmin, excluded.vmin), "
    "vmax = max(vmax, excluded.vmax), vsum = vsum + excluded.vsum, n = n + excluded.n")


def _chunk(sid: int, t: np.ndarray, v: np.ndarray) -> tuple[Any, ...]:
    if t.size > 1 and np.any(np.diff(t) < 0):
        order = np.argsort(t, kind="stable")
        t, v = t[order], v[order]
    return (sid, float(t[0]), float(t[-1]), int(t.size), t.tobytes(), v.tobytes())


def _rollup_rows(chunks: list[tuple[Any, ...]],
                 levels: tuple[int, ...] = schema.ROLLUP_LEVELS) -> list[tuple[Any, ...]]:
    """Per chunk and level: min/max/sum/count per time bucket, merged into the table by upsert."""
    rows: list[tuple[Any, ...]] = []
    for sid, _t0, _t1, _n, t_raw, v_raw in chunks:
        t = np.frombuffer(t_raw, dtype=np.float64)
        v = np.frombuffer(v_raw, dtype=np.float64)
        ok = np.isfinite(v)
        if not ok.all():
            t, v = t[ok], v[ok]
        if t.size == 0:
            continue
        for level in levels:
            b = np.floor(t / level).astype(np.int64)
            starts = np.flatnonzero(np.r_[True, b[1:] != b[:-1]])
            vmin = np.minimum.reduceat(v, starts)
            vmax = np.maximum.reduceat(v, starts)
            vsum = np.add.reduceat(v, starts)
            counts = np.diff(np.r_[starts, v.size])
            rows.extend(zip([sid] * starts.size, [level] * starts.size, b[starts].tolist(), vmin.tolist(),
                            vmax.tolist(), vsum.tolist(), counts.tolist()))
    return rows


def _chunk_rows(points: Iterable[tuple[int, float, float]]) -> list[tuple[Any, ...]]:
    """Group ``(series, t, value)`` points into one chunk row per series."""
    grouped: dict[int, tuple[list[float], list[float]]] = {}
    for sid, t, v in points:
        ts, vs = grouped.setdefault(sid, ([], []))
        ts.append(t)
        vs.append(v)
    return [_chunk(sid, np.asarray(ts, dtype=np.float64), np.asarray(vs, dtype=np.float64))
            for sid, (ts, vs) in grouped.items()]
