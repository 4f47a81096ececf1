"""Reading a run store: its runs, mirrored into a local cache that every reader works on.

One listing of the store (a flat, paged listing: ~1,000 keys per request on S3, whatever the number of
runs) says what is there; only objects that are new or changed are fetched, many at a time, and a run's
segments are applied to its databases in the cache (:class:`~gpulens.profiler.store.segments.MirrorDB`),
so the report, the advisor and the dashboard read a store run exactly as a local one::

    <cache>/<store>/<run id>/rank-<r>.db, node-<n>.db, traces/   a run, as recorded
    <cache>/<store>/.index/<run id>/<member>.json                each process's metadata (``gpulens ls``)

``gpulens ls URL`` reads only the index (one small object per process, fetched once per change), so a store
of a thousand runs lists in seconds; ``report``, ``advise`` and the dashboard assemble the runs they show.
Anything in the store that is not what gpulens writes -- a foreign object, a truncated or foreign Parquet
file, a segment of another table, a key with ``..`` or control characters -- makes its run *broken*, listed
with the reason; nothing is ever written outside the cache.  A run that disappears from the store
disappears from the cache.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import re
import shutil
import sqlite3
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gpulens.profiler.errors import GpulensError, one_line
from gpulens.profiler.store import segments as seg
from gpulens.profiler.store.remote import cache_dir_for, filesystem, is_url, redact
from gpulens.profiler.store.requests import REQUESTS_DIR
from gpulens.profiler.store.runstore import KEPT_REPORT_FILE, STORE_ERROR_FILE, validate_run_id

log = logging.getLogger("gpulens")

INDEX = ".index"
ERROR_FILE = STORE_ERROR_FILE  # in a mirrored run: why its objects in the store cannot be read
STATE_FILE = ".mirror.json"  # in a mirrored run: the tag of every whole object fetched
#: Bytes fetched at once (objects are fetched concurrently in batches of about this size).
FETCH_BATCH_BYTES = 64 << 20
#: Processes of one run assembled at once.
ASSEMBLERS = 4


def _cap(name: str, default_gb: float) -> int:
    try:
        return int(float(os.environ.get(name, default_gb)) * 2**30)
    except ValueError:
        return int(default_gb * 2**30)


#: What the cache takes from a store at most: per object, and per run (a hostile store's 3 GB sparse file must
#: not fill the reader's disk; a day-long 8-GPU run is under 2 GB).
MAX_OBJECT_BYTES = _cap("GPULENS_MIRROR_MAX_OBJECT_GB", 4)
MAX_RUN_BYTES = _cap("GPULENS_MIRROR_MAX_RUN_GB", 32)
_MEMBER = re.compile(r"^(rank|node)=(\d{1,6})$")
_TRACE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,199}$")  # room for the cache's temporary suffix
_LEGACY_DB = re.compile(r"^rank-(\d{1,6})\.db$")


@dataclass
class SyncStats:
    fetched: int = 0
    bytes: int = 0
    unchanged: int = 0
    runs: int = 0
    broken: dict[str, str] = field(default_factory=dict)  # run id -> why


@dataclass
class _Member:
    """One process's objects in the store."""

    kind: str  # rank | node
    index: int
    snapshots: dict[str, tuple[str, dict[str, Any]]] = field(default_factory=dict)  # table -> (key, info)
    segments: dict[str, dict[tuple[int, int], str]] = field(default_factory=dict)  # table -> (first, last) -> key
    traces: dict[str, tuple[str, dict[str, Any]]] = field(default_factory=dict)  # name -> (key, info)

    @property
    def db_name(self) -> str:
        return f"{self.kind}-{self.index}.db"


@dataclass
class _Run:
    members: dict[str, _Member] = field(default_factory=dict)  # "rank=0" -> member
    legacy: dict[str, tuple[str, dict[str, Any]]] = field(default_factory=dict)  # rank-N.db / traces/x (old format)
    error: str | None = None


