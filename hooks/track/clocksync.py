"""How far each node's clock is from rank 0's, measured through the job's own c10d store.

Ranks on one node share a clock; nodes agree only as well as NTP or PTP keeps them, and a few
milliseconds of skew shift one node's series against another's.  Once the process group exists, the
first rank of every other node pings rank 0 a few times through the rendezvous store the job already
has (no server of ours, no port): it writes a ping, rank 0 answers with its clock, and the round trip
with the shortest time gives the offset (our clock minus rank 0's, at the midpoint of the round trip) and
its uncertainty (half that round trip, plus how far each side's clock anchor can be off: see
``profiler.store.clock``).  It all runs on background threads with short timeouts: a store
that is slow or gone costs nothing but the measurement.
"""
from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from gpulens.profiler.store import clock

log = logging.getLogger("gpulens")

KEY = "gpulens/clock"
ROUNDS = 8
WAIT = timedelta(seconds=2)
SERVE_FOR_S = 120.0  # rank 0 answers pings for this long after its first step
DRAIN_S = 3.0  # ... and, when its run closes, goes on answering the peers that asked for at most this long
CLOSE_WAIT_S = DRAIN_S + 0.5  # how long a closing run waits for its clock thread (rank 0's drain, a peer's pings)


def default_store(torch: Any) -> Any | None:
    """The process group's key-value store, or None (no group, or a torch without one)."""
    try:
        dist = torch.distributed
        if not dist.is_available() or not dist.is_initialized():
            return None
        return dist.distributed_c10d._get_default_store()
    except Exception:
        return None


def ping(store: Any, rank: int, rounds: int = ROUNDS) -> dict[str, Any] | None:
    """This rank's clock against rank 0's: {offset_s, uncertainty_s, rounds, against_rank}."""
    k = store.add(f"{KEY}/peers", 1) - 1
    store.set(f"{KEY}/peer/{k}", str(rank))
    best: tuple[float, float] | None = None
    done = 0
    for i in range(rounds):
        try:
            t1 = clock.now()
            store.set(f"{KEY}/{rank}/ping/{i}", "1")
            store.wait([f"{KEY}/{rank}/pong/{i}"], WAIT)
            theirs, their_anchor = _pong(store.get(f"{KEY}/{rank}/pong/{i}"))
        except Exception:
            if best is None:
                raise
            break  # a busy host let rank 0 answer some rounds only: the shortest so far still holds
        t2 = clock.now()
        rtt = t2 - t1
        done += 1
        if best is None or rtt / 2 + their_anchor < best[1]:
            best = ((t1 + t2) / 2 - theirs, rtt / 2 + their_anchor)
    if best is None:
        return None
    return {"offset_s": best[0], "uncertainty_s": best[1] + clock.ANCHOR_ERROR_S, "rounds": done, "against_rank": 0,
            "perf_epoch_s": clock.perf_epoch()}


def _pong(raw: bytes | str) -> tuple[float, float]:
    """rank 0's clock reading and its clock's anchor error (0 from a gpulens that sent the reading only)."""
    parts = (raw.decode() if isinstance(raw, bytes) else raw).split()
    return float(parts[0]), (float(parts[1]) if len(parts) > 1 else 0.0)


def serve(store: Any, stop: threading.Event, rounds: int = ROUNDS, serve_for: float = SERVE_FOR_S,
          drain_s: float = DRAIN_S, peers: int = 0) -> int:
    """Rank 0: answer every peer's pings (one thread per peer) until ``serve_for`` seconds have passed.

    When ``stop`` is set (rank 0's run is closing) the peers get their answers for up to ``drain_s``
    seconds more -- those that asked, and, until ``peers`` (the other nodes) have asked, the ones still to
    ask: in a short job rank 0 may finish training before another node's clock thread has even run, and
    its exit would take the measurement with it.
    """
    seen = 0
    answering: list[threading.Thread] = []
    end = clock.now() + serve_for

    def take_new_peers() -> None:
        nonlocal seen
        n = int(store.add(f"{KEY}/peers", 0))
        while seen < n:
            peer = store.get(f"{KEY}/peer/{seen}").decode()
            thread = threading.Thread(target=_answer, args=(store, peer, rounds), daemon=True,
                                      name=f"gpulens-clock-{peer}")
            thread.start()
            answering.append(thread)
            seen += 1

    while not stop.is_set() and clock.now() < end:
        take_new_peers()
        stop.wait(0.2)
    if stop.is_set():
        deadline = time.monotonic() + drain_s
        take_new_peers()
        while seen < peers and time.monotonic() < deadline:
            time.sleep(0.05)
            take_new_peers()
        for thread in answering:
            thread.join(max(0.0, deadline - time.monotonic()))
    return seen


def _answer(store: Any, peer: str, rounds: int) -> None:
    try:
        for i in range(rounds):
            store.wait([f"{KEY}/{peer}/ping/{i}"], WAIT)
            store.set(f"{KEY}/{peer}/pong/{i}", f"{clock.now()!r} {clock.ANCHOR_ERROR_S!r}")
    except Exception as exc:  # a peer that went away
        log.debug("gpulens: clock pings of rank %s stopped: %s", peer, exc)


def start(torch: Any, rank: int, local_rank: int, node_rank: int, world_size: int,
          record: Callable[[dict[str, Any]], None], stop: threading.Event,
          nodes: int = 0) -> threading.Thread | None:
    """Start the measurement for this rank in the background, if it takes part: rank 0 answers, the first
    rank of every other node asks; ``record`` receives the result (rank 0: itself as the reference).
    ``nodes``: how many nodes the job has, when known (rank 0 then waits at close for the others to ask)."""
    if world_size <= 1 or (rank != 0 and (local_rank != 0 or node_rank == 0)):
        return None
    store = default_store(torch)
    if store is None:
        return None

    def run() -> None:
        try:
            if rank == 0:
                record({"offset_s": 0.0, "uncertainty_s": 0.0, "rounds": 0, "against_rank": 0, "reference": True,
                        "perf_epoch_s": clock.perf_epoch()})
                serve(store, stop, peers=max(0, nodes - 1))
            else:
                got = ping(store, rank)
                if got is not None:
                    record(got)
        except Exception as exc:  # a store that is slow or gone: no measurement, nothing else
            log.debug("gpulens: clock offset not measured: %s", exc)

    thread = threading.Thread(target=run, name="gpulens-clock", daemon=True)
    thread.start()
    return thread
