"""A rank database as Parquet segments: what is new since the last round, and how a mirror puts it back together.

A run store holds, per run and per recording process, the rows that process added, as immutable Parquet
files any Parquet reader opens (DuckDB, pyarrow / pandas, Spark)::

    <store>/<run id>/rank=<r>/<table>/<first>-<last>.parquet   steps, points, events: rows added, in rounds
    <store>/<run id>/rank=<r>/<table>/current.parquet          meta, series, windows, flops: small, replaced whole
    <store>/<run id>/rank=<r>/traces/<file>                    profiler traces, each sent once
    <store>/_index/<run id>/rank=<r>.parquet                    the process's metadata again, for listing

(a node's sampling process that trains nothing -- the parent of ``mp.spawn`` ranks -- publishes under
``node=<n>/``).  Every append table counts its segments from 1 without gaps; a file covers the counts
``first..last`` (one round, or several merged by the publisher), and each row carries ``_seq``, the count it
was sent with, so a mirror applies exactly the rows past what it holds, whichever overlapping files it sees.
Every row also carries ``run``, ``node`` and ``rank`` (null for a node's sampler), so a query over a whole
store needs no path parsing.

The functions here are the format: :func:`export_new` (a database and an :class:`ExportState` -> the rows
to send), :func:`encode` / :func:`decode` (rows <-> Parquet bytes, with the checks that tell a foreign or
damaged file apart) and :class:`MirrorDB` (segments -> a database the reader opens).  Moving files is the
publisher's and the mirror's business.
"""
from __future__ import annotations

import hashlib
import io
import json
import sqlite3
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from gpulens.profiler.store import schema
from gpulens.profiler.store.writer import (
    _chunk,
    _insert_steps,
    _rollup_rows,
    _step_rollup_rows,
    compact_chunks,
    rollup_upsert,
    step_rollup_upsert,
)

FORMAT = 1
#: Key of the JSON that every segment carries in its Parquet metadata: format, table, counts, identity.
META_KEY = b"gpulens.segment"
#: The store's index: every process's current metadata again, under one prefix, so a store of a thousand runs
#: lists in a request or two (``gpulens ls``) instead of every object of every run.  Run ids never start
#: with ``_``.
INDEX_PREFIX = "_index"
APPEND_TABLES = ("steps", "points", "events")
SNAPSHOT_TABLES = ("meta", "series", "windows", "flops")
TABLES = APPEND_TABLES + SNAPSHOT_TABLES
CURRENT = "current.parquet"
#: Steps at or above the first not yet sent are read again each round; the ones already sent among them
#: are remembered.  A step that never comes (dropped from a full backlog) stops holding the line once this
#: many later steps were sent.
MAX_STEPS_AHEAD = 1000


def _pa() -> Any:
    try:
        import pyarrow as pa
    except ImportError:
        from gpulens.profiler.errors import GpulensError

        raise GpulensError("run stores need pyarrow: pip install 'gpulens[store]'") from None
    return pa


def _columns(table: str) -> list[tuple[str, str]]:
    """(name, type) of a table's own columns; types are names of pyarrow factories."""
    if table == "steps":
        ints = {"step", "samples", "tokens", "mem_allocated", "mem_reserved", "mem_peak", "flags"}
        return [(c, "int64" if c in ints else "string" if c == "extra" else "float64") for c in schema.STEP_COLUMNS]
    return {
        "points": [("metric", "string"), ("gpu", "int32"), ("t", "float64"), ("value", "float64")],
        "events": [("id", "int64"), ("t", "float64"), ("kind", "string"), ("gpu", "int32"), ("message", "string"),
                   ("data", "string")],
        "meta": [("key", "string"), ("value", "string")],
        "series": [("id", "int64"), ("metric", "string"), ("gpu", "int32"), ("unit", "string"), ("status", "string"),
                   ("reason", "string")],
        "windows": [("id", "int64"), ("first_step", "int64"), ("last_step", "int64"), ("t_start", "float64"),
                    ("t_end", "float64"), ("path", "string"), ("status", "string"), ("error", "string"),
                    ("trigger", "string")],
        "flops": [("step", "int64"), ("total", "float64"), ("by_dtype", "string"), ("source", "string")],
    }[table]


