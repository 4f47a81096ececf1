"""Who is who in a run folder: which database is which torch rank, and which is a node's sampler.

A database file is named when its process starts recording, which is not always when the process knows
what it is.  The parent of ``mp.spawn`` ranks records first -- it samples the node's GPUs and host -- and
trains nothing; its children learn their rank from the process group only once it exists; hogwild children
never have one.  The files are therefore slots, and the ranks are decided here, from what every database
says about itself, the same way for the reader, the publisher and the tidy-up at the end of a run:

- ``node-<n>.db``, and a database that trained nothing while a child of its process recorded in the same
  folder, is node ``n``'s sampler, not a rank;
- a child that joined a process group is the rank torch gave it;
- every other database keeps the rank of its file name, and children without a process group take the
  lowest ranks left free, in the order of their files.

Runs recorded before this rule (children at ``1 + their rank``, the parent as rank 0) read the same way.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

_FILE = re.compile(r"^(rank|node)-(\d{1,6})\.db$")


@dataclass(frozen=True)
class Member:
    """One database of a run: a training rank (``rank`` set) or a node's sampler (``rank`` None)."""

    path: Path
    node: int
    rank: int | None

    @property
    def name(self) -> str:
        """The file name this member has once the run is tidy."""
        return f"rank-{self.rank}.db" if self.rank is not None else f"node-{self.node}.db"


@dataclass(frozen=True)
class Entry:
    """What :func:`resolve` needs of one database: its file, its metadata and whether it recorded a step."""

    path: Path
    meta: dict[str, Any]
    has_steps: bool


def file_slot(name: str) -> tuple[str, int] | None:
    match = _FILE.match(name)
    return (match.group(1), int(match.group(2))) if match else None


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def resolve(entries: list[Entry]) -> list[Member]:
    """Each database's place in the run (see the module docstring); input order does not matter."""
    entries = sorted(entries, key=lambda e: (file_slot(e.path.name) or ("", 0))[::-1])
    parents = set()
    for e in entries:
        child = e.meta.get("child")
        if isinstance(child, dict) and _int(child.get("parent_pid")) is not None:
            parents.add((str(e.meta.get("host")), child["parent_pid"]))
    out: dict[Path, Member] = {}
    taken: set[int] = set()
    later: list[Entry] = []
    for e in entries:
        kind, slot = file_slot(e.path.name) or ("rank", 0)
        node = _int(e.meta.get("node_rank")) or 0
        is_parent = (str(e.meta.get("host")), e.meta.get("pid")) in parents
        if kind == "node" or e.meta.get("role") == "node" or (is_parent and not e.has_steps):
            out[e.path] = Member(e.path, node if kind == "rank" else slot, None)
            continue
        child = e.meta.get("child")
        if isinstance(child, dict):
            pg = _int(child.get("process_group_rank"))
            if pg is not None and pg not in taken:
                out[e.path] = Member(e.path, node, pg)
                taken.add(pg)
            else:
                later.append(e)
            continue
        if slot in taken:
            later.append(e)
            continue
        out[e.path] = Member(e.path, node, slot)
        taken.add(slot)
    free = 0
    for e in later:  # hogwild children, and anything that collided: the lowest free ranks, in file order
        while free in taken:
            free += 1
        out[e.path] = Member(e.path, _int(e.meta.get("node_rank")) or 0, free)
        taken.add(free)
    return [out[e.path] for e in entries]


def read_entries(run_dir: Path) -> list[Entry]:
    """Every database of a run folder with its metadata (files that cannot be read are left out)."""
    import json
    import sqlite3
    from urllib.parse import quote

    out: list[Entry] = []
    try:
        names = sorted(os.listdir(run_dir))
    except OSError:
        return out
    for name in names:
        if file_slot(name) is None:
            continue
        path = run_dir / name
        try:
            uri = f"file:{quote(os.fsencode(path.resolve()))}?mode=ro"
            conn = sqlite3.connect(uri, uri=True, timeout=5)
            try:
                meta = {k: json.loads(v) for k, v in conn.execute("SELECT key, value FROM meta")}
                has_steps = conn.execute("SELECT 1 FROM steps LIMIT 1").fetchone() is not None
            finally:
                conn.close()
        except (sqlite3.Error, ValueError, OSError):
            continue
        out.append(Entry(path, meta, has_steps))
    return out


def tidy(run_dir: Path) -> list[tuple[str, str]]:
    """Rename the databases of a run whose processes have all closed to what they are (``rank-<torch
    rank>.db``, ``node-<n>.db``); returns the renames.  Nothing is renamed while any of them is open (a
    ``-wal`` file, a running status) or when a name is in the way."""
    entries = read_entries(run_dir)
    if any(e.meta.get("status") == "running" or Path(f"{e.path}-wal").exists() for e in entries):
        return []
    moves = [(m.path, run_dir / m.name) for m in resolve(entries) if m.path.name != m.name]
    if not moves:
        return []
    sources = {src for src, _ in moves}
    if any(dst.exists() and dst not in sources for _, dst in moves):
        return []
    staged = []
    for src, dst in moves:  # through temporary names: a permutation of names never overwrites a database
        tmp = src.with_name(f".{src.name}.tidy-{os.getpid()}")
        os.replace(src, tmp)
        staged.append((tmp, dst, src.name))
    for tmp, dst, _ in staged:
        os.replace(tmp, dst)
    return [(old, dst.name) for _, dst, old in staged]
