"""Who may talk to the dashboard: loopback by default, authentication for anything wider.

Three layers, all on by default:
- binding: a non-loopback address is refused unless a password (``--auth-file``,
  ``$GPULENS_AUTH``, ``--auth``) of at least 12 characters or a token
  (``--token-file``, ``$GPULENS_TOKEN``, ``--token``) of at least 16 is given
  (:func:`check_bind`); secrets on the command line work, with a warning;
- Host header: requests must name an allowed host, which stops DNS-rebinding
  pages in the user's browser from reaching a loopback dashboard;
- authentication: HTTP Basic or a bearer token (also accepted once as
  ``?token=``, then kept in an HttpOnly cookie), compared in constant time;
  a client that keeps sending wrong credentials waits longer and longer
  (HTTP 429) -- requests without any are not failures.
Plus a Content-Security-Policy and request bodies capped at :data:`MAX_BODY`.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import os
import socket
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

from gpulens.profiler import GpulensError

LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})
TOKEN_COOKIE = "gpulens_token"
HEALTH_PATH = "/healthz"
#: Largest request body accepted (Dash callback payloads are kilobytes): bigger ones get 413 unread.
MAX_BODY = 4 << 20
#: Shortest password and token accepted beyond loopback.
MIN_PASSWORD, MIN_TOKEN = 12, 16
#: Failed authentications from one address before it has to wait, and the longest wait (seconds).
FREE_FAILURES, MAX_WAIT_S = 5, 60.0
ENV_AUTH, ENV_TOKEN = "GPULENS_AUTH", "GPULENS_TOKEN"


@dataclass(frozen=True)
class Access:
    host: str = "127.0.0.1"
    port: int = 8050
    user: str | None = None
    password: str | None = None
    token: str | None = None
    allowed_hosts: frozenset[str] = field(default_factory=frozenset)

    @property
    def needs_auth(self) -> bool:
        return bool(self.password or self.token)


def is_loopback(host: str) -> bool:
    if host.lower() in LOOPBACK_NAMES or host.lower().endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def parse_auth(value: str | None, source: str = "--auth") -> tuple[str | None, str | None]:
    if value is None:
        return None, None
    user, sep, password = value.strip("\r\n").partition(":")
    if not sep or not user or not password:
        raise GpulensError(f"{source} takes USER:PASSWORD (both non-empty)")
    return user, password


def auth_setting(argv_value: str | None, file: str | None,
                 env: Mapping[str, str] | None = None) -> tuple[str | None, str, str | None]:
    """(USER:PASSWORD, where it came from, a warning): ``--auth-file``, else ``$GPULENS_AUTH``, else ``--auth``."""
    return _secret("--auth", ENV_AUTH, "USER:PASSWORD", argv_value, file, env)


def token_setting(argv_value: str | None, file: str | None,
                  env: Mapping[str, str] | None = None) -> tuple[str | None, str, str | None]:
    """(token, where it came from, a warning): ``--token-file``, else ``$GPULENS_TOKEN``, else ``--token``."""
    return _secret("--token", ENV_TOKEN, "TOKEN", argv_value, file, env)


def _secret(flag: str, variable: str, shape: str, argv_value: str | None, file: str | None,
            env: Mapping[str, str] | None) -> tuple[str | None, str, str | None]:
    """A secret from a file, the environment or the command line, in that order.

    The command line is readable by every local user (``ps``, /proc/PID/cmdline); it still works, with a
    warning that names the two places that are not.
    """
    environ: Mapping[str, str] = os.environ if env is None else env
    if file is not None:
        try:
            with open(file, encoding="utf-8") as fh:
                return fh.readline().strip(), f"{flag}-file {file}", None
        except (OSError, UnicodeError) as exc:
            raise GpulensError(f"{flag}-file {file}: cannot read ({getattr(exc, 'strerror', None) or exc})") from None
    if environ.get(variable):
        return environ[variable], variable, None
    if argv_value is not None:
        return argv_value, flag, (f"gpulens: warning: the secret given with {flag} is visible to every local user "
                                  f"(ps, /proc/PID/cmdline); prefer {variable}={shape} or {flag}-file FILE")
    return None, flag, None


def check_bind(host: str, user: str | None, password: str | None, token: str | None, port: int = 8050) -> None:
    """Refuse to serve beyond loopback without authentication strong enough to face a network."""
    if is_loopback(host):
        return
    if password and len(password) < MIN_PASSWORD:
        raise GpulensError(f"refusing to serve on {host} with a password of {len(password)} characters: "
                           f"use at least {MIN_PASSWORD} (or a token of {MIN_TOKEN} or more)")
    if token and len(token) < MIN_TOKEN:
        raise GpulensError(f"refusing to serve on {host} with a token of {len(token)} characters: "
                           f"use at least {MIN_TOKEN}")
    if password or token:
        return
    raise GpulensError(
        f"refusing to serve on {host}: binding beyond loopback exposes your runs; set "
        f"{ENV_AUTH}=USER:PASSWORD (or --auth-file FILE) or {ENV_TOKEN}=TOKEN (or --token-file FILE) "
        f"(or keep the default --host 127.0.0.1 and use an SSH tunnel: ssh -L {port}:127.0.0.1:{port} HOST)")


def _local_names() -> set[str]:
    names = {socket.gethostname(), socket.getfqdn()}
    try:
        import psutil

        for addrs in psutil.net_if_addrs().values():
            for a in addrs:
                if a.family in (socket.AF_INET, socket.AF_INET6):
                    names.add(a.address.split("%")[0])
    except Exception:
        pass
    return {n.lower() for n in names if n}


def allowed_hosts(bind: str, extra: list[str] | tuple[str, ...] = ()) -> frozenset[str]:
    """Host names a request may carry: loopback names, the bound address, and ``--allow-host`` ones."""
    names = set(LOOPBACK_NAMES)
    if not is_loopback(bind):
        if bind in ("0.0.0.0", "::", ""):
            names |= _local_names()
        else:
            names.add(bind.lower().strip("[]"))
    names |= {h.lower().strip("[]") for h in extra if h}
    return frozenset(names)


def host_of(header: str) -> str:
    """The host part of a Host header: 'a:8050' -> 'a', '[::1]:8050' -> '::1'."""
    header = header.strip().lower()
    if header.startswith("["):
        return header[1:header.find("]")] if "]" in header else header
    return header.rsplit(":", 1)[0] if header.count(":") == 1 else header


def _basic_ok(header: str, user: str, password: str) -> bool:
    if not header.lower().startswith("basic "):
        return False
    try:
        got_user, _, got_pw = base64.b64decode(header[6:].strip()).decode("utf-8").partition(":")
    except Exception:
        return False
    return hmac.compare_digest(got_user.encode(), user.encode()) & hmac.compare_digest(got_pw.encode(),
                                                                                      password.encode())


def content_security_policy(server: Any, script_hashes: Callable[[], Sequence[str]]) -> None:
    """Scripts only from the dashboard itself (Dash's own inline scripts by hash): a name that slipped
    through as HTML could not run code or load anything from elsewhere.  Inline styles stay allowed
    (Plotly and Dash set style attributes)."""

    @server.after_request
    def _csp(resp: Any) -> Any:
        resp.headers.setdefault("Content-Security-Policy", csp(script_hashes()))
        return resp


def csp(script_hashes: Sequence[str]) -> str:
    return "; ".join((
        "default-src 'self'",
        "script-src 'self' " + " ".join(script_hashes),
        "style-src 'self' 'unsafe-inline'",
        "img-src 'self' data: blob:",
        "font-src 'self' data:",
        "connect-src 'self'",
        "object-src 'none'",
        "base-uri 'self'",
        "form-action 'self'",
        "frame-ancestors 'none'",
    ))


class Backoff:
    """Wrong credentials per client address: after :data:`FREE_FAILURES`, each further one doubles the wait
    (up to :data:`MAX_WAIT_S`) before that address is heard again.  Bounded memory.

    Only a *new* wrong credential counts: a request without any (a browser's first fetches, before it asks
    for the password) is no guess, nor is the same stale cookie or cached password sent again with every
    request of a page -- counting those locked out users who then typed the right password.  A guesser
    has to send different values, and each of them counts.
    """

    def __init__(self, size: int = 10_000, remembered: int = 32) -> None:
        self.size, self.remembered = size, remembered
        self._lock = threading.Lock()
        # address -> (failures, wait until, digests of the wrong credentials it sent lately)
        self._seen: OrderedDict[str, tuple[int, float, tuple[bytes, ...]]] = OrderedDict()

    def wait_s(self, addr: str, now: float | None = None) -> float:
        now = time.monotonic() if now is None else now
        with self._lock:
            until = self._seen.get(addr, (0, 0.0, ()))[1]
        return max(0.0, until - now)

    def failed(self, addr: str, credential: str | None = None, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        digest = hashlib.sha256(credential.encode("utf-8", "replace")).digest()[:16] if credential else None
        with self._lock:
            count, until, recent = self._seen.pop(addr, (0, 0.0, ()))
            if digest is None or digest not in recent:
                count += 1
                wait = min(2.0 ** (count - FREE_FAILURES), MAX_WAIT_S) if count >= FREE_FAILURES else 0.0
                until = now + wait
                if digest is not None:
                    recent = (*recent, digest)[-self.remembered:]
            self._seen[addr] = (count, until, recent)
            while len(self._seen) > self.size:
                self._seen.popitem(last=False)

    def succeeded(self, addr: str) -> None:
        with self._lock:
            self._seen.pop(addr, None)


def install(server: Any, access: Access) -> None:
    """Register the Host check, authentication and security headers on the Flask server."""
    from flask import Response, redirect, request

    allowed = access.allowed_hosts or allowed_hosts(access.host)
    server.config["MAX_CONTENT_LENGTH"] = MAX_BODY
    backoff = Backoff()

    @server.before_request
    def _guard() -> Any:
        if host_of(request.host) not in allowed:
            return Response(f"gpulens: host {request.host!r} not allowed (see --allow-host)\n", 400,
                            mimetype="text/plain")
        if (request.content_length or 0) > MAX_BODY:
            return Response(f"gpulens: request body over {MAX_BODY >> 20} MiB\n", 413, mimetype="text/plain")
        if not access.needs_auth or request.path == HEALTH_PATH:  # "ok" tells nobody anything: probes need no login
            return None
        client = request.remote_addr or "?"
        wait = backoff.wait_s(client)
        if wait > 0:
            return Response("gpulens: too many failed logins; try again later\n", 429, mimetype="text/plain",
                            headers={"Retry-After": str(int(wait) + 1)})
        ok = _authenticated(access)
        if ok is not False:
            backoff.succeeded(client)
            return None if ok is True else ok
        offered = _offered()
        if offered:  # asking without credentials is no failed login
            backoff.failed(client, offered)
        return Response("gpulens: authentication required\n", 401, mimetype="text/plain",
                        headers={"WWW-Authenticate": 'Basic realm="gpulens", charset="UTF-8"'}
                        if access.password else {})

    def _authenticated(access: Access) -> Any:
        """True, a response (the ?token= redirect that sets the cookie: a success), or False."""
        if access.token:
            given = request.args.get("token")
            if given is not None and hmac.compare_digest(given.encode(), access.token.encode()):
                args = [(k, v) for k, v in request.args.items(multi=True) if k != "token"]
                target = request.path + ("?" + urlencode(args) if args else "")
                resp = redirect(target)
                resp.set_cookie(TOKEN_COOKIE, access.token, httponly=True, samesite="Strict")
                return resp  # truthy: counts as a success
            auth = request.headers.get("Authorization", "")
            cookie = request.cookies.get(TOKEN_COOKIE, "")
            for candidate in (auth[7:].strip() if auth.lower().startswith("bearer ") else "", cookie):
                if candidate and hmac.compare_digest(candidate.encode(), access.token.encode()):
                    return True
        if access.password and access.user:
            if _basic_ok(request.headers.get("Authorization", ""), access.user, access.password):
                return True
        return False

    def _offered() -> str:
        """Every credential the request carries, as one string (empty: none)."""
        parts = (request.headers.get("Authorization", ""), request.args.get("token") or "",
                 request.cookies.get(TOKEN_COOKIE, "") if access.token else "")
        return "\n".join(parts) if any(parts) else ""

    @server.after_request
    def _headers(resp: Any) -> Any:
        resp.headers.setdefault("X-Content-Type-Options", "nosniff")
        resp.headers.setdefault("X-Frame-Options", "DENY")
        resp.headers.setdefault("Referrer-Policy", "no-referrer")
        resp.headers.setdefault("Cross-Origin-Opener-Policy", "same-origin")
        return resp