#: Columns every row carries besides its table's own (``_seq`` only in append tables).
IDENTITY = [("run", "string"), ("node", "int32"), ("rank", "int32")]


def arrow_schema(table: str) -> Any:
    pa = _pa()
    cols = _columns(table) + IDENTITY + ([("_seq", "int64")] if table in APPEND_TABLES else [])
    fields = []
    for name, kind in cols:
        if (table, name) in _DICTIONARY:  # repeated names: stored once per file, read as text everywhere
            fields.append(pa.field(name, pa.dictionary(pa.int32(), pa.string())))
        else:
            fields.append(pa.field(name, getattr(pa, kind)()))
    return pa.schema(fields)


_DICTIONARY = {("points", "metric")}


@dataclass(frozen=True)
class Source:
    """Who published a segment: the run it belongs to, the node, and the rank (None: the node's sampler)."""

    run: str
    node: int
    rank: int | None

    @property
    def folder(self) -> str:
        return f"rank={self.rank}" if self.rank is not None else f"node={self.node}"


# ---------------------------------------------------------------------- the publishing side
@dataclass
class ExportState:
    """How far the rows of one database were sent (kept beside the run, so a later process goes on)."""

    seq: dict[str, int] = field(default_factory=lambda: {t: 0 for t in APPEND_TABLES})
    steps_below: int = 0  # every step below this was sent
    steps_ahead: list[int] = field(default_factory=list)  # steps at or above it that were sent
    events_after: int = 0  # highest event id sent
    points_after: dict[str, float] = field(default_factory=dict)  # series id -> last point time sent
    snapshots: dict[str, str] = field(default_factory=dict)  # table -> digest of what was sent
    rows: dict[str, int] = field(default_factory=lambda: {t: 0 for t in APPEND_TABLES})  # rows sent per table

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ExportState:
        state = cls()
        for key, value in data.items():
            if hasattr(state, key):
                setattr(state, key, value)
        return state


@dataclass
class Export:
    """One round's rows: per table an arrow table (append tables only when rows were added, snapshot
    tables only when they changed), and the state to keep once they are safely on their way."""

    tables: dict[str, Any]
    state: ExportState


def export_new(conn: sqlite3.Connection, state: ExportState, source: Source,
               meta_patch: dict[str, Any] | None = None) -> Export:
    """The rows ``conn`` gained since ``state``.  Pure reading: ``state`` is left as it was (the caller keeps
    the returned state once the files are written); ``meta_patch`` overrides metadata keys as published."""
    new = ExportState.from_json(json.loads(json.dumps(state.to_json())))
    tables: dict[str, Any] = {}
    steps = _new_steps(conn, new)
    if steps:
        tables["steps"] = _append_table("steps", steps, source, new)
    points = _new_points(conn, new, source)
    if points is not None:
        tables["points"] = points
    events = conn.execute("SELECT id, t, kind, gpu, message, data FROM events WHERE id > ? ORDER BY id",
                          (new.events_after,)).fetchall()
    if events:
        new.events_after = int(events[-1][0])
        tables["events"] = _append_table("events", events, source, new)
    for name in SNAPSHOT_TABLES:
        rows = _snapshot_rows(conn, name, meta_patch)
        digest = hashlib.sha256(json.dumps(rows, default=str).encode()).hexdigest()[:20]
        if new.snapshots.get(name) != digest:
            new.snapshots[name] = digest
            tables[name] = _rows_table(name, rows, source)
    return Export(tables, new)


def _new_steps(conn: sqlite3.Connection, state: ExportState) -> list[tuple[Any, ...]]:
    cols = ", ".join(schema.STEP_COLUMNS)
    rows = conn.execute(f"SELECT {cols} FROM steps WHERE step >= ? ORDER BY step", (state.steps_below,)).fetchall()
    ahead = set(state.steps_ahead)
    fresh = [r for r in rows if r[0] not in ahead]
    ahead.update(r[0] for r in fresh)
    below = state.steps_below
    if len(ahead) > MAX_STEPS_AHEAD:  # a step that will never come (dropped): let the line move past it
        below = min(ahead)
    while below in ahead:
        ahead.discard(below)
        below += 1
    state.steps_below, state.steps_ahead = below, sorted(ahead)
    return fresh


