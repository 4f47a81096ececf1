"""Connections the dashboard keeps open: a few clients holding many idle sockets must not starve the rest.

waitress stops accepting at its connection limit and keeps an idle socket for two minutes, so ~100
half-sent requests (slowloris) from anyone who can reach the port -- before any authentication -- made
every other request time out.  Here, on top of waitress:

- each client address keeps at most :data:`PER_CLIENT` sockets that are not being answered; a new one
  closes that client's longest-idle one (a browser uses six);
- all clients together keep at most :data:`MAX_IDLE`: past it the longest-idle socket of the client
  holding the most goes;
- a request's head must arrive within :data:`HEADER_TIMEOUT_S` (a byte now and then does not keep a
  socket), and a socket idle between requests lasts :data:`IDLE_TIMEOUT_S`.

A socket whose request is being served is never closed by this.
"""
from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

PER_CLIENT = 32
MAX_IDLE = 256
HEADER_TIMEOUT_S = 10.0
IDLE_TIMEOUT_S = 30.0
CHECK_EVERY_S = 1.0
#: waitress's own limit, above ours: it stops accepting there, which is what must never happen.
WAITRESS_LIMIT = 4 * MAX_IDLE

SERVER_OPTIONS = {"connection_limit": WAITRESS_LIMIT, "channel_timeout": IDLE_TIMEOUT_S,
                  "cleanup_interval": CHECK_EVERY_S, "asyncore_use_poll": True}  # poll: no 1,024-socket cap


def _client(channel: Any) -> str:
    addr = channel.addr
    return str(addr[0]) if isinstance(addr, tuple) and addr else str(addr)


def _idle(channel: Any) -> bool:
    """Not being answered: no complete request waits on it or is served from it."""
    return not channel.requests and not channel.total_outbufs_len and not channel.will_close


def _head_started(channel: Any) -> float | None:
    return getattr(channel, "gpulens_head_started", None)


def guard(server: Any) -> None:
    """Install the limits on a server from ``waitress.create_server`` (one socket or several)."""
    for one in _listeners(server):
        base = one.channel_class
        one.channel_class = type("GuardedChannel", (base,), {"received": _received(base.received)})
        one.maintenance = _maintenance(one, one.maintenance)
        handle_accept = one.handle_accept

        def accept(one: Any = one, handle_accept: Any = handle_accept) -> None:
            handle_accept()
            evict(one.active_channels.values())

        one.handle_accept = accept


def _listeners(server: Any) -> Iterable[Any]:
    if hasattr(server, "active_channels"):
        return [server]
    return [s for s in getattr(server, "map", {}).values() if hasattr(s, "active_channels")]


def _received(original: Any) -> Any:
    def received(channel: Any, data: bytes) -> Any:
        if data and channel.request is None:  # the first bytes of a request's head
            channel.gpulens_head_started = time.monotonic()
        result = original(channel, data)
        if channel.request is None:  # the head (and body) came whole: no deadline any more
            channel.gpulens_head_started = None
        return result
    return received


def _maintenance(server: Any, original: Any) -> Any:
    def maintenance(now: float) -> None:
        original(now)
        overdue = time.monotonic() - HEADER_TIMEOUT_S
        for channel in list(server.active_channels.values()):
            started = _head_started(channel)
            if started is not None and started < overdue and not channel.requests:
                channel.will_close = True
        evict(server.active_channels.values())
    return maintenance


def evict(channels: Iterable[Any]) -> int:
    """Mark the sockets over the limits to close (longest idle first); returns how many."""
    by_client: dict[str, list[Any]] = {}
    for channel in channels:
        if _idle(channel):
            by_client.setdefault(_client(channel), []).append(channel)
    closed = 0
    for held in by_client.values():
        if len(held) > PER_CLIENT:
            held.sort(key=lambda c: c.last_activity)
            for channel in held[:len(held) - PER_CLIENT]:
                channel.will_close = True
                closed += 1
            del held[:len(held) - PER_CLIENT]
    total = sum(len(h) for h in by_client.values())
    while total > MAX_IDLE:
        held = max(by_client.values(), key=len)
        channel = min(held, key=lambda c: c.last_activity)
        held.remove(channel)
        channel.will_close = True
        closed += 1
        total -= 1
    return closed
