"""Profile on demand: a thread that reads the run folder's requests and hands this rank's to its profiler.

Twice a second it lists ``RUN/requests/`` (profiler/store/requests.py): a
request this rank has not seen, asked after this process started, and meant
for it, becomes a :class:`~gpulens.hooks.track.profiling.Demand` the step
hook picks up at its next step boundary.  The same tick writes an
acknowledgement whenever a demand's state moved (queued, profiling steps
S-E, done with the trace's path), so ``gpulens profile`` can say what
happened.  All of it runs here, off the training thread: the loop pays one
truth test per step for a queue that is empty (bench/hook_cost.py).
"""
from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path

from gpulens.hooks.track.profiling import Demand, DemandState, ProfilerWindows
from gpulens.profiler.store.requests import Ack, ProfileRequest, read_requests, write_ack

log = logging.getLogger("gpulens")

#: How often the folder is read (the request is taken at the first step boundary after that).
POLL_INTERVAL_S = 0.5


class RequestWatcher:
    """One rank's reader of the run's requests (``poll`` runs on a sampler thread)."""

    def __init__(self, run_dir: Path, rank: int, windows: Callable[[], ProfilerWindows | None],
                 stepping: Callable[[], bool], started: float | None = None) -> None:
        self.run_dir = run_dir
        self.rank = rank
        self._windows = windows  # the rank's ProfilerWindows (None: torch not attached yet)
        # a process that has not stepped yet leaves requests for later: gpulens run's parent of mp.spawn
        # children never steps, and its rank number is its first child's
        self._stepping = stepping
        self.started = time.time() if started is None else started
        self.closing = False  # the run is ending: new requests are refused
        self._seen: dict[str, DemandState] = {}
        self._written: dict[str, int] = {}  # request -> state version acknowledged

    def poll(self, now: float = 0.0) -> None:
        """Take new requests, acknowledge what moved.  Errors go to the sampler's error events, not the loop."""
        if not self._stepping():
            return
        for request in read_requests(self.run_dir):
            if request.id in self._seen or request.asked_at < self.started - 1.0 or not request.wants(self.rank):
                continue
            self._seen[request.id] = self._take(request)
        for rid, state in self._seen.items():
            if self._written.get(rid) != state.version:
                self._written[rid] = state.version
                write_ack(self.run_dir, Ack.of(rid, self.rank, state))

    def _take(self, request: ProfileRequest) -> DemandState:
        windows = self._windows()
        if self.closing:
            state = DemandState(status="refused", reason="the run was ending")
        elif windows is None:
            state = DemandState(status="refused", reason="torch is not imported in this process yet")
        else:
            state = windows.request(Demand(request.id, request.steps, request.memory, at=request.at_step))
        state.version += 1  # seen: acknowledged once at least
        log.info("gpulens: profile request %s (%d steps): %s", request.id, request.steps, state.status)
        return state