def _tag(info: dict[str, Any]) -> str:
    """What says an object changed: its ETag where the store gives one, else size and mtime."""
    for key in ("ETag", "etag", "md5"):
        if info.get(key):
            return str(info[key]).strip('"')
    return f"{info.get('size')}:{info.get('mtime') or info.get('LastModified') or info.get('last_modified')}"


def _unsafe(text: str) -> bool:
    return any(ord(c) < 32 or ord(c) == 127 for c in text) or "\\" in text


def _shown(key: str) -> str:
    from gpulens.fmt import safe_text

    return safe_text(key if len(key) <= 120 else key[:117] + "...")


def parse_listing(keys: dict[str, dict[str, Any]], base: str) -> dict[str, _Run]:
    """The store's runs from its listing (pure: keys and their infos in, runs and what is wrong with them
    out)."""
    runs: dict[str, _Run] = {}
    for full, info in keys.items():
        if info.get("type") == "directory":
            continue
        rel = full[len(base) + 1:] if full.startswith(base + "/") else None
        if not rel:
            continue
        parts = rel.split("/")
        if len(parts) < 2 or parts[0] == seg.INDEX_PREFIX:
            continue  # an object beside the runs, or the store's index: not a run
        run_id = parts[0]
        try:
            validate_run_id(run_id)
            if _unsafe(run_id):
                raise GpulensError("control characters")
        except GpulensError:
            runs.setdefault(_shown(run_id), _Run()).error = f"not a valid run id: {_shown(run_id)!r}"
            continue
        run = runs.setdefault(run_id, _Run())
        if run.error:
            continue
        run.error = _place(run, parts[1:], full, info)
    return runs


def _place(run: _Run, parts: list[str], key: str, info: dict[str, Any]) -> str | None:
    """Put one object of a run where it belongs; the reason the run is broken when it belongs nowhere."""
    name = parts[-1]
    if any(p in ("", ".", "..") or _unsafe(p) for p in parts):
        return f"unsafe key in the store: {_shown('/'.join(parts))!r}"
    if any(len(p.encode()) > 255 for p in parts):
        return f"a key with a part longer than 255 bytes: {_shown('/'.join(parts))!r}"
    if info.get("islink") or info.get("type") not in (None, "file"):
        # a shared filesystem store: a link could point at any file the reader may read, a FIFO would never end
        return f"not a regular file in the store: {_shown('/'.join(parts))!r}"
    size = int(info.get("size") or 0)
    if size > MAX_OBJECT_BYTES:
        return (f"an object of {size / 2**30:.1f} GiB (more than {MAX_OBJECT_BYTES / 2**30:.0f} GiB, "
                f"GPULENS_MIRROR_MAX_OBJECT_GB): {_shown('/'.join(parts))!r}")
    if ".part-" in name:
        return None  # a file store's upload in progress
    if len(parts) == 1 and name == KEPT_REPORT_FILE:
        return None  # a local run's kept report, synced by hand with the run: derived, never fetched
    if len(parts) == 1 and _LEGACY_DB.match(name):
        run.legacy[name] = (key, info)
        return None
    if len(parts) == 2 and parts[0] == "traces" and _TRACE.match(name) and not run.members:
        run.legacy[f"traces/{name}"] = (key, info)
        return None
    if len(parts) == 2 and parts[0] == REQUESTS_DIR:
        return None  # profile requests and their answers, asked through the store (request_relay.py)
    member_match = _MEMBER.match(parts[0])
    if member_match is None:
        return f"an object gpulens did not write: {_shown('/'.join(parts))!r}"
    member = run.members.setdefault(parts[0], _Member(member_match.group(1), int(member_match.group(2))))
    if len(parts) == 3 and parts[1] == "traces" and _TRACE.match(name):
        member.traces[name] = (key, info)
        return None
    if len(parts) == 3 and parts[1] in seg.TABLES:
        table = parts[1]
        if table in seg.SNAPSHOT_TABLES and name == seg.CURRENT:
            member.snapshots[table] = (key, info)
            return None
        span = seg.parse_segment_name(name)
        if table in seg.APPEND_TABLES and span is not None:
            member.segments.setdefault(table, {})[span] = key
            return None
    return f"an object gpulens did not write: {_shown('/'.join(parts))!r}"


