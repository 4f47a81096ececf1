"""``gpulens profile RUN``: ask a running job for a profiler window of its next N steps, and say what it did.

The request goes through the run folder (profiler/store/requests.py), or for
a run in a store (``gpulens profile s3://bucket/runs/RUN``) through the store,
where the job's publishers relay it (profiler/store/request_relay.py); every
check that can fail is made here first, so a bad request is one line and exit
2 in the asker's terminal and never reaches the training processes: a run
that is not running, a rank it does not have, a step count out of range, a
memory snapshot of a run without CUDA, a request while another is pending.
"""
from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

import numpy as np

from gpulens.profiler.errors import GpulensError
from gpulens.profiler.store.reader import RunReader, StepTable
from gpulens.profiler.store.remote import redact
from gpulens.profiler.store.requests import (
    MAX_STEPS,
    Ack,
    Folder,
    ProfileRequest,
    folder,
    new_request,
    read_acks,
    unanswered,
    write_request,
)

#: How often the asker reads the answers (and, less often, whether the ranks still run); a store's answers cost
#: a LIST each, its status a listing of the run.
POLL_S, STATUS_EVERY_S = 0.2, 2.0
STORE_POLL_S, STORE_STATUS_EVERY_S = 2.0, 15.0
#: Several ranks record the same steps: the first is this far ahead of where the furthest rank is now (each
#: watcher reads the folder every 0.5 s).
ALIGN_LEAD_S = 2.0
#: Through a store the request also waits for a node's turn to list it (5 s by default).
STORE_ALIGN_LEAD_S = 10.0


@dataclass(frozen=True)
class Target:
    """The running ranks a request goes to."""

    run_dir: Path  # the run's folder (a run in a store: its copy in the local cache)
    run_id: str
    ranks: tuple[int, ...]  # the ranks asked
    every_rank: bool
    started: float  # the earliest of their starts: requests before it are not theirs
    at_step: int | None = None  # several ranks: the first step each records
    store_url: str | None = None  # STORE/RUN for a run asked through its store
    box: Folder | None = None  # where the request and the answers go (None: the run folder's requests/)

    @property
    def requests(self) -> Folder:
        return self.box if self.box is not None else folder(self.run_dir)


def store_box(url: str) -> Folder:
    """``STORE/RUN``'s requests folder in the store."""
    from gpulens.profiler.store.remote import filesystem
    from gpulens.profiler.store.requests import store_folder

    store, _, run_id = url.rstrip("/").rpartition("/")
    fs, base = filesystem(store)
    return store_folder(fs, base, run_id)


def check_store(url: str, steps: int, rank: str, memory: bool) -> Target:
    """:func:`check` for ``STORE/RUN``: the run's current copy fetched into the local cache, the request
    and the answers in the store's requests folder."""
    from gpulens.profiler.store.mirror import local_run

    url = url.rstrip("/")
    return check(local_run(url), steps, rank, memory, url, store_box(url))


def check(run_dir: Path, steps: int, rank: str, memory: bool, store_url: str | None = None,
          box: Folder | None = None) -> Target:
    """The request's target, or a GpulensError saying in one line why it cannot be asked (``store_url``,
    ``box``: a run asked through its store, ``run_dir`` its copy in the cache)."""
    from gpulens.profiler import open_run
    from gpulens.profiler.store.reader import rank_status

    if not 1 <= steps <= MAX_STEPS:
        raise GpulensError(f"--steps must be 1-{MAX_STEPS}, not {steps}")
    with open_run(run_dir) as run:
        run_id, ranks = run.info.id, run.ranks
        states = {r: rank_status(run.meta(r)) for r in ranks}
        gpus = any(run.meta(r).get("gpus") for r in ranks)
        starts = [float(run.meta(r).get("start") or 0.0) for r in ranks]
        # several ranks align on a step: their last minutes of steps say where they are (not whole tables)
        recent = {r: _last_steps(run, r) for r in ranks} if rank == "all" and len(ranks) > 1 else {}
    if store_url and not all(len(t) for t in recent.values()):
        # a store's copy read while publishers merged segments can come out short (the rest waits for the next
        # sync): one more, or the ranks are not aligned (found with a DDP job through S3 on a loaded host)
        from gpulens.profiler.store.mirror import local_run

        with open_run(local_run(store_url)) as run:
            recent = {r: _last_steps(run, r) for r in recent}
    running = [r for r in ranks if states[r][0] == "running"]
    if not running:
        status, reason = next(iter(states.values()), ("finished", None))
        raise GpulensError(f"run {run_id} is not running ({status}{f': {reason}' if reason else ''}); "
                           "profile a running job, or read this one's windows in its report")
    if rank == "all":
        chosen, every = tuple(running), True
    else:
        try:
            wanted = int(rank)
        except ValueError:
            raise GpulensError(f"--rank must be a rank number or all, not {rank!r}") from None
        if wanted not in ranks:
            raise GpulensError(f"run {run_id} has no rank {wanted} (its ranks: {', '.join(map(str, ranks))})")
        if wanted not in running:
            raise GpulensError(f"rank {wanted} of run {run_id} is not running ({states[wanted][0]})")
        chosen, every = (wanted,), False
    if memory and not gpus:
        raise GpulensError(f"--memory takes a CUDA allocator snapshot: run {run_id} recorded no GPU")
    lead = STORE_ALIGN_LEAD_S if store_url else ALIGN_LEAD_S
    target = Target(run_dir, run_id, chosen, every, min(starts) if starts else 0.0,
                    align_step([recent[r] for r in chosen], lead) if len(chosen) > 1 else None, store_url, box)
    pending = unanswered(target.requests, list(chosen), target.started)
    if pending is not None:
        raise GpulensError(f"request {pending.id} ({pending.steps} steps, asked {time.time() - pending.asked_at:.0f} s "
                           "ago) is still being answered; wait for it, then ask again")
    return target


