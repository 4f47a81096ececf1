"""``gpulens profile RUN``: ask a running job for a profiler window of its next N steps, and say what it did.

The request goes through the run folder (profiler/store/requests.py); every
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
from gpulens.profiler.store.requests import (
    MAX_STEPS,
    Ack,
    ProfileRequest,
    new_request,
    read_acks,
    unanswered,
    write_request,
)

#: How often the asker reads the answers (and, less often, whether the ranks still run).
POLL_S, STATUS_EVERY_S = 0.2, 2.0
#: Several ranks record the same steps: the first is this far ahead of the furthest rank's last recorded step
#: (its rows reach the database within a flush, 0.3 s; each watcher reads the folder every 0.5 s).
ALIGN_LEAD_S = 2.0


@dataclass(frozen=True)
class Target:
    """The running ranks a request goes to."""

    run_dir: Path
    run_id: str
    ranks: tuple[int, ...]  # the ranks asked
    every_rank: bool
    started: float  # the earliest of their starts: requests before it are not theirs
    at_step: int | None = None  # several ranks: the first step each records


def check(run_dir: Path, steps: int, rank: str, memory: bool) -> Target:
    """The request's target, or a GpulensError saying in one line why it cannot be asked."""
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
    target = Target(run_dir, run_id, chosen, every, min(starts) if starts else 0.0,
                    align_step([recent[r] for r in chosen]) if len(chosen) > 1 else None)
    pending = unanswered(run_dir, list(chosen), target.started)
    if pending is not None:
        raise GpulensError(f"request {pending.id} ({pending.steps} steps, asked {time.time() - pending.asked_at:.0f} s "
                           "ago) is still being answered; wait for it, then ask again")
    return target


def _last_steps(run: RunReader, rank: int, seconds: float = 300.0) -> StepTable:
    """The rank's steps of its last ``seconds`` (all of them where it took longer than that to step)."""
    recent = run.steps(rank, t0=time.time() - seconds, columns=())
    return recent if len(recent) else run.steps(rank, columns=())


def align_step(tables: list[StepTable]) -> int | None:
    """The first step every rank can still record: past the furthest rank's last step by what
    :data:`ALIGN_LEAD_S` takes at the slowest rank's recent pace (None before any rank stepped)."""
    lasts = [int(t.step[-1]) for t in tables if len(t)]
    if not lasts:
        return None
    paces = [float(np.median(t.duration[-20:])) for t in tables if len(t)]
    pace = max(max(paces), 1e-3)
    return max(lasts) + 1 + math.ceil(ALIGN_LEAD_S / pace)


def ask(target: Target, steps: int, memory: bool, source: str = "cli") -> ProfileRequest:
    request = new_request(steps, None if target.every_rank else target.ranks, memory, source, target.at_step)
    write_request(target.run_dir, request)
    return request


def _line(ack: Ack, at_step: int | None) -> str:
    late = (f" (from step {at_step} on the other ranks: this one was past it)"
            if at_step is not None and ack.first_step is not None and ack.first_step != at_step else "")
    if ack.status == "queued":
        return f"rank {ack.rank}: queued (" + (f"its window records from step {at_step})" if at_step is not None else
                                               "at the next step boundary, after a window that is recording)")
    if ack.status == "profiling":
        return f"rank {ack.rank}: profiling steps {ack.first_step}-{ack.last_step}{late}"
    if ack.status == "done":
        text = f"rank {ack.rank}: done, steps {ack.first_step}-{ack.last_step}{late}: {ack.path}"
        if ack.memory_path:
            text += f"; memory snapshot: {ack.memory_path}"
        return text + (f" ({ack.reason})" if ack.reason else "")
    return f"rank {ack.rank}: {ack.status}: {ack.reason or 'no reason given'}"


def wait(target: Target, request: ProfileRequest, timeout: float, out: TextIO = sys.stdout) -> int:
    """Print each rank's answers as they come; 0 when every rank's window is saved, 1 otherwise."""
    from gpulens.profiler import open_run
    from gpulens.profiler.store.reader import rank_status

    shown: dict[int, tuple[str, str | None]] = {}
    deadline = time.monotonic() + timeout
    next_status = time.monotonic() + STATUS_EVERY_S
    gone: dict[int, str] = {}
    while True:
        acks = read_acks(target.run_dir, request.id)
        for rank in sorted(acks):
            ack = acks[rank]
            if shown.get(rank) != (ack.status, ack.path):
                shown[rank] = (ack.status, ack.path)
                print(_line(ack, request.at_step), file=out, flush=True)
        open_ranks = [r for r in target.ranks if not (r in acks and acks[r].final) and r not in gone]
        if not open_ranks:
            break
        now = time.monotonic()
        if now >= deadline:
            print(f"no answer from rank {', '.join(map(str, open_ranks))} within {timeout:.0f} s: a step longer "
                  "than that, or a process whose gpulens does not read requests (it came before 'gpulens "
                  "profile')", file=out, flush=True)
            return 1
        if now >= next_status:  # a rank that ended (or was killed) answers nothing more
            next_status = now + STATUS_EVERY_S
            with open_run(target.run_dir) as run:
                for r in open_ranks:
                    status, reason = rank_status(run.meta(r)) if r in run.ranks else ("gone", None)
                    if status != "running":
                        gone[r] = status
                        print(f"rank {r}: {status} before its window was saved"
                              + (f" ({reason})" if reason else ""), file=out, flush=True)
        time.sleep(POLL_S)
    acks = read_acks(target.run_dir, request.id)
    return 0 if all(r in acks and acks[r].status == "done" for r in target.ranks) else 1