@contextlib.contextmanager
def _locked(root: Path) -> Iterator[None]:
    """One sync of a cache at a time (two gpulens commands may read one store)."""
    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".lock", "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _list(fs: Any, path: str, url: str, only: str | None) -> dict[str, dict[str, Any]]:
    try:
        fs.invalidate_cache(path)  # fsspec keeps listings per process: a dashboard's mirror must see new objects
        found: dict[str, dict[str, Any]] = fs.find(path, detail=True)
    except FileNotFoundError:
        found = {}
    except Exception as exc:
        raise GpulensError(f"{redact(url)}: cannot list the store ({type(exc).__name__}: "
                           f"{one_line(redact(str(exc)), 200)})") from None
    if not found and not only:
        try:
            exists = fs.exists(path)
        except Exception:
            exists = False
        if not exists:
            raise GpulensError(f"{redact(url)}: no such store (or it is empty)")
    return found


def _fetch(fs: Any, keys: list[str], sizes: dict[str, int]) -> Iterator[tuple[str, bytes | BaseException]]:
    """(key, bytes or the error) for every key, fetched concurrently in batches (s3fs: one request each, at once)."""
    batch: list[str] = []
    total = 0
    pending: list[str | None] = [*keys, None]
    for key in pending:
        if key is not None:
            batch.append(key)
            total += sizes.get(key, 0)
        if batch and (key is None or total >= FETCH_BATCH_BYTES or len(batch) >= 256):
            try:
                got = fs.cat(batch, on_error="return") if len(batch) > 1 else {batch[0]: fs.cat_file(batch[0])}
            except Exception as exc:
                got = {k: exc for k in batch}
            for k in batch:
                value = got.get(k, FileNotFoundError(k)) if isinstance(got, dict) else FileNotFoundError(k)
                yield k, value
            batch, total = [], 0


def sync_runs(url: str, only: str | None = None, dest: Path | None = None, full: bool = True) -> tuple[Path, SyncStats]:
    """Bring the cache of store ``url`` up to date (just run ``only`` when given); ``full=False`` only the
    index that ``gpulens ls`` reads.  Returns the cache's runs root and what was done."""
    fs, base = filesystem(url)
    root = dest or cache_dir_for(url)
    if only is not None:
        try:
            validate_run_id(only)
        except GpulensError:
            raise GpulensError(f"{redact(url)}/{_shown(only)}: not a valid run id") from None
    stats = SyncStats()
    with _locked(root):
        if full or only:
            keys = _list(fs, f"{base}/{only}" if only else base, url, only)
            runs = parse_listing(keys, base)
            if only and only not in runs:
                raise GpulensError(f"{redact(url)}/{only}: no such run in the store")
            metas = {(run_id, folder): member.snapshots["meta"] for run_id, run in runs.items() if not run.error
                     for folder, member in run.members.items() if "meta" in member.snapshots}
        else:
            keys, runs, metas = _light_listing(fs, base, url)
        stats.runs = len(runs)
        sizes = {k: int(v.get("size") or 0) for k, v in keys.items()}
        prefetched: dict[str, bytes] = {}
        _sync_index(fs, root, runs, metas, sizes, stats, prefetched)
        for run_id, run in sorted(runs.items(), reverse=True):
            if full or (run.legacy and not run.members):  # runs published whole by earlier gpulens: listed from
                _sync_run(fs, root, run_id, run, sizes, stats, prefetched)  # their database
        _forget_gone(root, runs, only, full)
    return root, stats


