"""A settled run's ``report --json`` kept beside it, so asking again prints it instead of recomputing it.

A report is a pure function of the run's files, but computing it means
starting numpy, the reader and the summary: ~0.3 s on a small run before any
figure, every time.  ``<run>/.gpulens-report.json`` holds the printed JSON
with a key: the gpulens version, the run's absolute path (the report prints
it), the trace-size limit the analysis ran under, and a digest of the name,
size and modification time of every file of the run and of gpulens' own
modules.  Any run file added, removed or rewritten, or another gpulens (an
upgrade, or an edit in a checkout), reads as no cache.

Only a *settled* run is kept: finished, failed or interrupted, as its
processes wrote it.  A running run changes by the second, and a crashed
one's status is the reader's guess from the clock and the process table
(``no heartbeat for 93 s``): both are computed every time.

This module imports nothing but the standard library, so the CLI can look
here before it loads what a computed report needs.  Writing is best effort
(a read-only run is computed every time) and atomic.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gpulens.profiler.store.runstore import KEPT_REPORT_FILE

log = logging.getLogger("gpulens")

FILE = KEPT_REPORT_FILE
#: Statuses a run's own processes wrote when they closed: the report of such a run changes only with its files.
SETTLED = frozenset({"finished", "failed", "interrupted"})
#: What the key leaves out: this file, SQLite's shared-memory index (readers touch it), analyses gpulens keeps
#: beside traces (derived from the traces, which are in the key), temporary files, a publisher's own state.
_IGNORED_SUFFIXES = ("-shm", ".gpulens-analysis.json", ".tmp")
_IGNORED_DIRS = frozenset({".publish"})
_MAX_FILES = 100_000  # a folder with more is not fingerprinted (the walk would cost what the cache saves)
_CONTROL = re.compile(r"[\x00-\x09\x0b-\x1f\x7f]")  # printed as it is: no terminal escape gets through
_ENV_MAX_TRACE = "GPULENS_MAX_TRACE_BYTES"  # the analysis' trace-size limit (trace/source.py): can fail a window


def _stats(roots: list[Path], wanted: Callable[[str], bool], skip_dirs: frozenset[str]) -> str | None:
    """One digest of the relative path, size and modification time of every wanted file under ``roots``."""
    seen: set[str] = set()
    rows: list[tuple[str, int, int]] = []
    for root in roots:
        pending = [root]
        while pending:
            folder = pending.pop()
            with os.scandir(folder) as entries:
                for e in entries:
                    if e.is_dir(follow_symlinks=False):
                        if e.name not in skip_dirs:
                            pending.append(Path(e.path))
                    elif wanted(e.name) and e.path not in seen:
                        seen.add(e.path)
                        st = e.stat()
                        rows.append((os.path.relpath(e.path, root), st.st_size, st.st_mtime_ns))
                        if len(rows) > _MAX_FILES:
                            return None
    rows.sort()
    return hashlib.sha256(json.dumps(rows).encode()).hexdigest()


def _code() -> str | None:
    """The gpulens code that computes a report, as files: an edited checkout is another gpulens."""
    import gpulens
    import gpulens.profiler

    roots = sorted({str(Path(p).resolve()) for p in [*gpulens.__path__, *gpulens.profiler.__path__]})
    return _stats([Path(r) for r in roots], lambda name: name.endswith(".py"), frozenset({"__pycache__"}))


def key(run_dir: Path) -> dict[str, Any] | None:
    """What the report of ``run_dir`` is a function of, or None when it cannot be read."""
    from gpulens import __version__

    try:
        root = Path(os.path.abspath(run_dir))  # what the report prints (summary.py), links not followed
        files = _stats([root], lambda name: name != FILE and not name.endswith(_IGNORED_SUFFIXES), _IGNORED_DIRS)
        code = _code()
    except OSError:
        return None
    if files is None or code is None:
        return None
    return {"version": __version__, "code": code, "path": str(root),
            "max_trace": os.environ.get(_ENV_MAX_TRACE), "files": files}


def load(run_dir: Path) -> str | None:
    """The report kept for ``run_dir`` (the text ``report --json`` printed) if the run is unchanged, else None."""
    try:
        doc = json.loads((run_dir / FILE).read_bytes())
    except (OSError, ValueError):  # none, unreadable, damaged or foreign: compute
        return None
    if not isinstance(doc, dict) or not isinstance(doc.get("report"), str) or _CONTROL.search(doc["report"]):
        return None  # json.dumps never writes a control character but newlines: the file is not one gpulens kept
    now = key(run_dir)
    return doc["report"] if now is not None and doc.get("key") == now else None


def store(run_dir: Path, status: str, text: str, before: dict[str, Any] | None) -> None:
    """Keep ``text``, the report of a settled run, if its files are what they were before it was computed.

    ``before``: :func:`key` taken before the run was opened.  Called after its reader is closed, so a
    file that changed meanwhile -- written by another process, or by the reading itself (SQLite folds a
    write-ahead log back into the database when the last connection closes) -- keeps nothing: the next
    report, computed from files that no longer change, is kept."""
    if status not in SETTLED or before is None:
        return
    k = key(run_dir)
    if k != before:
        return
    path = run_dir / FILE
    tmp = path.with_name(f".{FILE}.{os.getpid()}.tmp")
    try:
        tmp.write_text(json.dumps({"key": k, "report": text}), encoding="utf-8")
        os.replace(tmp, path)
    except OSError as exc:  # a read-only run: computed every time
        tmp.unlink(missing_ok=True)
        log.debug("gpulens: report not kept (%s)", exc)
