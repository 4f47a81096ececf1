"""Asking a run in a store from anywhere: requests come down from the store, this rank's answers go up.

``gpulens profile STORE/RUN`` writes its request into ``STORE/RUN/requests/``
(profiler/store/requests.py).  The training processes never talk to the
store; their publishers do (profiler/store/publisher.py), so each publisher
relays: it copies requests it has not seen into the local run folder, where
its rank's watcher takes them as it takes a local request, and uploads the
answers its rank wrote there whenever they change.

Listing costs money on object stores, so one relay per run folder lists, at
most every :data:`LIST_EVERY_S` seconds: the publishers of a node's ranks share
the run folder and take turns by a stamp file in it (``.publish/requests.listed``:
whoever finds it older than the interval stamps it and lists; a race costs one
LIST more).  A node listing every 5 s makes ~17,000 LISTs a day (about $0.09 at
S3's $0.005 per 1,000), only while the run is running.  Answers cost a local
folder read per tick (twice a second) and one PUT per change.
"""
from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gpulens.profiler.store.requests import ACK_NAME, REQUEST_NAME, REQUESTS_DIR, LocalFolder, store_folder

log = logging.getLogger("gpulens")

#: How often a node's requests are listed in the store (``GPULENS_REQUEST_POLL_S``; 0 turns relaying off).
LIST_EVERY_S = 5.0
STAMP = "requests.listed"


def list_every() -> float:
    try:
        return max(float(os.environ.get("GPULENS_REQUEST_POLL_S", LIST_EVERY_S)), 0.0)
    except ValueError:
        return LIST_EVERY_S


@dataclass
class RequestRelay:
    """One publisher's relay for one run folder (``tick`` runs in the publisher's loop, never in training)."""

    fs: Any
    base: str
    run_dir: Path
    state_dir: Path  # the run's .publish/ (where the node's stamp is)
    every: float = field(default_factory=list_every)
    sent: dict[str, str] = field(default_factory=dict)  # answer file -> version uploaded
    listed: float = 0.0  # when this relay last listed (its own bound, should the stamp not be writable)

    @property
    def local(self) -> LocalFolder:
        return LocalFolder(self.run_dir / REQUESTS_DIR)

    def tick(self, run_id: str, rank: int | None, now: float | None = None) -> tuple[int, int]:
        """Copy new requests down (when this node's turn to list has come) and this rank's changed answers up;
        (requests copied, answers sent).  Store errors propagate: the caller retries at its next tick."""
        if self.every <= 0:
            return 0, 0
        now = time.time() if now is None else now
        store = store_folder(self.fs, self.base, run_id)
        local = self.local
        here = local.listing()
        copied = 0
        if self._my_turn(now):
            for name in store.listing():
                if REQUEST_NAME.match(name) and name not in here:
                    local.write(name, store.read(name))
                    copied += 1
        sent = 0
        if rank is not None:
            for name, version in here.items():
                match = ACK_NAME.match(name)
                if match is None or int(match["rank"]) != rank or self.sent.get(name) == version:
                    continue
                store.write(name, local.read(name))
                self.sent[name] = version
                sent += 1
        return copied, sent

    def _my_turn(self, now: float) -> bool:
        """True at most once per interval per run folder, whichever of its publishers asks first."""
        if now - self.listed < self.every:
            return False
        stamp = self.state_dir / STAMP
        try:
            if now - stamp.stat().st_mtime < self.every:
                return False
        except FileNotFoundError:
            pass
        self.listed = now
        try:
            self.state_dir.mkdir(parents=True, exist_ok=True)
            stamp.touch()
            os.utime(stamp, (now, now))
        except OSError:
            pass  # a folder that cannot be stamped: list anyway (at this publisher's interval)
        return True
