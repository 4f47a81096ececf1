"""Publishing a recording process's database to a run store: what is new, from a process of its own.

Each round exports the rows added since the last one (:func:`~gpulens.profiler.store.segments.export_new`)
as Parquet segments, writes them into an *outbox* beside the run (``<run>/.publish/``), notes that in its
state file, and only then uploads the outbox in order -- so a round cut short anywhere (a store that is
down, a kill) is finished by the next one or by ``gpulens publish``, and no row is sent twice or lost.
Every 16 segments of a table are merged into one (and 16 of those into one again), so a day-long run
is ~60 objects per table rather than thousands, at the price of sending each row about three times; a
round sends bytes in proportion to the rows added, and the store is at most one round behind the run.

The rounds run in a **process of its own** (:class:`PublisherProcess` starts it, :func:`agent_main` is
it): the training process pays no GIL, no memory for pyarrow and s3fs, and no thread pools -- the reason
the last publish of a job used to fail at interpreter exit ("cannot schedule new futures after
interpreter shutdown").  At close the training process asks for the last round and waits for it (30 s
at most, then it goes on in the background); when the training process dies without closing (SIGKILL,
OOM killer), the publisher notices, publishes everything up to the database's last flush with the status
``crashed``, and ends.  It lives in a session of its own (a terminal's Ctrl-C is the script's, not its),
is nobody's child (the script's ``os.wait()`` never sees it), and writes to ``<run>/.publish/agent.log``,
never to the script's output: a shell that captures the script's output is not held open by it.
"""
from __future__ import annotations

import json
import logging
import os
import select
import sqlite3
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

from gpulens.profiler.errors import GpulensError, one_line
from gpulens.profiler.store import segments as seg
from gpulens.profiler.store.remote import filesystem, put_whole, redact, url_digest

log = logging.getLogger("gpulens")

DEFAULT_EVERY_S = 10.0
MAX_BACKOFF_S = 60.0
#: Average upload rate a publisher allows itself (bytes/s, ``GPULENS_PUBLISH_MBPS`` in MB/s): a multi-node
#: job's network belongs to its all-reduces.  Rounds stretch when a big trace went out.
DEFAULT_BUDGET_BPS = 1e6
FANOUT = 16  # segments merged into one
MAX_LEVEL = 2  # merged segments of this level are never merged again (16 x 16 rounds: ~43 min at 10 s)
#: A segment this big is never merged (a late publisher's backlog, a store that was down for hours): merging
#: it would send it again, and it is few objects already.
MERGE_MAX_BYTES = 32 << 20
CLOSE_WAIT_S = 30.0  # how long a closing run waits for its last round
LINGER_S = 60.0  # how long a publisher whose last round failed goes on trying, in the background
STATE_DIR = ".publish"


@dataclass(frozen=True)
class Target:
    """Where a database goes: ``<store>/<run id>/rank=<rank>/`` (``node=<node>/`` for a node's sampler)."""

    run_id: str
    node: int
    rank: int | None

    @property
    def source(self) -> seg.Source:
        return seg.Source(self.run_id, self.node, self.rank)

    @property
    def prefix(self) -> str:
        return f"{self.run_id}/{self.source.folder}"


@dataclass
class _State:
    """What a publisher has done for one database and one store (``<run>/.publish/<store>/<db>/state.json``)."""

    prefix: str | None = None
    export: seg.ExportState = field(default_factory=seg.ExportState)
    kept: dict[str, list[list[int]]] = field(default_factory=dict)  # table -> [first, last, level] kept locally
    outbox: list[dict[str, Any]] = field(default_factory=list)  # {"op": put|delete, "key", "src"}, in order
    live: list[str] = field(default_factory=list)  # keys this publisher wrote that are still in the store
    traces: list[str] = field(default_factory=list)  # trace files sent
    bytes: int = 0

    def to_json(self) -> dict[str, Any]:
        return {"prefix": self.prefix, "export": self.export.to_json(), "kept": self.kept, "outbox": self.outbox,
                "live": self.live, "traces": self.traces, "bytes": self.bytes}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> _State:
        return cls(data.get("prefix"), seg.ExportState.from_json(data.get("export") or {}), data.get("kept") or {},
                   data.get("outbox") or [], data.get("live") or [], data.get("traces") or [],
                   int(data.get("bytes") or 0))


