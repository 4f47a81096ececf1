"""Requests to a running job through its run folder: "profile the next N steps".

``gpulens profile`` (or the live page's button) writes one request file into
``RUN/requests/``; each rank's watcher (hooks/track/on_demand.py) reads the
folder twice a second, and answers with an acknowledgement file per rank
beside the request, which the asker reads to say what happened.  Files, not a
socket: the run folder is already where every rank writes, it needs no port
and no daemon, and a request for a job on another host travels the way the
run's own files do.

Every file is written whole (a temporary name, then ``os.replace``; an object
PUT in a store), so a reader sees a request or an acknowledgement complete or
not at all; one that does not parse is not ours and is left alone.

A run in a store is asked through the store: the request goes to
``STORE/RUN/requests/``, and each node's publisher relays it into the local
run folder and this rank's answers back (profiler/store/request_relay.py).
Both places are a :class:`Folder`, so the functions here read and write either.
"""
from __future__ import annotations

import json
import os
import re
import secrets
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

REQUESTS_DIR = "requests"
#: Steps one on-demand window may record (a trace of 50 steps of a large model is already hundreds of MB).
MAX_STEPS = 50
#: Statuses after which a rank does no more for a request.
FINAL = ("done", "failed", "refused")
#: A request no rank has answered for this long was never seen (a run without a watcher): it blocks nothing.
UNSEEN_AFTER_S = 60.0

_ID = re.compile(r"^[0-9]{8}-[0-9]{6}-[0-9a-f]{6}$")
REQUEST_NAME = re.compile(r"^profile-(?P<id>[0-9]{8}-[0-9]{6}-[0-9a-f]{6})\.json$")
ACK_NAME = re.compile(r"^profile-(?P<id>[0-9]{8}-[0-9]{6}-[0-9a-f]{6})\.rank-(?P<rank>[0-9]{1,6})\.json$")
#: The largest request or answer file read (both are a few hundred bytes; anything bigger is not ours).
MAX_FILE_BYTES = 64 << 10


class Folder(Protocol):
    """Where requests and answers are kept: a run folder's ``requests/`` or a store's ``RUN/requests/``."""

    def listing(self) -> dict[str, str]:
        """File name -> a version that changes when the file does (empty when the folder does not exist)."""

    def read(self, name: str) -> bytes:
        """The file's bytes (OSError when it is gone or too big)."""

    def write(self, name: str, data: bytes) -> None:
        """Replace the file whole."""


@dataclass(frozen=True)
class LocalFolder:
    path: Path

    def listing(self) -> dict[str, str]:
        out: dict[str, str] = {}
        try:
            entries = list(os.scandir(self.path))
        except OSError:
            return out
        for entry in entries:
            try:
                st = entry.stat(follow_symlinks=False)
            except OSError:
                continue
            out[entry.name] = f"{st.st_mtime_ns}:{st.st_size}"
        return out

    def read(self, name: str) -> bytes:
        with open(self.path / name, "rb") as fh:
            data = fh.read(MAX_FILE_BYTES + 1)
        if len(data) > MAX_FILE_BYTES:
            raise OSError(f"{name}: larger than a request")
        return data

    def write(self, name: str, data: bytes) -> None:
        self.path.mkdir(exist_ok=True)
        tmp = self.path / f".{name}.{os.getpid()}.tmp"
        tmp.write_bytes(data)
        os.replace(tmp, self.path / name)


@dataclass(frozen=True)
class StoreFolder:
    """``<store>/<run id>/requests/`` through fsspec (one LIST per :meth:`listing`, one GET per read)."""

    fs: Any
    path: str

    def listing(self) -> dict[str, str]:
        try:
            self.fs.invalidate_cache(self.path)  # fsspec keeps listings per process: a poll must see new objects
            entries = self.fs.ls(self.path, detail=True)
        except FileNotFoundError:
            return {}
        out = {}
        for e in entries:
            if e.get("type") not in (None, "file"):
                continue
            name = str(e["name"]).rstrip("/").rsplit("/", 1)[-1]
            out[name] = str(e.get("ETag") or e.get("etag") or f"{e.get('mtime') or e.get('LastModified')}:"
                                                                 f"{e.get('size')}")
        return out

    def read(self, name: str) -> bytes:
        data: bytes = self.fs.cat_file(f"{self.path}/{name}", start=0, end=MAX_FILE_BYTES + 1)
        if len(data) > MAX_FILE_BYTES:
            raise OSError(f"{name}: larger than a request")
        return data

    def write(self, name: str, data: bytes) -> None:
        from gpulens.profiler.store.remote import is_local

        if is_local(self.fs):  # a shared folder: written beside, then renamed (an object PUT is whole already)
            self.fs.makedirs(self.path, exist_ok=True)
            tmp = f"{self.path}/.{name}.{os.getpid()}.tmp"
            self.fs.pipe_file(tmp, data)
            self.fs.mv(tmp, f"{self.path}/{name}")
        else:
            self.fs.pipe_file(f"{self.path}/{name}", data)


def folder(where: Path | Folder) -> Folder:
    """A run folder's requests (a path is the run folder), or the folder given."""
    return LocalFolder(where / REQUESTS_DIR) if isinstance(where, Path) else where


def store_folder(fs: Any, base: str, run_id: str) -> StoreFolder:
    return StoreFolder(fs, f"{base}/{run_id}/{REQUESTS_DIR}")


