"""Runs in a shared store (S3, GCS, Azure, a shared filesystem): published by each rank, read through a cache.

SQLite must not be written over NFS or into a bucket, so every rank keeps
writing its local database exactly as before and a background
:class:`Publisher` copies a consistent snapshot of it (SQLite's backup API)
to ``<url>/<run id>/rank-N.db``, plus each new trace file, every
``every`` seconds and once at close.  An object is written whole: on object
stores a PUT is atomic, on a filesystem the copy goes to a temporary name
and is renamed.  A database is uploaded again only when it changed, a trace
only once.  A store that is down or refuses costs the run one warning and
retries with back-off; the training loop never waits on it.

Reading goes through :func:`sync_runs`, which mirrors a store's runs into a
local cache directory and fetches only objects whose size or ETag changed;
everything that reads a runs root (report, advise, ls, the dashboard) then
works on the cache.  URLs are anything fsspec opens (``s3://`` through s3fs
with the standard ``AWS_ENDPOINT_URL`` / credential variables, ``gs://``,
``az://``, ``file:///shared/runs``).
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import sqlite3
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gpulens.profiler.errors import GpulensError

log = logging.getLogger("gpulens")

ENV_STORE = "GPULENS_STORE"
DEFAULT_EVERY_S = 10.0
MAX_BACKOFF_S = 60.0
#: Average upload rate a publisher allows itself (bytes/s, ``GPULENS_PUBLISH_MBPS`` in MB/s): a snapshot is a
#: whole database, and a multi-node job's network belongs to its all-reduces -- a 1 GB database is then
#: published every 1,000 s, not every 10 s.
DEFAULT_BUDGET_BPS = 1e6


def is_url(text: object) -> bool:
    return isinstance(text, str) and "://" in text


def _filesystem(url: str) -> tuple[Any, str]:
    """(fsspec filesystem, path inside it) for ``url``; one-line error when the protocol's package is missing."""
    try:
        import fsspec
    except ImportError:
        raise GpulensError("run stores need fsspec: pip install 'gpulens[store]'") from None
    try:
        fs, path = fsspec.core.url_to_fs(url)
    except (ImportError, ValueError) as exc:
        raise GpulensError(f"{url}: cannot open this store ({exc}); for s3:// install s3fs "
                           "(pip install 'gpulens[store]')") from None
    return fs, str(path).rstrip("/")


def _is_local(fs: Any) -> bool:
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    return protocol in ("file", "local")


def put_whole(fs: Any, local: Path, remote: str) -> None:
    """Upload ``local`` so that readers see the old object or the new one, never half of it."""
    parent = remote.rsplit("/", 1)[0]
    if _is_local(fs):
        fs.makedirs(parent, exist_ok=True)
        tmp = f"{remote}.part-{os.getpid()}"
        fs.put_file(str(local), tmp)
        fs.mv(tmp, remote)
    else:
        fs.put_file(str(local), remote)  # an object PUT is atomic


def snapshot(db: Path, dest: Path) -> None:
    """A consistent copy of a live rank database (readers of a WAL database never block its writer)."""
    src = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5.0)
    try:
        out = sqlite3.connect(str(dest))
        try:
            src.backup(out)
        finally:
            out.close()
    finally:
        src.close()


@dataclass
class PublishStats:
    uploads: int = 0
    bytes: int = 0
    skipped: int = 0  # rounds with nothing new
    failures: int = 0
    last_ok: float | None = None