def _new_points(conn: sqlite3.Connection, state: ExportState, source: Source) -> Any:
    """Every series' points after the last one sent, as one arrow table (columns built from arrays: a day of
    eight GPUs is ~90 million points, never Python objects one by one)."""
    pa = _pa()
    metrics: list[str] = []
    parts: list[tuple[int, int, np.ndarray, np.ndarray]] = []
    for sid, metric, gpu in conn.execute("SELECT id, metric, gpu FROM series ORDER BY id").fetchall():
        after = state.points_after.get(str(sid), -np.inf)
        chunks = conn.execute("SELECT t, v FROM chunks WHERE series_id = ? AND t1 > ? ORDER BY t0",
                              (sid, after if np.isfinite(after) else -1e300)).fetchall()
        if not chunks:
            continue
        t = np.concatenate([np.frombuffer(c[0], dtype=np.float64) for c in chunks])
        v = np.concatenate([np.frombuffer(c[1], dtype=np.float64) for c in chunks])
        keep = t > after
        t, v = t[keep], v[keep]
        if not t.size:
            continue
        order = np.argsort(t, kind="stable")
        t, v = t[order], v[order]
        state.points_after[str(sid)] = float(t[-1])
        if metric not in metrics:
            metrics.append(metric)
        parts.append((metrics.index(metric), int(gpu), t, v))
    if not parts:
        return None
    n = sum(p[2].size for p in parts)
    state.seq["points"] = state.seq.get("points", 0) + 1
    state.rows["points"] = state.rows.get("points", 0) + n
    index = np.concatenate([np.full(p[2].size, p[0], dtype=np.int32) for p in parts])
    columns = {
        "metric": pa.DictionaryArray.from_arrays(pa.array(index, pa.int32()), pa.array(metrics, pa.string())),
        "gpu": pa.array(np.concatenate([np.full(p[2].size, p[1], dtype=np.int32) for p in parts])),
        "t": pa.array(np.concatenate([p[2] for p in parts])),
        "value": pa.array(np.concatenate([p[3] for p in parts])),
        "run": pa.array([source.run] * n, pa.string()) if n < 1024 else _repeat(source.run, n),
        "node": pa.array(np.full(n, source.node, dtype=np.int32)),
        "rank": pa.nulls(n, pa.int32()) if source.rank is None else pa.array(np.full(n, source.rank, dtype=np.int32)),
        "_seq": pa.array(np.full(n, state.seq["points"], dtype=np.int64)),
    }
    return pa.Table.from_pydict(columns, schema=arrow_schema("points"))


def _repeat(text: str, n: int) -> Any:
    """A column holding ``text`` ``n`` times, without ``n`` Python strings."""
    pa = _pa()
    return pa.DictionaryArray.from_arrays(pa.array(np.zeros(n, dtype=np.int32)), pa.array([text])).cast(pa.string())


def _snapshot_rows(conn: sqlite3.Connection, table: str, meta_patch: dict[str, Any] | None) -> list[tuple[Any, ...]]:
    names = [name for name, _ in _columns(table)]
    if table == "windows" and not any(row[1] == "trigger" for row in conn.execute("PRAGMA table_info(windows)")):
        names[names.index("trigger")] = "NULL"  # a run recorded before on-demand windows: all scheduled
    cols = ", ".join(names)
    order = {"meta": "key", "series": "id", "windows": "id", "flops": "step"}[table]
    rows = conn.execute(f"SELECT {cols} FROM {table} ORDER BY {order}").fetchall()
    if table == "meta" and meta_patch:
        patched = dict(rows)
        patched.update({k: json.dumps(v) for k, v in meta_patch.items()})
        rows = sorted(patched.items())
    return [tuple(r) for r in rows]