@dataclass
class RoundStats:
    bytes: int = 0
    objects: int = 0


class Publisher:
    """The rounds of one database (used by the publisher process, and by ``gpulens publish`` directly)."""

    def __init__(self, url: str, db: Path, target: Target | None = None, budget_bps: float = DEFAULT_BUDGET_BPS,
                 every: float = DEFAULT_EVERY_S, state_dir: Path | None = None) -> None:
        """``state_dir``: where the outbox and the state live (default ``<run>/.publish/``; a run folder that
        cannot be written, like a read-only checkout's sample runs, keeps them in the cache instead)."""
        self.url = url
        self.db = Path(db)
        self.run_dir = self.db.parent
        self.target = target
        self.budget_bps = budget_bps
        self.every = every
        self.fs, self.base = filesystem(url, quick=True)
        if state_dir is None:
            state_dir = self.run_dir / STATE_DIR
            if not os.access(self.run_dir, os.W_OK):
                from gpulens.profiler.store.remote import cache_root

                state_dir = cache_root().parent / "publish" / url_digest(str(self.run_dir.resolve()))
        self.dir = state_dir / url_digest(url) / _writer_key(self.db)
        self.dir.mkdir(parents=True, exist_ok=True)
        (self.dir / "outbox").mkdir(exist_ok=True)
        self.state = self._load()
        self.last = RoundStats()
        self.failures = 0
        self.backoff = 0.0
        self.warned = False
        self.last_error: str | None = None

    # ------------------------------------------------------------------ state
    def _load(self) -> _State:
        try:
            state = _State.from_json(json.loads((self.dir / "state.json").read_text()))
        except (OSError, ValueError):
            state = _State()
        wanted = {e["src"] for e in state.outbox if e.get("src", "").startswith("outbox/")}
        for leftover in (self.dir / "outbox").iterdir():  # written by a round that never noted them
            if f"outbox/{leftover.name}" not in wanted:
                leftover.unlink(missing_ok=True)
        return state

    def _save(self) -> None:
        tmp = self.dir / f".state.{os.getpid()}.tmp"
        tmp.write_text(json.dumps(self.state.to_json()))
        os.replace(tmp, self.dir / "state.json")

    def remote(self, key: str) -> str:
        return f"{self.base}/{key}"

    # ------------------------------------------------------------------ rounds
    def round(self, final: bool = False, meta_patch: dict[str, Any] | None = None) -> bool:
        """Export what is new and send the outbox; False when the store failed (the outbox waits)."""
        try:
            if self.target is not None:
                self._retarget_if_moved(self.target)
                self._stage(meta_patch)
            stats = self._send()
            self.last = stats
            self.backoff = 0.0
            if self.last_error is not None:
                log.info("gpulens: publishing to %s works again", redact(self.url))
            self.last_error = None
            return True
        except Exception as exc:  # a store that is down, slow or refuses: the run goes on locally
            self.failures += 1
            self.backoff = min(max(self.backoff * 2, self.every), MAX_BACKOFF_S)
            self.last_error = f"{type(exc).__name__}: {one_line(str(exc), 200)}"
            if not self.warned:
                self.warned = True
                log.warning("gpulens: cannot publish to %s (%s); the run is complete locally in %s, retrying with "
                            "back-off", redact(self.url), redact(self.last_error), self.run_dir)
            return False

    def interval(self) -> float:
        """Seconds to the next round: ``every``, stretched so rounds average at most ``budget_bps``."""
        spread = self.last.bytes / self.budget_bps if self.budget_bps > 0 else 0.0
        return max(self.every, spread) + self.backoff

    def _retarget_if_moved(self, target: Target) -> None:
        """A process that learns where it belongs after publishing elsewhere (another run id: the job's, agreed
        through its process group) takes back what it wrote there and sends everything again."""
        if self.state.prefix == target.prefix:
            return
        if self.state.prefix is not None:
            old = self.state
            self.state = _State(prefix=target.prefix, bytes=old.bytes,
                                outbox=[e for e in old.outbox if e["op"] == "delete"]
                                + [{"op": "delete", "key": key} for key in old.live])
            for leftover in (self.dir / "outbox").iterdir():
                leftover.unlink(missing_ok=True)
            for kept in (self.dir / "kept").glob("*/*") if (self.dir / "kept").is_dir() else []:
                kept.unlink(missing_ok=True)
        self.state.prefix = target.prefix
        self._save()

    def _stage(self, meta_patch: dict[str, Any] | None) -> None:
        """Export the new rows into the outbox and note it in the state (nothing leaves this machine yet)."""
        assert self.target is not None
        source = self.target.source
        conn = _connect_ro(self.db)
        try:
            # one read transaction: the rows and the metadata as they were together. Read one statement at a
            # time, a round could read the steps before the run's last commit and its status after it, and
            # publish "finished" over a part of the steps (the status does not change again, so no later
            # round would send the metadata, and the store's index, with the rest)
            conn.execute("BEGIN")
            patch = {"run_id": source.run, **(meta_patch or {})}
            export = seg.export_new(conn, self.state.export, source, patch)
            windows = conn.execute("SELECT path FROM windows WHERE path IS NOT NULL").fetchall()
        finally:
            conn.close()
        prefix = self.target.prefix
        entries: list[dict[str, Any]] = []
        for table in seg.APPEND_TABLES:
            data = export.tables.get(table)
            if data is None:
                continue
            n = export.state.seq[table]
            name = seg.segment_name(n, n)
            raw = seg.encode(table, data, source, n, n)
            entries.append(self._outbox_put(raw, f"{prefix}/{table}/{name}"))
            self._keep(table, raw, n, n, 0)
            entries.extend(self._merge(table, source, prefix))
        for (path,) in windows:  # traces: each once, as recorded (gzipped chrome traces)
            rel = str(path)
            if rel in self.state.traces or not rel.startswith("traces/") or ".." in rel:
                continue
            if (self.run_dir / rel).is_file():
                entries.append({"op": "put", "key": f"{prefix}/{rel}", "src": f"run:{rel}"})
                self.state.traces.append(rel)
        for table in seg.SNAPSHOT_TABLES:  # last: a reader that sees the new status finds the rows before it
            data = export.tables.get(table)
            if data is None:
                continue
            extra = {"published": export.state.seq, "rows": export.state.rows} if table == "meta" else None
            raw = seg.encode(table, data, source, extra=extra)
            entries.append(self._outbox_put(raw, f"{prefix}/{table}/{seg.CURRENT}"))
            if table == "meta":  # also in the store's index: `gpulens ls` lists that, not every run's objects
                entries.append(self._outbox_put(raw, seg.index_key(self.target.run_id, source.folder)))
        self.state.export = export.state
        self.state.outbox.extend(entries)
        self._save()

    def _outbox_put(self, raw: bytes, key: str) -> dict[str, Any]:
        fd, tmp = tempfile.mkstemp(dir=self.dir / "outbox", suffix=".parquet")
        with os.fdopen(fd, "wb") as fh:
            fh.write(raw)
        return {"op": "put", "key": key, "src": f"outbox/{Path(tmp).name}"}

    def _keep(self, table: str, raw: bytes, first: int, last: int, level: int) -> None:
        """A segment that will be merged later stays here until it is."""
        if level >= MAX_LEVEL:
            return
        if len(raw) >= MERGE_MAX_BYTES:  # never merged: and the ones before it can no longer be merged with later
            for a, b, _ in self.state.kept.pop(table, []):  # ones (a merged file covers a gapless span)
                (self.dir / "kept" / table / seg.segment_name(a, b)).unlink(missing_ok=True)
            return
        folder = self.dir / "kept" / table
        folder.mkdir(parents=True, exist_ok=True)
        (folder / seg.segment_name(first, last)).write_bytes(raw)
        self.state.kept.setdefault(table, []).append([first, last, level])

    def _merge(self, table: str, source: seg.Source, prefix: str) -> list[dict[str, Any]]:
        """Every FANOUT segments of a level become one of the next: fewer objects for readers to list and fetch."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        entries: list[dict[str, Any]] = []
        for level in range(MAX_LEVEL):
            kept = self.state.kept.get(table, [])
            group = [k for k in kept if k[2] == level][:FANOUT]
            if len(group) < FANOUT:
                continue
            folder = self.dir / "kept" / table
            parts = [pq.read_table(folder / seg.segment_name(a, b)) for a, b, _ in group]
            first, last = group[0][0], group[-1][1]
            merged = pa.concat_tables([p.replace_schema_metadata(None) for p in parts])
            raw = seg.encode(table, merged, source, first, last)
            entries.append(self._outbox_put(raw, f"{prefix}/{table}/{seg.segment_name(first, last)}"))
            entries.extend({"op": "delete", "key": f"{prefix}/{table}/{seg.segment_name(a, b)}"} for a, b, _ in group)
            for a, b, _ in group:
                (folder / seg.segment_name(a, b)).unlink(missing_ok=True)
            self.state.kept[table] = [k for k in kept if k not in group]
            self._keep(table, raw, first, last, level + 1)
        return entries

    def _send(self) -> RoundStats:
        """Upload the outbox in order (deletions after the puts that replace them), noting each step."""
        stats = RoundStats()
        live = set(self.state.live)
        done = 0
        try:
            for entry in self.state.outbox:
                key = entry["key"]
                if entry["op"] == "put":
                    src = entry["src"]
                    local = self.run_dir / src[4:] if src.startswith("run:") else self.dir / src
                    if local.is_file():
                        put_whole(self.fs, local, self.remote(key))
                        stats.bytes += local.stat().st_size
                        stats.objects += 1
                        live.add(key)
                    if not src.startswith("run:"):
                        local.unlink(missing_ok=True)
                else:
                    try:
                        self.fs.rm_file(self.remote(key))
                    except FileNotFoundError:
                        pass
                    live.discard(key)
                done += 1
        finally:
            self.state.outbox = self.state.outbox[done:]
            self.state.live = sorted(live)
            self.state.bytes += stats.bytes
            if done:
                self._save()
        return stats


def _writer_key(db: Path) -> str:
    """The publishing state's folder for one database: who wrote it (process, start, rank) -- not its file name,
    which changes when a run's files are renamed to their ranks at its end."""
    import hashlib

    try:
        conn = _connect_ro(db)
        try:
            meta = dict(conn.execute("SELECT key, value FROM meta WHERE key IN ('pid', 'pid_create_time', 'start', "
                                     "'rank', 'host')"))
        finally:
            conn.close()
    except (sqlite3.Error, OSError):
        meta = {}
    if not meta:
        return db.stem
    return hashlib.sha256(json.dumps(meta, sort_keys=True).encode()).hexdigest()[:16]