@dataclass(frozen=True)
class ProfileRequest:
    """Profile the next ``steps`` steps on ``ranks`` (None: every rank); ``memory``: a CUDA allocator snapshot
    at the next step boundary as well."""

    id: str
    steps: int
    ranks: tuple[int, ...] | None
    memory: bool
    asked_at: float
    source: str  # cli | dashboard
    at_step: int | None = None  # the first step to record (several ranks: the same steps on each), else the next

    def wants(self, rank: int) -> bool:
        return self.ranks is None or rank in self.ranks


@dataclass
class Progress:
    """How far a request got on one rank: ``queued`` (seen, waits for a step boundary or a window that is
    running), ``profiling`` (steps ``first_step``-``last_step``), ``done`` (the trace at ``path``, relative to
    the run folder), ``failed`` or ``refused`` (with ``reason``).  The profiler's windows keep one per demand
    (hooks/track/profiling.py); an :class:`Ack` is one written down."""

    status: str = "queued"
    window: int | None = None
    first_step: int | None = None
    last_step: int | None = None
    path: str | None = None
    memory_path: str | None = None
    reason: str | None = None

    @property
    def final(self) -> bool:
        return self.status in FINAL


@dataclass(kw_only=True)
class Ack(Progress):
    """A rank's answer to a request, as the file ``profile-ID.rank-R.json`` holds it."""

    request: str
    rank: int
    t: float

    @classmethod
    def of(cls, request: str, rank: int, progress: Progress, t: float | None = None) -> Ack:
        fields = {name: getattr(progress, name) for name in Progress.__dataclass_fields__}
        return cls(request=request, rank=rank, t=time.time() if t is None else t, **fields)


def new_request(steps: int, ranks: tuple[int, ...] | None, memory: bool, source: str,
                at_step: int | None = None) -> ProfileRequest:
    now = time.time()
    rid = time.strftime("%Y%m%d-%H%M%S", time.localtime(now)) + "-" + secrets.token_hex(3)
    return ProfileRequest(rid, steps, ranks, memory, now, source, at_step)


def write_request(where: Path | Folder, request: ProfileRequest) -> str:
    """Ask (``where``: the run folder, or a store's folder); the request file's name."""
    name = f"profile-{request.id}.json"
    data = {**asdict(request), "ranks": list(request.ranks) if request.ranks is not None else None}
    folder(where).write(name, json.dumps(data).encode())
    return name


def _parse_request(rid: str, data: Any) -> ProfileRequest | None:
    if not isinstance(data, dict) or data.get("id") != rid:
        return None
    steps, ranks, asked = data.get("steps"), data.get("ranks"), data.get("asked_at")
    if not isinstance(steps, int) or isinstance(steps, bool) or not 1 <= steps <= MAX_STEPS:
        return None
    if ranks is not None and not (isinstance(ranks, list) and all(isinstance(r, int) and r >= 0 for r in ranks)):
        return None
    if not isinstance(asked, (int, float)):
        return None
    at = data.get("at_step")
    if at is not None and (not isinstance(at, int) or isinstance(at, bool) or at < 1):
        return None
    return ProfileRequest(rid, steps, tuple(ranks) if ranks is not None else None, bool(data.get("memory")),
                          float(asked), str(data.get("source") or "cli"), at)


def read_requests(where: Path | Folder) -> list[ProfileRequest]:
    """The requests, oldest first (files that do not parse as one are skipped)."""
    box = folder(where)
    out = []
    for name in box.listing():
        match = REQUEST_NAME.match(name)
        if not match:
            continue
        try:
            request = _parse_request(match["id"], json.loads(box.read(name)))
        except (OSError, ValueError):
            continue
        if request is not None:
            out.append(request)
    return sorted(out, key=lambda r: r.asked_at)


def ack_name(request_id: str, rank: int) -> str:
    if not _ID.match(request_id):
        raise ValueError(f"not a request id: {request_id!r}")
    return f"profile-{request_id}.rank-{rank}.json"


def write_ack(where: Path | Folder, ack: Ack) -> None:
    folder(where).write(ack_name(ack.request, ack.rank), json.dumps(asdict(ack)).encode())


def read_acks(where: Path | Folder, request_id: str,
              seen: dict[str, tuple[str, Ack]] | None = None) -> dict[int, Ack]:
    """Each rank's latest answer to ``request_id``.  ``seen`` (name -> (version, answer)), kept by a caller that
    polls: an answer whose file did not change is not read again (a store's answers cost a GET each)."""
    box = folder(where)
    seen = {} if seen is None else seen
    out: dict[int, Ack] = {}
    fields = set(Ack.__dataclass_fields__)
    for name, version in box.listing().items():
        match = ACK_NAME.match(name)
        if not match or match["id"] != request_id:
            continue
        if name in seen and seen[name][0] == version:
            out[seen[name][1].rank] = seen[name][1]
            continue
        try:
            data = json.loads(box.read(name))
            ack = Ack(**{k: v for k, v in data.items() if k in fields})
        except (OSError, ValueError, TypeError):
            continue
        if ack.request == request_id and ack.rank == int(match["rank"]):
            out[ack.rank] = ack
            seen[name] = (version, ack)
    return out


def unanswered(where: Path | Folder, ranks: list[int], since: float, now: float | None = None,
               unseen_after: float = UNSEEN_AFTER_S) -> ProfileRequest | None:
    """A request asked after ``since`` that some of ``ranks`` it wants have not finished with (the one a new
    request would race); one no rank answered within ``unseen_after`` seconds is not counted."""
    now = time.time() if now is None else now
    for request in read_requests(where):
        if request.asked_at < since:
            continue
        acks = read_acks(where, request.id)
        if not acks and now - request.asked_at > unseen_after:
            continue
        if any(request.wants(r) and not (r in acks and acks[r].final) for r in ranks):
            return request
    return None
