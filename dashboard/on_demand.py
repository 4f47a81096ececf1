"""The live page's "Profile next N steps": who may ask, and asking (through ``gpulens profile``'s own checks).

Asking changes what a running job does, so it is allowed where the dashboard
already trusts its users: behind its authentication, or on loopback only.  A
dashboard that serves names beyond loopback without authentication (a
reverse proxy in front of ``--allow-host``) shows the button off.  A
dashboard of a store (``gpulens dashboard s3://...``) asks its runs through
the store, as ``gpulens profile STORE/RUN`` does.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from gpulens.dashboard.security import LOOPBACK_NAMES, Access
from gpulens.profiler.errors import GpulensError
from gpulens.profiler.store.mirror import STATE_FILE
from gpulens.profiler.store.requests import MAX_STEPS, Ack, Folder, ProfileRequest, read_acks

ACCESS_KEY = "GPULENS_ACCESS"
STORE_KEY = "GPULENS_STORE_URL"
#: The answers read so far, per request (a store's cost a GET each; the page polls once a second).
_SEEN: dict[str, dict[str, tuple[str, Ack]]] = {}


def store_run(run_dir: Path, store: str | None) -> str | None:
    """``STORE/RUN`` of a run this dashboard mirrors from ``store`` (None: a run folder of its own)."""
    return f"{store.rstrip('/')}/{run_dir.name}" if store and (run_dir / STATE_FILE).exists() else None


def why_not(access: Access | None, run_dir: Path, status: str, store: str | None = None) -> str | None:
    """Why this dashboard may not ask this run for a window (None: it may)."""
    if status != "running":
        return f"the run is {status}"
    if (run_dir / STATE_FILE).exists() and not store:
        return "a run mirrored from a store: ask on the machine that trains it (gpulens profile)"
    access = access or Access()
    if not access.needs_auth and any(h not in LOOPBACK_NAMES for h in access.allowed_hosts):
        return ("this dashboard serves other hosts without authentication: asking a job to profile is off "
                "(serve with --auth-file or --token-file, or run gpulens profile)")
    return None


def ask(access: Access | None, run_dir: Path, status: str, steps: Any,
        store: str | None = None) -> tuple[ProfileRequest, list[int]]:
    """A request for every running rank's next ``steps`` steps, and those ranks; GpulensError (one line) when it
    may not go."""
    from gpulens import profile_request

    reason = why_not(access, run_dir, status, store)
    if reason:
        raise GpulensError(reason)
    if not isinstance(steps, (int, float)) or isinstance(steps, bool) or int(steps) != steps:
        raise GpulensError(f"steps must be a whole number 1-{MAX_STEPS}")
    url = store_run(run_dir, store)
    target = (profile_request.check_store(url, int(steps), "all", False) if url else
              profile_request.check(run_dir, int(steps), "all", False))
    return profile_request.ask(target, int(steps), False, source="dashboard"), list(target.ranks)


def progress(run_dir: Path, request: dict[str, Any], store: str | None = None) -> tuple[str, bool]:
    """(one line per rank of the request's answers so far, whether every rank is done with it)."""
    from gpulens import profile_request

    rid, ranks = request.get("id"), request.get("ranks") or []
    if not isinstance(rid, str):
        return "", True
    url = store_run(run_dir, store)
    where: Path | Folder = profile_request.store_box(url) if url else run_dir
    if len(_SEEN) > 32 and rid not in _SEEN:
        _SEEN.clear()
    acks: dict[int, Ack] = read_acks(where, rid, _SEEN.setdefault(rid, {}))
    parts = []
    for rank in ranks:
        ack = acks.get(rank)
        if ack is None:
            parts.append(f"rank {rank}: asked")
        elif ack.status == "done":
            parts.append(f"rank {rank}: steps {ack.first_step}-{ack.last_step} recorded")
        elif ack.status == "profiling":
            parts.append(f"rank {rank}: profiling steps {ack.first_step}-{ack.last_step}")
        else:
            parts.append(f"rank {rank}: {ack.status}" + (f" ({ack.reason})" if ack.reason else ""))
    finished = bool(ranks) and all(r in acks and acks[r].final for r in ranks)
    return " · ".join(parts), finished