def _connect_ro(path: Path) -> sqlite3.Connection:
    uri = f"file:{quote(os.fsencode(path.resolve()))}?mode=ro"
    return sqlite3.connect(uri, uri=True, timeout=10)


# ---------------------------------------------------------------------- gpulens publish
def publish_run(run_dir: Path, url: str, state_dir: Path | None = None) -> RoundStats:
    """Upload a local run (``gpulens publish``): every database and trace, or what a publisher left undone."""
    from gpulens.profiler.store.members import read_entries, resolve
    from gpulens.profiler.store.reader import rank_status
    from gpulens.profiler.store.runstore import validate_run_id

    entries = read_entries(run_dir)
    if not entries:
        raise GpulensError(f"{run_dir}: not a gpulens run (no rank-N.db)")
    total = RoundStats()
    for member, entry in zip(resolve(entries), entries):
        run_id = entry.meta.get("job_run_id") if isinstance(entry.meta.get("job_run_id"), str) else run_dir.name
        target = Target(validate_run_id(str(run_id)), member.node, member.rank)
        status, reason = rank_status(entry.meta)
        patch = {"status": status, "error": reason} if status != entry.meta.get("status") else None
        p = Publisher(url, member.path, target, state_dir=state_dir)
        if not p.round(final=True, meta_patch=patch):
            raise GpulensError(f"cannot publish to {redact(url)}: {p.last_error}")
        total.objects += p.last.objects
        total.bytes += p.last.bytes
    return total


