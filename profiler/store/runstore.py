"""Where runs live: the runs root, run ids, and keeping paths inside the root.

A run is a directory directly under the runs root holding one SQLite database
per rank (``rank-0.db``, ``rank-1.db``, ...).  Run ids come from users and
from the network (the dashboard's URLs), so every id is validated and every
resolved path is checked to stay inside the root.
"""
from __future__ import annotations

import os
import re
import secrets
import time
from pathlib import Path

from gpulens.profiler.errors import GpulensError, RunError

DEFAULT_RUNS_DIR = "gpulens-runs"
#: In a run mirrored from a store: why its objects there cannot be read (the run is listed as broken).
STORE_ERROR_FILE = ".store-error"
#: A finished run's report kept beside it (analysis/report_cache.py): derived and local, never sent to a store
#: nor taken from one.
KEPT_REPORT_FILE = ".gpulens-report.json"
ENV_RUNS_DIR = "GPULENS_DIR"
_RANK_DB = re.compile(r"^rank-(\d{1,6})\.db$")
_MEMBER_DB = re.compile(r"^(?:rank|node)-\d{1,6}\.db$")
_RUN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def runs_root(explicit: str | os.PathLike[str] | None = None) -> Path:
    """The runs root: an explicit argument, else ``$GPULENS_DIR``, else ./gpulens-runs."""
    if explicit:
        return Path(explicit).expanduser()
    env = os.environ.get(ENV_RUNS_DIR)
    if env:
        return Path(env).expanduser()
    return Path.cwd() / DEFAULT_RUNS_DIR


def slug(name: str) -> str:
    """A run-id-safe version of a free-form run name."""
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-._")
    return (cleaned or "run")[:64]


def new_run_id(name: str) -> str:
    """``<name>-<YYYYmmdd-HHMMSS>-<6 hex>``: sortable, readable, unlikely to collide."""
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime())
    return f"{slug(name)}-{stamp}-{secrets.token_hex(3)}"


def validate_run_id(run_id: str) -> str:
    if not _RUN_ID.match(run_id) or ".." in run_id:
        raise GpulensError(
            f"invalid run id {run_id!r}: use letters, digits, '.', '_' and '-' "
            "(no path separators, no '..')"
        )
    return run_id


def run_dir_in(root: Path, run_id: str) -> Path:
    """The directory of ``run_id`` under ``root``, refusing anything outside it."""
    validate_run_id(run_id)
    root_resolved = root.resolve()
    path = (root_resolved / run_id).resolve()
    if path.parent != root_resolved:
        raise GpulensError(f"run id {run_id!r} escapes the runs root {root}")
    return path


def rank_db_name(rank: int) -> str:
    return f"rank-{int(rank)}.db"


def rank_dbs(run_dir: Path) -> dict[int, Path]:
    """Rank number -> database path for every rank database in ``run_dir``."""
    out: dict[int, Path] = {}
    try:
        entries = list(run_dir.iterdir())
    except OSError:
        return out
    for entry in entries:
        match = _RANK_DB.match(entry.name)
        if match and entry.is_file():
            out[int(match.group(1))] = entry
    return dict(sorted(out.items()))


def member_dbs(run_dir: Path) -> list[Path]:
    """Every database of a run: its ranks' (``rank-N.db``) and its nodes' sampling processes' (``node-N.db``);
    which is which rank is decided by :func:`gpulens.profiler.store.members.resolve`."""
    try:
        entries = list(run_dir.iterdir())
    except OSError:
        return []
    return sorted(e for e in entries if _MEMBER_DB.match(e.name) and e.is_file())


def is_run_dir(path: Path) -> bool:
    return path.is_dir() and bool(member_dbs(path))


def list_runs(root: Path) -> list[Path]:
    """Run directories directly under ``root``, newest first (by directory mtime)."""
    try:
        children = [p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")]
    except OSError:
        return []
    runs = [p for p in children if is_run_dir(p)]

    def mtime(p: Path) -> float:
        try:
            return p.stat().st_mtime
        except OSError:
            return 0.0

    return sorted(runs, key=mtime, reverse=True)


def resolve_run(arg: str, root: Path | None = None) -> Path:
    """Turn a CLI argument into a run directory.

    Accepts a path to a run directory, a path to one of its rank databases, or
    a run id under the runs root.  Anything else is a one-line error.
    """
    candidate = Path(arg).expanduser()
    if candidate.is_file():
        if _MEMBER_DB.match(candidate.name):
            return candidate.parent
        raise RunError(candidate, "not a gpulens run (expected a run directory or a rank-N.db file)")
    if candidate.is_dir():
        if is_run_dir(candidate):
            return candidate
        raise RunError(candidate, "not a gpulens run (no rank-N.db inside)")
    base = root if root is not None else runs_root()
    try:
        path = run_dir_in(base, arg)
    except GpulensError:
        raise RunError(arg, "no such run directory") from None
    if is_run_dir(path):
        return path
    raise RunError(arg, f"no such run (looked in {candidate.resolve()} and under {base})")