def _append_table(table: str, rows: list[tuple[Any, ...]], source: Source, state: ExportState) -> Any:
    state.seq[table] = state.seq.get(table, 0) + 1
    state.rows[table] = state.rows.get(table, 0) + len(rows)
    return _rows_table(table, rows, source, seq=state.seq[table])


def _rows_table(table: str, rows: list[tuple[Any, ...]], source: Source, seq: int | None = None) -> Any:
    pa = _pa()
    names = [name for name, _ in _columns(table)]
    columns = list(zip(*rows)) if rows else [()] * len(names)
    data: dict[str, Any] = {name: list(col) for name, col in zip(names, columns)}
    n = len(rows)
    data.update(run=[source.run] * n, node=[source.node] * n, rank=[source.rank] * n)
    if seq is not None:
        data["_seq"] = [seq] * n
    return pa.Table.from_pydict(data, schema=arrow_schema(table))


def encode(table: str, data: Any, source: Source, first: int | None = None, last: int | None = None,
           extra: dict[str, Any] | None = None) -> bytes:
    """One segment file: ``data`` (an arrow table of ``table``) as Parquet, with what it is in its metadata."""
    import pyarrow.parquet as pq

    info = {"format": FORMAT, "table": table, "run": source.run, "node": source.node, "rank": source.rank,
            "first": first, "last": last, **(extra or {})}
    data = data.replace_schema_metadata({META_KEY: json.dumps(info).encode()})
    sink = io.BytesIO()
    pq.write_table(data, sink, compression="zstd", use_dictionary=True)
    return sink.getvalue()


class SegmentError(ValueError):
    """A file in a run's folder that is not a segment of this table: foreign, truncated or of another schema."""


@dataclass
class Segment:
    table: str
    info: dict[str, Any]
    data: Any  # pyarrow.Table


def decode(raw: bytes, table: str) -> Segment:
    """Parse and check one segment file; :class:`SegmentError` (one line) for anything else."""
    import pyarrow.parquet as pq

    try:
        parsed = pq.read_table(io.BytesIO(raw))
    except Exception as exc:  # pyarrow raises its own types for every kind of damage
        raise SegmentError(f"not a readable Parquet file ({type(exc).__name__}: {str(exc)[:120]})") from None
    meta = parsed.schema.metadata or {}
    try:
        info = json.loads(meta[META_KEY])
    except (KeyError, ValueError):
        raise SegmentError("a Parquet file that gpulens did not write (no gpulens.segment metadata)") from None
    if not isinstance(info, dict) or info.get("table") != table:
        raise SegmentError(f"a segment of table {info.get('table') if isinstance(info, dict) else '?'!r}, "
                           f"found under {table}/")
    if info.get("format") != FORMAT:
        raise SegmentError(f"segment format {info.get('format')!r}; this gpulens reads format {FORMAT}: upgrade it")
    expected = arrow_schema(table)
    if table == "windows" and "trigger" not in parsed.schema.names:  # written before on-demand windows
        pa = _pa()
        parsed = parsed.add_column(parsed.schema.get_field_index("run"), "trigger",
                                   pa.nulls(parsed.num_rows, pa.string()))
    if not parsed.schema.remove_metadata().equals(expected):
        raise SegmentError(f"columns {parsed.schema.names} are not the {table} table's")
    return Segment(table, info, parsed)


def index_key(run_id: str, folder: str) -> str:
    """Where a process's metadata is in the store's index (relative to the store)."""
    return f"{INDEX_PREFIX}/{run_id}/{folder}.parquet"


def segment_name(first: int, last: int) -> str:
    return f"{first:08d}-{last:08d}.parquet"


def parse_segment_name(name: str) -> tuple[int, int] | None:
    """(first, last) of a segment file name, None for anything else."""
    if not name.endswith(".parquet") or len(name) != 25 or name[8] != "-":
        return None
    a, b = name[:8], name[9:17]
    if not (a.isdigit() and b.isdigit()):
        return None
    first, last = int(a), int(b)
    return (first, last) if 1 <= first <= last else None