# ---------------------------------------------------------------------- the publisher process
@dataclass
class _Wanted:
    """What the training process said about where its database goes."""

    run_id: str
    node: int
    rank: int | None
    settled: bool  # the run id is the job's (False: waiting for the process group to say)
    auto: bool  # rank or node's sampler: decided by what the run folder shows (gpulens run's first process)


class _Agent:
    def __init__(self, config: dict[str, Any]) -> None:
        self.url = str(config["url"])
        self.db = Path(config["db"])
        self.trainer = int(config["trainer_pid"])
        self.trainer_created = config.get("trainer_create_time")
        self.wanted: _Wanted | None = None
        self.publisher = Publisher(self.url, self.db, None, float(config.get("budget_bps") or DEFAULT_BUDGET_BPS),
                                   float(config.get("every") or DEFAULT_EVERY_S))
        self._buf = b""
        self.final = False
        if config.get("target"):
            self._want(config["target"])
        from gpulens.profiler.store.request_relay import RequestRelay

        self.relay = RequestRelay(self.publisher.fs, self.publisher.base, self.db.parent, self.db.parent / STATE_DIR)
        self._relay_error: str | None = None

    def _want(self, spec: dict[str, Any]) -> None:
        rank = spec.get("rank")
        self.wanted = _Wanted(str(spec["run_id"]), int(spec.get("node") or 0), None if rank is None else int(rank),
                              bool(spec.get("settled", True)), bool(spec.get("auto", False)))

    def target(self, final: bool) -> Target | None:
        """Where the database goes now; None while it is not known yet (before the end)."""
        w = self.wanted
        if w is None or (not w.settled and not final):
            return None
        if not w.auto:
            return Target(w.run_id, w.node, w.rank)
        from gpulens.profiler.store.members import read_entries, resolve

        entries = read_entries(self.db.parent)
        for member, entry in zip(resolve(entries), entries):
            if member.path.name == self.db.name:
                if member.rank is None or entry.has_steps or final:
                    return Target(w.run_id, member.node, member.rank)
        return None

    def trainer_alive(self) -> bool:
        try:
            import psutil

            proc = psutil.Process(self.trainer)
            if self.trainer_created is not None and abs(proc.create_time() - float(self.trainer_created)) > 1.0:
                return False
            return bool(proc.status() != psutil.STATUS_ZOMBIE)
        except Exception:
            return False

    def messages(self, timeout: float) -> list[dict[str, Any]]:
        """Lines from the training process within ``timeout`` seconds; a closed pipe counts as nothing."""
        if b"\n" in self._buf:
            return self._lines()
        fd = sys.stdin.fileno()
        try:
            ready, _, _ = select.select([fd], [], [], max(timeout, 0.0))
        except (OSError, ValueError):
            time.sleep(max(timeout, 0.0))
            return []
        if not ready:
            return []
        chunk = os.read(fd, 65536)
        if not chunk:  # the training process closed its end (it exited): its liveness tells the rest
            time.sleep(max(timeout, 0.05))
            return []
        self._buf += chunk
        return self._lines()

    def _lines(self) -> list[dict[str, Any]]:
        out = []
        while b"\n" in self._buf:
            line, self._buf = self._buf.split(b"\n", 1)
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
        return out

    def run(self) -> int:
        log.info("publishing %s to %s for process %d", self.db, redact(self.url), self.trainer)
        next_round = time.monotonic() + self.publisher.every
        while True:
            for msg in self.messages(min(0.5, max(0.0, next_round - time.monotonic()))):
                if "target" in msg:
                    self._want(msg["target"])
                if msg.get("final"):
                    self.final = True
            if self.final:
                self._relay()  # the answers the run's close settled
                ok = self._round(final=True)
                _tell({"done": True, "ok": ok, "error": self.publisher.last_error})
                return 0 if ok else self._linger()
            if not self.trainer_alive():
                log.info("process %d is gone without closing its run: publishing what it recorded", self.trainer)
                patch = {"status": "crashed", "error": f"process {self.trainer} ended without closing the run "
                                                       "(killed or crashed)"}
                ok = self._round(final=True, meta_patch=patch, only_if_running=True)
                return 0 if ok else self._linger(patch)
            self._relay()
            if time.monotonic() >= next_round:
                self._round(final=False)
                next_round = time.monotonic() + self.publisher.interval()

    def _relay(self) -> None:
        """Profile requests asked through the store, and this rank's answers (request_relay.py); once the
        database's place in the store is known."""
        target = self.publisher.target
        if target is None:
            return
        try:
            copied, sent = self.relay.tick(target.run_id, target.rank)
            if copied or sent:
                log.info("requests: %d copied from the store, %d answers sent", copied, sent)
            self._relay_error = None
        except Exception as exc:  # the store's trouble: the next tick tries again (said once per kind)
            error = f"{type(exc).__name__}: {one_line(str(exc), 200)}"
            if error != self._relay_error:
                log.info("requests: relaying failed (%s)", redact(error))
            self._relay_error = error

    def _round(self, final: bool, meta_patch: dict[str, Any] | None = None, only_if_running: bool = False) -> bool:
        target = self.target(final)
        if target is None:
            return True
        if final:
            log.info("last round to %s/%s", redact(self.url), target.prefix)
        if only_if_running and _closed_status(self.db):
            meta_patch = None  # it closed after all (its last words reached the database)
        self.publisher.target = target
        return self.publisher.round(final=final, meta_patch=meta_patch)

    def _linger(self, meta_patch: dict[str, Any] | None = None) -> int:
        """The last round failed: try again with back-off for a while, in the background, then give up."""
        deadline = time.monotonic() + LINGER_S
        while time.monotonic() < deadline:
            time.sleep(min(self.publisher.interval(), max(0.0, deadline - time.monotonic())))
            if self.publisher.round(final=True, meta_patch=meta_patch):
                return 0
        log.warning("gpulens: gave up publishing %s to %s (%s); `gpulens publish %s %s` sends the rest",
                    self.db.parent.name, redact(self.url), self.publisher.last_error, self.db.parent,
                    redact(self.url))
        return 1