@dataclass
class Publisher:
    """Copies one rank's database and new traces to ``<url>/<run id>/`` in the background."""

    url: str
    run_dir: Path
    db: Path
    every: float = DEFAULT_EVERY_S
    budget_bps: float = DEFAULT_BUDGET_BPS
    background: bool = True  # False: no thread, rounds only when called (gpulens publish)
    stats: PublishStats = field(default_factory=PublishStats)
    last_size: int = 0  # bytes of the last database snapshot sent

    def __post_init__(self) -> None:
        self._fs, base = _filesystem(self.url)
        self._remote = f"{base}/{self.run_dir.name}"
        self._seen: tuple[int, int] | None = None  # (size, mtime) of db + wal at the last upload
        self._traces: set[str] = set()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._warned = False
        self._backoff = 0.0
        self._thread = threading.Thread(target=self._loop, name="gpulens-publisher", daemon=True)
        if self.background:
            self._thread.start()

    # ------------------------------------------------------------------ rounds
    def _fingerprint(self) -> tuple[int, int]:
        size, mtime = 0, 0
        for p in (self.db, Path(f"{self.db}-wal")):
            try:
                st = p.stat()
                size, mtime = size + st.st_size, max(mtime, st.st_mtime_ns)
            except OSError:
                pass
        return size, mtime

    def publish_once(self) -> bool:
        """One round: the database if it changed, traces not sent yet.  False when the store failed."""
        with self._lock:
            try:
                sent = False
                fp = self._fingerprint()
                if fp != self._seen:
                    with tempfile.TemporaryDirectory(prefix="gpulens-publish-") as tmp:
                        copy = Path(tmp) / self.db.name
                        snapshot(self.db, copy)
                        put_whole(self._fs, copy, f"{self._remote}/{self.db.name}")
                        self.last_size = copy.stat().st_size
                        self.stats.bytes += self.last_size
                        self.stats.uploads += 1
                    self._seen, sent = fp, True
                traces = self.run_dir / "traces"
                for trace in sorted(traces.glob(f"rank-{self._rank()}.*")) if traces.is_dir() else []:
                    if trace.name in self._traces or trace.name.endswith((".tmp", ".part")):
                        continue
                    put_whole(self._fs, trace, f"{self._remote}/traces/{trace.name}")
                    self._traces.add(trace.name)
                    self.stats.bytes += trace.stat().st_size
                    self.stats.uploads += 1
                    sent = True
                if not sent:
                    self.stats.skipped += 1
                self.stats.last_ok = time.time()
                self._backoff = 0.0
                return True
            except Exception as exc:  # a store that is down, slow or refuses: the run goes on locally
                self.stats.failures += 1
                self._backoff = min(max(self._backoff * 2, self.every), MAX_BACKOFF_S)
                if not self._warned:
                    self._warned = True
                    log.warning("gpulens: cannot publish to %s (%s: %s); the run is complete locally in %s, "
                                "retrying with back-off", self.url, type(exc).__name__, str(exc)[:200],
                                self.run_dir)
                return False

    def _rank(self) -> str:
        return self.db.stem.split("-", 1)[1]

    def interval(self) -> float:
        """Seconds to the next round: ``every``, stretched so snapshots average at most ``budget_bps``."""
        return max(self.every, self.last_size / self.budget_bps if self.budget_bps > 0 else 0.0) + self._backoff

    def _loop(self) -> None:
        while not self._stop.wait(self.interval()):
            self.publish_once()

    def close(self, timeout: float = 30.0) -> None:
        """A last round with the final status (the caller has closed the database).

        At most ``timeout`` seconds in all: a store that hangs must not hold the script's exit hostage
        (the local run is complete either way)."""
        deadline = time.monotonic() + timeout
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=timeout)
        last = threading.Thread(target=self.publish_once, name="gpulens-publisher-last", daemon=True)
        last.start()
        last.join(timeout=max(deadline - time.monotonic(), 1.0))
        if last.is_alive():
            log.warning("gpulens: the last publish to %s did not finish in %.0f s; the run is complete locally "
                        "in %s (gpulens publish uploads it later)", self.url, timeout, self.run_dir)


def start_publisher(url: str | None, run_dir: Path, db: Path, every: float | None = None) -> Publisher | None:
    """A publisher for ``url`` (else ``$GPULENS_STORE``), or None when no store is configured or it cannot
    be opened (one warning: recording goes on)."""
    url = url or os.environ.get(ENV_STORE)
    if not url:
        return None
    try:
        every = every if every is not None else float(os.environ.get("GPULENS_PUBLISH_EVERY", DEFAULT_EVERY_S))
        budget = float(os.environ.get("GPULENS_PUBLISH_MBPS", DEFAULT_BUDGET_BPS / 1e6)) * 1e6
        return Publisher(url, run_dir, db, every=max(every, 0.2), budget_bps=budget)
    except (GpulensError, ValueError) as exc:
        log.warning("gpulens: not publishing to %s: %s", url, exc)
        return None


def publish_run(run_dir: Path, url: str) -> PublishStats:
    """Upload a finished local run (``gpulens publish``): every rank database and trace."""
    from gpulens.profiler.store.runstore import rank_dbs

    dbs = rank_dbs(run_dir)
    if not dbs:
        raise GpulensError(f"{run_dir}: not a gpulens run (no rank-N.db)")
    total = PublishStats()
    for db in dbs.values():
        p = Publisher(url, run_dir, db, background=False)
        ok = p.publish_once()
        if not ok:
            raise GpulensError(f"cannot publish to {url}: see the warning above")
        total.uploads += p.stats.uploads
        total.bytes += p.stats.bytes
    return total