def plan(available: list[tuple[int, int]], applied: int) -> list[tuple[int, int]]:
    """Which segments to apply, in order, to go on from count ``applied`` without a gap: at each point the file
    that reaches furthest.  Stops at a gap (a file not listed yet, or merged away between listing and fetching)."""
    out: list[tuple[int, int]] = []
    at = applied
    while True:
        reach = [s for s in available if s[0] <= at + 1 < s[1] + 1]
        if not reach:
            return out
        best = max(reach, key=lambda s: s[1])
        out.append(best)
        at = best[1]


# ---------------------------------------------------------------------- the mirror side
MIRROR_ROLLUP_LEVELS = schema.MIRROR_ROLLUP_LEVELS
MIRROR_DDL = """
CREATE TABLE IF NOT EXISTS mirror_applied (
    tbl TEXT PRIMARY KEY,           -- append table
    seq INTEGER NOT NULL            -- rows with _seq up to this are in
);
"""


class MirrorDB:
    """One recording process of a run, assembled from its segments into a database the reader opens.

    Each segment goes in within one transaction that also moves the table's applied count, so a reader
    never sees half a segment and a segment is never applied twice, by this process or another one syncing
    the same cache."""

    def __init__(self, path: Path) -> None:
        self.path = path
        fresh = not path.exists()
        path.parent.mkdir(parents=True, exist_ok=True)
        self.conn = sqlite3.connect(str(path), timeout=30, isolation_level=None, check_same_thread=False)
        try:
            if fresh or not self.conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'mirror_applied'").fetchone():
                self.conn.execute("PRAGMA journal_mode=WAL")
                schema.create(self.conn)
                self.conn.executescript(MIRROR_DDL)
        except BaseException:
            self.conn.close()
            raise
        self._small: dict[int, float] = {}

    def close(self) -> None:
        try:
            compact_chunks(self.conn, self._small)
        except sqlite3.Error:
            pass
        self.conn.close()

    def applied(self, table: str) -> int:
        row = self.conn.execute("SELECT seq FROM mirror_applied WHERE tbl = ?", (table,)).fetchone()
        return int(row[0]) if row else 0

    def apply(self, segment: Segment) -> int:
        """Put a segment's rows past the applied count in; returns how many rows went in."""
        table = segment.table
        conn = self.conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            if table in APPEND_TABLES:
                done = self.applied(table)
                data = segment.data
                seqs = np.asarray(data.column("_seq").to_numpy(zero_copy_only=False), dtype=np.int64)
                keep = seqs > done
                n = self._points(data, keep) if table == "points" else self._append(table, _rows_of(data, table, keep))
                last = int(seqs.max()) if seqs.size else done
                conn.execute("INSERT OR REPLACE INTO mirror_applied (tbl, seq) VALUES (?, ?)",
                             (table, max(done, last, int(segment.info.get("last") or 0))))
            else:
                n = self._replace(table, _rows_of(segment.data, table, None))
            conn.execute("COMMIT")
            return n
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    def _append(self, table: str, rows: list[tuple[Any, ...]]) -> int:
        conn = self.conn
        if not rows:
            return 0
        if table == "steps":
            have = {r[0] for r in conn.execute(
                "SELECT step FROM steps WHERE step IN (SELECT value FROM json_each(?))",
                (json.dumps([r[0] for r in rows]),))}
            rows = [r for r in rows if r[0] not in have]
            if rows:
                _insert_steps(conn, rows)
                conn.executemany(step_rollup_upsert(), _step_rollup_rows(rows, MIRROR_ROLLUP_LEVELS))
            return len(rows)
        conn.executemany("INSERT OR IGNORE INTO events (id, t, kind, gpu, message, data) VALUES (?, ?, ?, ?, ?, ?)",
                         rows)
        return len(rows)

    def _points(self, data: Any, keep: np.ndarray) -> int:
        """Points as chunks, one per series, with their rollups: arrays all the way."""
        pa = _pa()
        if not keep.all():
            data = data.filter(pa.array(keep))
        if not data.num_rows:
            return 0
        metric = data.column("metric").combine_chunks()
        if not pa.types.is_dictionary(metric.type):
            metric = metric.dictionary_encode()
        names = metric.dictionary.to_pylist()
        idx = np.asarray(metric.indices.to_numpy(zero_copy_only=False), dtype=np.int64)
        gpu = np.asarray(data.column("gpu").to_numpy(zero_copy_only=False), dtype=np.int64)
        t = np.asarray(data.column("t").to_numpy(zero_copy_only=False), dtype=np.float64)
        v = np.asarray(data.column("value").to_numpy(zero_copy_only=False), dtype=np.float64)
        key = idx * 1_000_003 + (gpu + 1)
        starts = np.flatnonzero(np.r_[True, key[1:] != key[:-1]])
        if np.unique(key[starts]).size != starts.size:  # a merged segment: each series in several runs
            order = np.argsort(key, kind="stable")  # runs in time order stay so (a chunk sorts what is left)
            key, t, v, idx, gpu = key[order], t[order], v[order], idx[order], gpu[order]
            starts = np.flatnonzero(np.r_[True, key[1:] != key[:-1]])
        ends = np.r_[starts[1:], key.size]
        chunks = []
        for a, b in zip(starts.tolist(), ends.tolist()):
            sid = self._series_id(str(names[idx[a]]), int(gpu[a]))
            chunks.append(_chunk(sid, t[a:b], v[a:b]))
        self.conn.executemany("INSERT INTO chunks (series_id, t0, t1, n, t, v) VALUES (?, ?, ?, ?, ?, ?)", chunks)
        self.conn.executemany(rollup_upsert(), _rollup_rows(chunks, MIRROR_ROLLUP_LEVELS))
        for sid, t0, _t1, n, _t, _v in chunks:
            if n < 1024:
                self._small[sid] = min(self._small.get(sid, np.inf), t0)
        return int(t.size)

    def _series_id(self, metric: str, gpu: int) -> int:
        row = self.conn.execute("SELECT id FROM series WHERE metric = ? AND gpu = ?", (metric, gpu)).fetchone()
        if row:
            return int(row[0])
        from gpulens.profiler.store.metrics import CATALOG

        unit = CATALOG[metric].unit if metric in CATALOG else ""
        cur = self.conn.execute("INSERT INTO series (metric, gpu, unit, status, reason) VALUES (?, ?, ?, 'ok', NULL)",
                                (metric, gpu, unit))
        return int(cur.lastrowid or 0)

    def _replace(self, table: str, rows: list[tuple[Any, ...]]) -> int:
        conn = self.conn
        if table == "series":  # by (metric, gpu): points that arrived first may have made a row already
            for sid, metric, gpu, unit, status, reason in rows:
                have = conn.execute("SELECT id FROM series WHERE metric = ? AND gpu = ?", (metric, gpu)).fetchone()
                if have:
                    conn.execute("UPDATE series SET unit = ?, status = ?, reason = ? WHERE id = ?",
                                 (unit, status, reason, have[0]))
                elif conn.execute("SELECT 1 FROM series WHERE id = ?", (sid,)).fetchone():
                    conn.execute("INSERT INTO series (metric, gpu, unit, status, reason) VALUES (?, ?, ?, ?, ?)",
                                 (metric, gpu, unit, status, reason))
                else:
                    conn.execute("INSERT INTO series (id, metric, gpu, unit, status, reason) VALUES (?, ?, ?, ?, ?, ?)",
                                 (sid, metric, gpu, unit, status, reason))
            return len(rows)
        cols = [name for name, _ in _columns(table)]
        conn.execute(f"DELETE FROM {table}")
        conn.executemany(f"INSERT INTO {table} ({', '.join(cols)}) VALUES ({', '.join('?' for _ in cols)})", rows)
        return len(rows)


def _rows_of(data: Any, table: str, keep: np.ndarray | None) -> list[tuple[Any, ...]]:
    names = [name for name, _ in _columns(table)]
    columns = [data.column(name).to_pylist() for name in names]
    rows = list(zip(*columns)) if columns and columns[0] else []
    if keep is not None:
        rows = [r for r, k in zip(rows, keep.tolist()) if k]
    if table == "meta":
        for _key, value in rows:  # the reader decodes every value: text that is not JSON is a broken segment
            json.loads(value)
    return rows