def _closed_status(db: Path) -> bool:
    try:
        conn = _connect_ro(db)
        try:
            row = conn.execute("SELECT value FROM meta WHERE key = 'status'").fetchone()
        finally:
            conn.close()
        return bool(row) and json.loads(row[0]) != "running"
    except (sqlite3.Error, ValueError):
        return False


def _tell(message: dict[str, Any]) -> None:
    """A line to the training process (gone already: nothing to tell)."""
    try:
        os.write(sys.stdout.fileno(), (json.dumps(message) + "\n").encode())
    except OSError:
        pass


class _ToTrainer(logging.Handler):
    """Warnings go to the training process, which shows them the way its own are shown; everything goes to
    the log file (``<run>/.publish/agent.log``, this process's stderr)."""

    def emit(self, record: logging.LogRecord) -> None:
        text = self.format(record)
        if record.levelno >= logging.WARNING:
            _tell({"warning": text})
        try:
            sys.stderr.write(f"{time.strftime('%H:%M:%S')} [{os.getpid()}] {text}\n")
            sys.stderr.flush()
        except (OSError, ValueError):
            pass


def agent_main() -> int:
    """``python -m gpulens.profiler.store.publisher``: the configuration comes as one JSON line on stdin
    (never in argv, where other users of the machine could read a store URL)."""
    buf = b""
    while b"\n" not in buf:  # unbuffered: what follows the first line (a final request) stays for the agent
        chunk = os.read(0, 65536)
        if not chunk:
            return 2
        buf += chunk
    first, rest = buf.split(b"\n", 1)
    try:
        config = json.loads(first)
    except ValueError:
        return 2
    if os.fork() > 0:  # the first process ends at once: the training process reaps it, the publisher is
        os._exit(0)    # nobody's child and the script's os.wait() never meets it
    try:
        os.nice(10)  # the training loop comes first
    except OSError:
        pass
    log.handlers[:] = [_ToTrainer()]
    log.setLevel(logging.INFO)
    log.propagate = False
    try:
        agent = _Agent(config)
        agent._buf = rest
        return agent.run()
    except Exception as exc:
        log.warning("gpulens: publishing stopped (%s: %s)", type(exc).__name__, one_line(str(exc), 200))
        return 1