# ---------------------------------------------------------------------- reading
def cache_root() -> Path:
    base = os.environ.get("GPULENS_CACHE") or os.path.join(os.environ.get("XDG_CACHE_HOME")
                                                           or os.path.expanduser("~/.cache"), "gpulens")
    return Path(base) / "stores"


def cache_dir_for(url: str) -> Path:
    """Where a store's runs are mirrored locally (one folder per store URL)."""
    base = url.rstrip("/")
    return cache_root() / hashlib.sha256(base.encode()).hexdigest()[:16]


def _tag(info: dict[str, Any]) -> str:
    """What says an object changed: its ETag where the store gives one, else size and mtime."""
    for key in ("ETag", "etag", "md5"):
        if info.get(key):
            return str(info[key]).strip('"')
    return f"{info.get('size')}:{info.get('mtime') or info.get('LastModified') or info.get('last_modified')}"


@dataclass
class SyncStats:
    fetched: int = 0
    bytes: int = 0
    unchanged: int = 0


def sync_runs(url: str, only: str | None = None, dest: Path | None = None) -> tuple[Path, SyncStats]:
    """Mirror the runs under store ``url`` (or just run ``only``) into the local cache; fetch changed objects.

    Returns the local runs root and what was fetched.  Each object is downloaded to a temporary name and
    renamed, so a reader of the cache never sees half a database.
    """
    fs, base = _filesystem(url)
    root = dest or cache_dir_for(url)
    root.mkdir(parents=True, exist_ok=True)
    index_path = root / ".index.json"
    try:
        index: dict[str, str] = json.loads(index_path.read_text())
    except (OSError, ValueError):
        index = {}
    stats = SyncStats()
    try:
        runs = [only] if only else [Path(p.rstrip("/")).name for p in fs.ls(base, detail=False)]
    except FileNotFoundError:
        raise GpulensError(f"{url}: no such store (or it is empty)") from None
    except Exception as exc:
        raise GpulensError(f"{url}: cannot list the store ({type(exc).__name__}: {str(exc)[:200]})") from None
    for run in runs:
        if not run or run.startswith(".") or "/" in run or run in ("..",):
            continue
        try:
            found = fs.find(f"{base}/{run}", detail=True)
        except FileNotFoundError:
            if only:
                raise GpulensError(f"{url}/{run}: no such run in the store") from None
            continue
        for remote, info in found.items():
            rel = remote[len(base) + 1:]
            name = rel.rsplit("/", 1)[-1]
            if ".part-" in name or not (name.endswith(".db") or "/traces/" in f"/{rel}"):
                continue
            local = root / rel
            if root.resolve() not in local.resolve().parents:  # never write outside the cache
                continue
            tag = _tag(info)
            if index.get(rel) == tag and local.exists():
                stats.unchanged += 1
                continue
            local.parent.mkdir(parents=True, exist_ok=True)
            tmp = local.with_name(local.name + ".fetch")
            fs.get_file(remote, str(tmp))
            os.replace(tmp, local)
            index[rel] = tag
            stats.fetched += 1
            stats.bytes += local.stat().st_size
    tmp_index = index_path.with_suffix(".tmp")
    tmp_index.write_text(json.dumps(index))
    os.replace(tmp_index, index_path)
    return root, stats


def local_run(arg: str) -> Path:
    """A run argument as a local directory: a store URL ``<store>/<run id>`` is fetched into the cache."""
    if not is_url(arg):
        return Path(arg)
    store, _, run = arg.rstrip("/").rpartition("/")
    root, _ = sync_runs(store, only=run)
    return root / run


def start_mirror(url: str, every: float = 5.0, stop: threading.Event | None = None) -> Path:
    """The local mirror of store ``url`` for the dashboard, kept fresh by a background thread (new runs and
    new snapshots of live ones appear on the page as they are published) until ``stop`` is set."""
    root, _ = sync_runs(url)
    stop = stop or threading.Event()

    def loop() -> None:
        while not stop.wait(every):
            try:
                sync_runs(url)
            except GpulensError as exc:
                log.warning("gpulens: refreshing %s failed: %s", url, exc)

    threading.Thread(target=loop, name="gpulens-store-mirror", daemon=True).start()
    return root