_INDEX_FILE = re.compile(r"^((?:rank|node)=\d{1,6})\.parquet$")


def _light_listing(fs: Any, base: str, url: str) -> tuple[dict[str, dict[str, Any]], dict[str, _Run],
                                                           dict[tuple[str, str], tuple[str, dict[str, Any]]]]:
    """What ``gpulens ls`` needs: the runs (one listing with a delimiter) and the store's index (every process's
    metadata under one prefix) -- two or three requests for a thousand runs, not every object of every run.
    A run that the index does not know (published whole by earlier gpulens, or not a gpulens run) is listed
    in full."""
    try:
        fs.invalidate_cache(base)
        entries = fs.ls(base, detail=True)
    except FileNotFoundError:
        raise GpulensError(f"{redact(url)}: no such store (or it is empty)") from None
    except Exception as exc:
        raise GpulensError(f"{redact(url)}: cannot list the store ({type(exc).__name__}: "
                           f"{one_line(redact(str(exc)), 200)})") from None
    runs: dict[str, _Run] = {}
    names = set()
    for e in entries:
        name = str(e["name"]).rstrip("/").rsplit("/", 1)[-1]
        if e.get("type") != "directory" or name == seg.INDEX_PREFIX:
            continue
        if e.get("islink"):  # a shared filesystem store: a link could lead anywhere the reader may read
            runs[_shown(name)] = _Run(error=f"a symbolic link in the store: {_shown(name)!r}")
            continue
        names.add(name)
    index = _list(fs, f"{base}/{seg.INDEX_PREFIX}", url, "index")
    keys = dict(index)
    metas: dict[tuple[str, str], tuple[str, dict[str, Any]]] = {}
    for key, info in index.items():
        parts = key[len(base) + 1:].split("/")
        if info.get("islink") or info.get("type") not in (None, "file"):
            continue
        if len(parts) == 3 and parts[1] in names and (m := _INDEX_FILE.match(parts[2])):
            metas[(parts[1], m.group(1))] = (key, info)
    indexed = {run_id for run_id, _ in metas}
    for name in names - indexed:  # not in the index: listed in full (rare: old stores, foreign folders)
        found = _list(fs, f"{base}/{name}", url, name)
        keys.update(found)
        runs.update(parse_listing(found, base) or {name: _Run(error="an empty folder")})
    for name in indexed:
        runs[name] = _Run()
        for run_id, folder in metas:
            if run_id == name:
                match = _MEMBER.match(folder)
                assert match is not None
                runs[name].members[folder] = _Member(match.group(1), int(match.group(2)),
                                                     snapshots={"meta": metas[(run_id, folder)]})
    return keys, runs, metas


def _keys(run: _Run) -> list[str]:
    """Every listed object of a run, for what it weighs."""
    out = [key for key, _ in run.legacy.values()]
    for member in run.members.values():
        out += [key for key, _ in [*member.snapshots.values(), *member.traces.values()]]
        out += [key for spans in member.segments.values() for key in spans.values()]
    return out