# ---------------------------------------------------------------------- the training process's side
class PublisherProcess:
    """Starts the publisher process of one database and talks to it (never blocking the training loop)."""

    def __init__(self, url: str, db: Path, target: dict[str, Any], every: float, budget_bps: float,
                 env: dict[str, str] | None = None) -> None:
        import subprocess

        import psutil

        self.url = url
        self.db = Path(db)
        log_dir = self.db.parent / STATE_DIR
        log_dir.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ) if env is None else env
        with open(log_dir / "agent.log", "ab") as log_file:
            self._proc = subprocess.Popen([sys.executable, "-m", "gpulens.profiler.store.publisher"],
                                          stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log_file,
                                          start_new_session=True, env=env, cwd=str(self.db.parent))
        config = {"url": url, "db": str(self.db), "trainer_pid": os.getpid(),
                  "trainer_create_time": psutil.Process().create_time(), "every": every, "budget_bps": budget_bps,
                  "target": target}
        assert self._proc.stdin is not None and self._proc.stdout is not None
        self._in = self._proc.stdin.fileno()
        self._out = self._proc.stdout.fileno()
        self._send(config)
        self._done = threading.Event()
        self.result: dict[str, Any] | None = None
        threading.Thread(target=self._listen, name="gpulens-publisher-link", daemon=True).start()

    def _send(self, message: dict[str, Any]) -> bool:
        try:
            os.write(self._in, (json.dumps(message) + "\n").encode())
            return True
        except OSError:  # the publisher is gone; the run is complete locally all the same
            return False

    def _listen(self) -> None:
        """The publisher's lines: its warnings (shown here, while the script runs) and its last round's end."""
        try:
            self._proc.wait()  # the first process of the publisher ends at once
        except Exception:
            pass
        buf = b""
        while True:
            try:
                chunk = os.read(self._out, 65536)
            except OSError:
                break
            if not chunk:
                break
            buf += chunk
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                try:
                    msg = json.loads(line)
                except ValueError:
                    continue
                if msg.get("warning"):
                    log.warning("%s", msg["warning"])
                if msg.get("done"):
                    self.result = msg
                    self._done.set()
        self._done.set()

    def retarget(self, target: dict[str, Any]) -> None:
        self._send({"target": target})

    def close(self, timeout: float = CLOSE_WAIT_S) -> None:
        """The last round (the caller closed the database), waited for at most ``timeout`` seconds: a store that
        hangs must not hold the script's exit hostage; the publisher then finishes in the background."""
        if not self._send({"final": True}):
            return
        if not self._done.wait(timeout):
            log.warning("gpulens: the last publish to %s did not finish in %.0f s; it goes on in the background "
                        "(the run is complete locally in %s)", redact(self.url), timeout, self.db.parent)
        elif self.result is None:  # it ended without a word: it could not start (its log says why)
            log.warning("gpulens: the publisher to %s stopped early (see %s); the run is complete locally in %s "
                        "(gpulens publish sends it)", redact(self.url), self.db.parent / STATE_DIR / "agent.log",
                        self.db.parent)


