"""Serving the dashboard: checks first, then waitress (a production WSGI server, not Flask's dev one)."""
from __future__ import annotations

import sys
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
          on_ready: Callable[[str], None] | None = None, fallback: Path | None = None) -> None:
    from waitress import create_server

    from gpulens.dashboard.app import create_app

    app = create_app(runs_root, access, fallback)
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
    if on_ready is not None:
        on_ready(url)
    try:
        server.run()
    finally:
        server.close()
        from gpulens.dashboard import data

        data.shutdown(now=True)