def _sync_index(fs: Any, root: Path, runs: dict[str, _Run], metas: dict[tuple[str, str], tuple[str, dict[str, Any]]],
                sizes: dict[str, int], stats: SyncStats, prefetched: dict[str, bytes]) -> None:
    """Every process's metadata, for listing the store without assembling its runs (what it fetched goes
    into ``prefetched``, for the assembly)."""
    index = root / INDEX
    wanted: list[tuple[Path, str, str]] = []
    for run_id, run in runs.items():
        if run.error:
            stats.broken[run_id] = run.error
    for (run_id, folder), (key, info) in metas.items():
        if run_id in stats.broken:
            continue
        out = index / run_id / f"{folder}.json"
        tag = _tag(info)
        try:
            if json.loads(out.read_text()).get("tag") == tag:
                stats.unchanged += 1
                continue
        except (OSError, ValueError):
            pass
        wanted.append((out, key, tag))
    by_key = {key: (out, tag) for out, key, tag in wanted}
    for key, raw in _fetch(fs, list(by_key), sizes):
        out, tag = by_key[key]
        run_id = out.parent.name
        if isinstance(raw, BaseException):
            if not isinstance(raw, FileNotFoundError):  # gone between listing and fetching: next time
                stats.broken[run_id] = f"cannot fetch {_shown(key)} ({type(raw).__name__})"
            continue
        try:
            segment = seg.decode(raw, "meta")
            meta = {k: json.loads(v) for k, v in zip(segment.data.column("key").to_pylist(),
                                                      segment.data.column("value").to_pylist())}
        except (seg.SegmentError, ValueError) as exc:
            stats.broken[run_id] = f"{_shown(key)}: {exc}"
            continue
        prefetched[key] = raw
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(out.name + ".tmp")
        tmp.write_text(json.dumps({"tag": tag, "meta": meta, "published": segment.info.get("published"),
                                   "rows": segment.info.get("rows")}))
        os.replace(tmp, out)
        stats.fetched += 1
        stats.bytes += len(raw)


def _sync_run(fs: Any, root: Path, run_id: str, run: _Run, sizes: dict[str, int], stats: SyncStats,
              prefetched: dict[str, bytes]) -> None:
    """Assemble one run in the cache; a run whose objects are not gpulens' is marked broken there."""
    run_dir = root / run_id
    error = run.error or stats.broken.get(run_id)
    if error is None and not run.members and not any(_LEGACY_DB.match(k) for k in run.legacy):
        error = "not a gpulens run (no rank=N/ or node=N/ folder in the store)"
    if error is None:
        size = sum(sizes.get(key, 0) for key in _keys(run))
        if size > MAX_RUN_BYTES:
            error = (f"{size / 2**30:.1f} GiB in the store, more than the cache takes for one run "
                     f"({MAX_RUN_BYTES / 2**30:.0f} GiB, GPULENS_MIRROR_MAX_RUN_GB)")
    if error is None:
        try:
            run_dir.mkdir(parents=True, exist_ok=True)
            tags = _read_tags(run_dir)
            todo = []
            for folder, member in sorted(run.members.items()):
                digest = _digest(member)
                if tags.get(f"member:{folder}") == digest and (run_dir / member.db_name).exists():
                    stats.unchanged += len(member.snapshots) + sum(map(len, member.segments.values()))
                    continue  # nothing new: its database is not even opened
                todo.append((folder, member, digest))
            work = [lambda m=m: _sync_member(fs, run_dir, m, tags, sizes, prefetched) for _, m, _ in todo]
            if len(work) > 1:  # processes of one run assemble side by side (SQLite, Parquet, numpy let go of the GIL)
                with ThreadPoolExecutor(min(len(work), ASSEMBLERS), thread_name_prefix="gpulens-mirror") as pool:
                    results = list(pool.map(lambda fn: fn(), work))
            else:
                results = [fn() for fn in work]  # type: ignore[no-untyped-call]  # default-argument lambdas
            for (folder, _, digest), result in zip(todo, results):
                tags.update(result.tags)
                stats.fetched += result.fetched
                stats.bytes += result.bytes
                stats.unchanged += result.unchanged
                if result.complete:
                    tags[f"member:{folder}"] = digest
            _sync_whole(fs, run_dir, run.legacy, tags, sizes, stats)
            _write_tags(run_dir, tags)
            for stale in set(os.listdir(run_dir)) - {m.db_name for m in run.members.values()} - set(run.legacy):
                if stale.endswith((".db", ".db-wal", ".db-shm")) and not stale.startswith("."):
                    (run_dir / stale).unlink(missing_ok=True)  # a process that moved to another run or rank
        except seg.SegmentError as exc:
            error = str(exc)
        except (OSError, sqlite3.Error, ValueError) as exc:  # one run's objects never stop the others
            error = f"cannot mirror it ({type(exc).__name__}: {one_line(str(exc), 160)})"
    if error is not None:
        stats.broken[run_id] = error
        try:
            validate_run_id(run_id)
        except GpulensError:  # not a name to make a folder of (it may be '..'): listed, never written
            return
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / ERROR_FILE).write_text(error)
    else:
        (run_dir / ERROR_FILE).unlink(missing_ok=True)