#: Packages a store's protocol needs besides fsspec (the ones fsspec names for it).
_PROTOCOL_PACKAGES = {"s3": "s3fs", "s3a": "s3fs", "gs": "gcsfs", "gcs": "gcsfs", "az": "adlfs", "abfs": "adlfs",
                      "abfss": "adlfs"}


def _missing_packages(url: str) -> list[str]:
    """What the publisher process would fail to import for ``url``, found without importing it here (the
    training process never pays for pyarrow or s3fs)."""
    from importlib.util import find_spec

    protocol = url.split("://", 1)[0].lower()
    wanted = ["pyarrow", "fsspec", _PROTOCOL_PACKAGES.get(protocol)]
    return [name for name in wanted if name and find_spec(name) is None]


def start(url: str | None, db: Path, target: dict[str, Any], every: float | None = None,
          env: dict[str, str] | None = None) -> PublisherProcess | None:
    """The publisher process for ``url`` (else ``$GPULENS_STORE``); None when no store is configured or the
    process cannot start (one warning: recording goes on locally).  ``env``: the process's environment (the
    caller's own without what would make it record itself; default this process's)."""
    from gpulens.profiler.store.remote import ENV_STORE

    url = url or os.environ.get(ENV_STORE)
    if not url:
        return None
    try:
        every = every if every is not None else float(os.environ.get("GPULENS_PUBLISH_EVERY", DEFAULT_EVERY_S))
        budget = float(os.environ.get("GPULENS_PUBLISH_MBPS", DEFAULT_BUDGET_BPS / 1e6)) * 1e6
        missing = _missing_packages(url)  # now, in one line -- not a publisher that dies later
        if missing:
            raise GpulensError(f"run stores need {' and '.join(missing)} (pip install 'gpulens[store]')")
        return PublisherProcess(url, db, target, max(every, 0.2), budget, env)
    except (GpulensError, ValueError, OSError) as exc:
        log.warning("gpulens: not publishing to %s: %s; the run is recorded locally", redact(url), exc)
    return None


if __name__ == "__main__":
    sys.exit(agent_main())