def _last_steps(run: RunReader, rank: int, seconds: float = 300.0) -> StepTable:
    """The rank's steps of its last ``seconds`` (all of them where it took longer than that to step)."""
    recent = run.steps(rank, t0=time.time() - seconds, columns=())
    return recent if len(recent) else run.steps(rank, columns=())


def align_step(tables: list[StepTable], lead_s: float = ALIGN_LEAD_S, now: float | None = None) -> int | None:
    """The first step every rank can still record (None before any rank stepped): where the furthest rank is
    *now* -- its last step read, plus the steps its recent pace made since that step ended (the rows reach the
    database within a flush; a store's are a publish round old, and reading them there took its own while)
    -- and ``lead_s`` more at the slowest rank's pace."""
    rows = [t for t in tables if len(t)]
    if not rows:
        return None
    now = time.time() if now is None else now
    paces = [max(float(np.median(t.duration[-20:])), 1e-3) for t in rows]
    where = [int(t.step[-1]) + max(0.0, now - float(t.t_end[-1])) / pace for t, pace in zip(rows, paces)]
    return math.floor(max(where) + 1e-6) + 1 + math.ceil(lead_s / max(paces) - 1e-6)  # (float rounding)


def ask(target: Target, steps: int, memory: bool, source: str = "cli") -> ProfileRequest:
    request = new_request(steps, None if target.every_rank else target.ranks, memory, source, target.at_step)
    write_request(target.requests, request)
    return request


def _line(ack: Ack, at_step: int | None, store_url: str | None = None) -> str:
    late = (f" (from step {at_step} on the other ranks: this one was past it)"
            if at_step is not None and ack.first_step is not None and ack.first_step != at_step else "")
    if ack.status == "queued":
        return f"rank {ack.rank}: queued (" + (f"its window records from step {at_step})" if at_step is not None else
                                               "at the next step boundary, after a window that is recording)")
    if ack.status == "profiling":
        return f"rank {ack.rank}: profiling steps {ack.first_step}-{ack.last_step}{late}"
    if ack.status == "done":
        where = (f"{store_url}/rank={ack.rank}/{ack.path} (with the rank's next publish round)"
                 if store_url and ack.path else ack.path)
        text = f"rank {ack.rank}: done, steps {ack.first_step}-{ack.last_step}{late}: {where}"
        if ack.memory_path:
            text += f"; memory snapshot: {ack.memory_path}" + (" in the run folder on the rank's machine"
                                                               if store_url else "")
        return text + (f" ({ack.reason})" if ack.reason else "")
    return f"rank {ack.rank}: {ack.status}: {ack.reason or 'no reason given'}"


def _statuses(target: Target) -> dict[int, tuple[str, str | None]]:
    """Each asked rank's status now (a run in a store: fetched again into the cache)."""
    from gpulens.profiler import open_run
    from gpulens.profiler.store.reader import rank_status

    run_dir = target.run_dir
    if target.store_url:
        from gpulens.profiler.store.mirror import local_run

        run_dir = local_run(target.store_url)
    with open_run(run_dir) as run:
        return {r: rank_status(run.meta(r)) if r in run.ranks else ("gone", None) for r in target.ranks}


def wait(target: Target, request: ProfileRequest, timeout: float, out: TextIO = sys.stdout) -> int:
    """Print each rank's answers as they come; 0 when every rank's window is saved, 1 otherwise."""
    poll, status_every = (STORE_POLL_S, STORE_STATUS_EVERY_S) if target.store_url else (POLL_S, STATUS_EVERY_S)
    shown: dict[int, tuple[str, str | None]] = {}
    seen: dict[str, tuple[str, Ack]] = {}
    deadline = time.monotonic() + timeout
    next_status = time.monotonic() + status_every
    gone: dict[int, str] = {}
    acks: dict[int, Ack] = {}
    trouble: str | None = None  # a store that failed a poll: the next poll tries again
    while True:
        try:
            acks = read_acks(target.requests, request.id, seen)
            trouble = None
        except Exception as exc:
            if not target.store_url:
                raise
            trouble = f"{type(exc).__name__}: {exc}"
        for rank in sorted(acks):
            ack = acks[rank]
            if shown.get(rank) != (ack.status, ack.path):
                shown[rank] = (ack.status, ack.path)
                print(_line(ack, request.at_step, target.store_url), file=out, flush=True)
        open_ranks = [r for r in target.ranks if not (r in acks and acks[r].final) and r not in gone]
        if not open_ranks:
            break
        now = time.monotonic()
        if now >= deadline:
            print(f"no answer from rank {', '.join(map(str, open_ranks))} within {timeout:.0f} s: a step longer "
                  "than that, or a process whose gpulens does not read requests (it came before 'gpulens "
                  "profile')" + (", or whose run is not published to this store" if target.store_url else "")
                  + (f" (the store's last error: {redact(trouble)})" if trouble else ""), file=out, flush=True)
            return 1
        if now >= next_status:  # a rank that ended (or was killed) answers nothing more
            next_status = now + status_every
            try:
                statuses = _statuses(target)
            except Exception:
                if not target.store_url:
                    raise
                statuses = {}  # the store did not answer this time
            for r in open_ranks:
                status, reason = statuses.get(r, ("running", None))
                if status != "running":
                    gone[r] = status
                    print(f"rank {r}: {status} before its window was saved"
                          + (f" ({reason})" if reason else ""), file=out, flush=True)
        time.sleep(poll)
    return 0 if all(r in acks and acks[r].status == "done" for r in target.ranks) else 1