@dataclass
class _Assembled:
    """What assembling one process's database did (merged by the caller: members assemble in parallel)."""

    tags: dict[str, str] = field(default_factory=dict)
    fetched: int = 0
    bytes: int = 0
    unchanged: int = 0
    complete: bool = True  # False: a segment was merged away since the listing; the rest waits for the next sync


def _digest(member: _Member) -> str:
    """What a process has in the store now: its segments and the versions of its whole objects."""
    import hashlib

    parts = sorted(f"{k}={_tag(i)}" for k, i in [*member.snapshots.values(), *member.traces.values()])
    parts += sorted(key for spans in member.segments.values() for key in spans.values())
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:20]


def _sync_member(fs: Any, run_dir: Path, member: _Member, tags: dict[str, str], sizes: dict[str, int],
                 prefetched: dict[str, bytes]) -> _Assembled:
    out = _Assembled()
    db = seg.MirrorDB(run_dir / member.db_name)
    try:
        plans: dict[str, list[tuple[int, int]]] = {}
        for table in seg.APPEND_TABLES:
            spans = list(member.segments.get(table, {}))
            plans[table] = seg.plan(spans, db.applied(table))
            if spans and max(b for _, b in spans) > max([b for _, b in plans[table]] + [db.applied(table)]):
                out.complete = False  # a gap in what is listed: merged away or not listed yet
        fresh_snapshots = [t for t in ("series", "windows", "flops", "meta") if t in member.snapshots
                           and tags.get(member.snapshots[t][0]) != _tag(member.snapshots[t][1])]
        keys = [member.snapshots[t][0] for t in fresh_snapshots if t != "meta"]
        keys += [member.segments[t][span] for t in seg.APPEND_TABLES for span in plans[t]]
        keys += [member.snapshots["meta"][0]] if "meta" in fresh_snapshots else []
        table_of: dict[str, str] = {member.snapshots[t][0]: t for t in fresh_snapshots}
        table_of.update({member.segments[t][span]: t for t in seg.APPEND_TABLES for span in plans[t]})
        stopped: set[str] = set()
        fetched = _fetch(fs, [k for k in keys if k not in prefetched], sizes)
        ready = {k: prefetched[k] for k in keys if k in prefetched}
        for key, raw in _in_order(keys, ready, fetched):
            table = table_of[key]
            if table in stopped:
                continue
            if isinstance(raw, FileNotFoundError):  # merged away since the listing: the rest waits for the next
                stopped.add(table)
                out.complete = False
                continue
            if isinstance(raw, BaseException):
                raise seg.SegmentError(f"cannot fetch {_shown(key)} ({type(raw).__name__}: "
                                       f"{one_line(str(raw), 120)})")
            try:
                db.apply(seg.decode(raw, table))
            except (seg.SegmentError, ValueError, TypeError, KeyError) as exc:
                raise seg.SegmentError(f"{_shown(key)}: {exc}") from None
            if table in seg.SNAPSHOT_TABLES:
                out.tags[key] = _tag(member.snapshots[table][1])
            out.fetched += 1
            out.bytes += len(raw)
        out.unchanged += len(member.snapshots) - len(fresh_snapshots)
    finally:
        db.close()
    traces = {f"traces/{name}": hit for name, hit in member.traces.items()}
    stats = SyncStats()
    _sync_whole(fs, run_dir, traces, {**tags, **out.tags}, sizes, stats, out.tags)
    out.fetched += stats.fetched
    out.bytes += stats.bytes
    out.unchanged += stats.unchanged
    return out


