"""Serving the dashboard: checks first, then waitress (a production WSGI server, not Flask's dev one)."""
from __future__ import annotations

import os
import signal
import sys
import threading
from collections.abc import Callable
from pathlib import Path

from gpulens.dashboard import connections
from gpulens.dashboard.security import MAX_BODY, MIN_TOKEN, Access, allowed_hosts, check_bind, parse_auth
from gpulens.fmt import shown_path
from gpulens.profiler import GpulensError

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8050


def prepare(runs_root: Path, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT, auth: str | None = None,
            token: str | None = None, allow_host: list[str] | None = None, auth_source: str = "--auth") -> Access:
    """Validate everything that can be wrong before a socket is opened; one-line errors."""
    if not 0 <= int(port) <= 65535:
        raise GpulensError(f"--port {port}: not a TCP port (0-65535)")
    user, password = parse_auth(auth, auth_source)
    if token is not None and len(token) < MIN_TOKEN:
        raise GpulensError(f"the token must be at least {MIN_TOKEN} characters (try: python -c 'import secrets; "
                           "print(secrets.token_urlsafe(24))')")
    check_bind(host, user, password, token, int(port))
    if not runs_root.is_dir():
        raise GpulensError(f"{runs_root}: no such runs directory")
    return Access(host, int(port), user, password, token, allowed_hosts(host, allow_host or []))


def serve(runs_root: Path, access: Access, open_path: str = "/", threads: int = 8,
          on_ready: Callable[[str], None] | None = None, fallback: Path | None = None,
          store: str | None = None) -> None:
    from waitress import create_server

    from gpulens.dashboard.app import create_app

    app = create_app(runs_root, access, fallback, store)
    try:
        server = create_server(app.server, host=access.host, port=access.port, threads=threads, ident="gpulens",
                               clear_untrusted_proxy_headers=True, max_request_body_size=MAX_BODY,
                               **connections.SERVER_OPTIONS)
    except OSError as exc:
        raise GpulensError(f"cannot listen on {access.host}:{access.port} ({exc.strerror or exc}); "
                           "pick another --port") from None
    connections.guard(server)
    shown = f"[{access.host}]" if ":" in access.host else access.host
    url = f"http://{shown}:{server.effective_port}{open_path}"
    where = shown_path(runs_root)
    if fallback is not None:
        where = f"{shown_path(fallback)} until {where} has one"
    print(f"gpulens dashboard: {url}  (runs in {where}; Ctrl-C stops it)", file=sys.stderr, flush=True)
    if access.needs_auth:
        how = f"HTTP Basic user {access.user}" if access.password else "token"
        print(f"gpulens: authentication required ({how})", file=sys.stderr, flush=True)
    from gpulens.dashboard import data

    data.warm_analyses()  # an analysis process ready before the first page asks for one
    if on_ready is not None:
        on_ready(url)
    stopped_by, restore = _stop_on_signals()
    try:
        server.run()  # returns once a signal's exception closed it (waitress catches SystemExit to close)
    except _Stopped:
        pass
    finally:
        restore()
        server.close()
        data.shutdown(now=True)
    if signal.SIGTERM in stopped_by:  # `kill`, `docker stop`, systemd: the analysis processes are stopped; now
        os.kill(os.getpid(), signal.SIGTERM)  # die of the signal, as the supervisor expects (-15 / 143)
    if signal.SIGINT in stopped_by:
        raise KeyboardInterrupt  # exit status 130, as every other command after Ctrl-C


class _Stopped(SystemExit):
    """Ctrl-C or SIGTERM arrived: ends ``server.run()`` wherever it is. A SystemExit, because waitress's event
    loop passes only those (and KeyboardInterrupt) through a connection's handler, where a signal usually
    lands; any other exception there is logged and swallowed, and the server would go on serving."""


def _stop_on_signals() -> tuple[list[int], Callable[[], None]]:
    """Ctrl-C and SIGTERM stop the dashboard through its ``finally``: SIGTERM killed it where it stood, which
    left its analysis processes behind.  Returns the list the signal that came is put in, and what puts the
    handlers back (a second signal during the cleanup acts as it would without the dashboard)."""
    stopped_by: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        return stopped_by, lambda: None  # embedded: the host program owns the signals
    defaults = {sig: handler for sig, handler in ((signal.SIGINT, signal.default_int_handler),
                                                  (signal.SIGTERM, signal.SIG_DFL))
                if signal.getsignal(sig) is handler}  # a handler of the host program's own stays

    def restore() -> None:
        for sig, handler in defaults.items():
            signal.signal(sig, handler)

    def on_signal(signum: int, frame: object) -> None:
        restore()
        stopped_by.append(signum)
        raise _Stopped

    for sig in defaults:
        signal.signal(sig, on_signal)
    return stopped_by, restore
