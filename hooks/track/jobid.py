"""One run id for the whole job, agreed through the job's own c10d store.

A rank knows its run id before any process group exists, and on its own it can only derive one that is the
same across nodes when the launcher gives it something job-wide (a ``--rdzv-id``, a Slurm job).  A static
rendezvous (``torchrun --nnodes 2 --node-rank N --master-addr H --master-port P``), ``mp.spawn`` on several
machines or ``torch.distributed.run`` called from Python give each node its own.  So once the process
group exists, rank 0 writes its run id into the job's store and every other rank reads it: the store then
holds one run per job, whatever the launcher (each node keeps its local folder under its own id, noting the
job's).  It all runs on a background thread with a timeout: a store that is slow or gone costs nothing but
the agreement (the rank then publishes under its own id).
"""
from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from gpulens.hooks.track.clocksync import default_store

log = logging.getLogger("gpulens")

KEY = "gpulens/run_id"
WAIT = timedelta(seconds=60)
POLL_S = 0.05


def key() -> str:
    """The store key of this launch (a restarted job gets a new process group and a new key)."""
    return f"{KEY}/{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}"


def agree(torch: Any, rank: int, run_id: str, settled: bool, on_agreed: Callable[[str], None],
          wait: timedelta = WAIT) -> threading.Thread | None:
    """Rank 0 announces ``run_id``; a rank whose id is not ``settled`` reads rank 0's and gets it through
    ``on_agreed`` (on a background thread).  None when there is nothing to do (no group, no store)."""
    store = default_store(torch)
    if store is None or (rank != 0 and settled):
        return None

    def run() -> None:
        from gpulens.profiler.errors import GpulensError
        from gpulens.profiler.store.runstore import validate_run_id

        try:
            if rank == 0:
                store.set(key(), run_id)
                return
            # polled, not waited for: a store client serves one request at a time, and a wait would hold it
            # (the clock pings, hooks/track/clocksync.py, share it) until rank 0's first step
            deadline = time.monotonic() + wait.total_seconds()
            while not store.check([key()]):
                if time.monotonic() > deadline:
                    raise TimeoutError(f"no run id from rank 0 in {wait.total_seconds():.0f} s")
                time.sleep(POLL_S)
            agreed = store.get(key()).decode()
            on_agreed(validate_run_id(agreed))
        except GpulensError as exc:
            log.warning("gpulens: rank 0 announced an unusable run id (%s); publishing under %s", exc, run_id)
        except Exception as exc:  # rank 0 records nothing, or the store went away: this rank keeps its own id
            log.debug("gpulens: no job-wide run id agreed (%s); publishing under %s", exc, run_id)
            on_agreed(run_id)

    thread = threading.Thread(target=run, name="gpulens-run-id", daemon=True)
    thread.start()
    return thread
