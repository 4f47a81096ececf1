"""Requests to a running job through its run folder: "profile the next N steps".

``gpulens profile`` (or the live page's button) writes one request file into
``RUN/requests/``; each rank's watcher (hooks/track/on_demand.py) reads the
folder twice a second, and answers with an acknowledgement file per rank
beside the request, which the asker reads to say what happened.  Files, not a
socket: the run folder is already where every rank writes, it needs no port
and no daemon, and a request for a job on another host travels the way the
run's own files do.

Every file is written whole (a temporary name, then ``os.replace``), so a
reader sees a request or an acknowledgement complete or not at all; one that
does not parse is not ours and is left alone.
"""
from __future__ import annotations

import json
import os
import re
import secrets
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

REQUESTS_DIR = "requests"
#: Steps one on-demand window may record (a trace of 50 steps of a large model is already hundreds of MB).
MAX_STEPS = 50
#: Statuses after which a rank does no more for a request.
FINAL = ("done", "failed", "refused")
#: A request no rank has answered for this long was never seen (a run without a watcher): it blocks nothing.
UNSEEN_AFTER_S = 60.0

_ID = re.compile(r"^[0-9]{8}-[0-9]{6}-[0-9a-f]{6}$")
_REQUEST = re.compile(r"^profile-(?P<id>[0-9]{8}-[0-9]{6}-[0-9a-f]{6})\.json$")
_ACK = re.compile(r"^profile-(?P<id>[0-9]{8}-[0-9]{6}-[0-9a-f]{6})\.rank-(?P<rank>[0-9]{1,6})\.json$")


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


@dataclass(frozen=True)
class Ack:
    """A rank's answer to a request: ``queued`` (seen, waits for a step boundary or a window that is running),
    ``profiling`` (steps ``first_step``-``last_step``), ``done`` (the trace at ``path``, relative to the run
    folder), ``failed`` or ``refused`` (with ``reason``)."""

    request: str
    rank: int
    status: str
    t: float
    window: int | None = None
    first_step: int | None = None
    last_step: int | None = None
    path: str | None = None
    memory_path: str | None = None
    reason: str | None = None

    @property
    def final(self) -> bool:
        return self.status in FINAL


def new_request(steps: int, ranks: tuple[int, ...] | None, memory: bool, source: str,
                at_step: int | None = None) -> ProfileRequest:
    now = time.time()
    rid = time.strftime("%Y%m%d-%H%M%S", time.localtime(now)) + "-" + secrets.token_hex(3)
    return ProfileRequest(rid, steps, ranks, memory, now, source, at_step)


def _write_whole(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data))
    os.replace(tmp, path)


def write_request(run_dir: Path, request: ProfileRequest) -> Path:
    folder = run_dir / REQUESTS_DIR
    folder.mkdir(exist_ok=True)
    path = folder / f"profile-{request.id}.json"
    _write_whole(path, {**asdict(request), "ranks": list(request.ranks) if request.ranks is not None else None})
    return path


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


def read_requests(run_dir: Path) -> list[ProfileRequest]:
    """The run's requests, oldest first (files that do not parse as one are skipped)."""
    out = []
    try:
        entries = list(os.scandir(run_dir / REQUESTS_DIR))
    except OSError:
        return []
    for entry in entries:
        match = _REQUEST.match(entry.name)
        if not match:
            continue
        try:
            request = _parse_request(match["id"], json.loads(Path(entry.path).read_text()))
        except (OSError, ValueError):
            continue
        if request is not None:
            out.append(request)
    return sorted(out, key=lambda r: r.asked_at)


def write_ack(run_dir: Path, ack: Ack) -> None:
    if not _ID.match(ack.request):
        raise ValueError(f"not a request id: {ack.request!r}")
    _write_whole(run_dir / REQUESTS_DIR / f"profile-{ack.request}.rank-{ack.rank}.json", asdict(ack))


def read_acks(run_dir: Path, request_id: str) -> dict[int, Ack]:
    """Each rank's latest answer to ``request_id``."""
    out: dict[int, Ack] = {}
    try:
        entries = list(os.scandir(run_dir / REQUESTS_DIR))
    except OSError:
        return out
    fields = set(Ack.__dataclass_fields__)
    for entry in entries:
        match = _ACK.match(entry.name)
        if not match or match["id"] != request_id:
            continue
        try:
            data = json.loads(Path(entry.path).read_text())
            ack = Ack(**{k: v for k, v in data.items() if k in fields})
        except (OSError, ValueError, TypeError):
            continue
        if ack.request == request_id and ack.rank == int(match["rank"]):
            out[ack.rank] = ack
    return out


def unanswered(run_dir: Path, ranks: list[int], since: float, now: float | None = None) -> ProfileRequest | None:
    """A request asked after ``since`` that some of ``ranks`` it wants have not finished with (the one a new
    request would race); one no rank answered within :data:`UNSEEN_AFTER_S` is not counted."""
    now = time.time() if now is None else now
    for request in read_requests(run_dir):
        if request.asked_at < since:
            continue
        acks = read_acks(run_dir, request.id)
        if not acks and now - request.asked_at > UNSEEN_AFTER_S:
            continue
        if any(request.wants(r) and not (r in acks and acks[r].final) for r in ranks):
            return request
    return None