def _in_order(keys: list[str], ready: dict[str, bytes],
              fetched: Iterator[tuple[str, bytes | BaseException]]) -> Iterator[tuple[str, bytes | BaseException]]:
    """The objects of ``keys`` in that order, from ``ready`` or as ``fetched`` brings them."""
    got: dict[str, bytes | BaseException] = dict(ready)
    for key in keys:
        while key not in got:
            try:
                k, value = next(fetched)
            except StopIteration:
                got[key] = FileNotFoundError(key)
                break
            got[k] = value
        yield key, got.pop(key)


def _sync_whole(fs: Any, run_dir: Path, objects: dict[str, tuple[str, dict[str, Any]]], tags: dict[str, str],
                sizes: dict[str, int], stats: SyncStats, new_tags: dict[str, str] | None = None) -> None:
    """Objects copied as they are (traces; runs that earlier gpulens published as whole databases); the tags of
    what was fetched go into ``new_tags`` (default: ``tags``)."""
    wanted = {}
    for rel, (key, info) in objects.items():
        local = run_dir / rel
        if tags.get(key) == _tag(info) and local.exists():
            stats.unchanged += 1
            continue
        wanted[key] = (rel, _tag(info))
    for key, raw in _fetch(fs, list(wanted), sizes):
        rel, tag = wanted[key]
        if isinstance(raw, BaseException):
            if isinstance(raw, FileNotFoundError):
                continue
            raise seg.SegmentError(f"cannot fetch {_shown(key)} ({type(raw).__name__})")
        local = run_dir / rel
        if run_dir.resolve() not in local.resolve().parents:  # never write outside the cache
            raise seg.SegmentError(f"unsafe key in the store: {_shown(key)!r}")
        local.parent.mkdir(parents=True, exist_ok=True)
        tmp = local.with_name(f"{local.name}.{threading.get_ident()}.fetch")
        tmp.write_bytes(raw)
        os.replace(tmp, local)
        (tags if new_tags is None else new_tags)[key] = tag
        stats.fetched += 1
        stats.bytes += len(raw)


def _read_tags(run_dir: Path) -> dict[str, str]:
    try:
        data = json.loads((run_dir / STATE_FILE).read_text())
        return {str(k): str(v) for k, v in data.items()} if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _write_tags(run_dir: Path, tags: dict[str, str]) -> None:
    tmp = run_dir / (STATE_FILE + ".tmp")
    tmp.write_text(json.dumps(tags))
    os.replace(tmp, run_dir / STATE_FILE)


def _forget_gone(root: Path, runs: dict[str, _Run], only: str | None, full: bool) -> None:
    """Runs deleted from the store leave the cache too (only folders the mirror made: they hold its state)."""
    if only is not None:
        return
    for parent in ([root, root / INDEX] if full else [root / INDEX]):
        try:
            names = os.listdir(parent)
        except OSError:
            continue
        for name in names:
            path = parent / name
            if name.startswith(".") or name in runs or not path.is_dir():
                continue
            if parent == root and not (path / STATE_FILE).exists() and not (path / ERROR_FILE).exists():
                continue
            shutil.rmtree(path, ignore_errors=True)


# ---------------------------------------------------------------------- what callers use
def local_run(arg: str) -> Path:
    """A run argument as a local directory: a store URL ``<store>/<run id>`` is fetched into the cache."""
    if not is_url(arg):
        return Path(arg)
    store, _, run = arg.rstrip("/").rpartition("/")
    root, stats = sync_runs(store, only=run)
    if run in stats.broken:
        raise GpulensError(f"{redact(store)}/{run}: {stats.broken[run]}")
    return root / run


@dataclass
class IndexRow:
    """One run of a store as ``gpulens ls`` shows it, from its processes' metadata alone."""

    id: str
    name: str
    status: str
    status_reason: str | None
    gpus: list[str]
    start: float | None
    duration_s: float | None
    steps: int | None
    error: str | None = None


def index_rows(root: Path, broken: dict[str, str]) -> list[IndexRow]:
    """The runs of a synced store index, newest first (broken runs with their reason)."""
    from gpulens.profiler.store.reader import combine_status, rank_status

    rows: list[IndexRow] = []
    index = root / INDEX
    try:
        names = sorted(os.listdir(index))
    except OSError:
        names = []
    for run_id in names:
        if run_id in broken:
            continue
        members: list[tuple[str, int, dict[str, Any]]] = []
        for path in sorted((index / run_id).glob("*.json")):
            try:
                doc = json.loads(path.read_text())
                match = _MEMBER.match(path.stem)
                if match and isinstance(doc.get("meta"), dict):
                    members.append((match.group(1), int(match.group(2)), doc))
            except (OSError, ValueError):
                continue
        if not members:
            continue
        metas = [d["meta"] for _, _, d in members]
        status, reason = combine_status([rank_status(m) for m in metas])
        ranks = sorted((i, d) for kind, i, d in members if kind == "rank")
        primary = next((d for _, d in ranks if (d.get("rows") or {}).get("steps")), ranks[0][1] if ranks else
                       members[0][2])
        sampler = next((m for m in metas if m.get("gpus")), primary["meta"])
        starts = [m["start"] for m in metas if isinstance(m.get("start"), (int, float))]
        ends = [e for m in metas if isinstance(e := (m.get("end") or m.get("heartbeat") or m.get("start")),
                                               (int, float))]
        steps = (primary.get("rows") or {}).get("steps")
        rows.append(IndexRow(run_id, str(primary["meta"].get("name") or run_id), status, reason,
                             [str(g.get("name")) for g in sampler.get("gpus") or [] if isinstance(g, dict)],
                             min(starts) if starts else None,
                             max(0.0, max(ends) - min(starts)) if starts and ends else None,
                             int(steps) if isinstance(steps, int) else None))
    rows += [_legacy_row(root / name) for name in os.listdir(root) if name not in names and name not in broken
             and not name.startswith(".") and (root / name / STATE_FILE).exists() and _holds_db(root / name)]
    rows.sort(key=lambda r: r.start or 0.0, reverse=True)
    rows += [IndexRow(run_id, run_id, "broken", None, [], None, None, None, error)
             for run_id, error in sorted(broken.items())]
    return rows


def _holds_db(run_dir: Path) -> bool:
    return any(_LEGACY_DB.match(name) for name in os.listdir(run_dir))


def _legacy_row(run_dir: Path) -> IndexRow:
    """A run published whole by earlier gpulens, listed from its mirrored database."""
    from gpulens.profiler.store.reader import open_run

    try:
        with open_run(run_dir) as run:
            info = run.info
            return IndexRow(info.id, info.name, info.status, info.status_reason,
                            [str(g.get("name")) for g in info.gpus], info.start, info.duration_s, len(run.steps()))
    except GpulensError as exc:
        return IndexRow(run_dir.name, run_dir.name, "broken", None, [], None, None, None, str(exc))


def start_mirror(url: str, every: float = 5.0, stop: threading.Event | None = None) -> Path:
    """The local mirror of store ``url`` for the dashboard, kept fresh by a background thread (new runs and
    new rows of live ones appear on the page as they are published) until ``stop`` is set."""
    root, _ = sync_runs(url, full=False)
    stop = stop or threading.Event()

    def loop() -> None:
        first = True
        while first or not stop.wait(every):
            first = False
            try:
                sync_runs(url)
            except GpulensError as exc:
                log.warning("gpulens: refreshing %s failed: %s", redact(url), exc)
            except Exception as exc:  # the dashboard goes on with what it has
                log.warning("gpulens: refreshing %s failed: %s: %s", redact(url), type(exc).__name__, exc)

    threading.Thread(target=loop, name="gpulens-store-mirror", daemon=True).start()
    return root
