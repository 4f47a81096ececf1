"""Who may talk to the dashboard: loopback by default, authentication for anything wider.

Three layers, all on by default:
- binding: a non-loopback address is refused unless ``--auth user:password``
  or ``--token`` is given (:func:`check_bind`);
- Host header: requests must name an allowed host, which stops DNS-rebinding
  pages in the user's browser from reaching a loopback dashboard;
- authentication: HTTP Basic or a bearer token (also accepted once as
  ``?token=``, then kept in an HttpOnly cookie), compared in constant time.
"""
from __future__ import annotations

import base64
import hmac
import ipaddress
import socket
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

from gpulens.profiler import GpulensError

LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})
TOKEN_COOKIE = "gpulens_token"


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


def parse_auth(value: str | None) -> tuple[str | None, str | None]:
    if value is None:
        return None, None
    user, sep, password = value.partition(":")
    if not sep or not user or not password:
        raise GpulensError("--auth takes USER:PASSWORD (both non-empty)")
    return user, password


def check_bind(host: str, user: str | None, password: str | None, token: str | None) -> None:
    """Refuse to serve beyond loopback without authentication."""
    if is_loopback(host):
        return
    if password or token:
        return
    raise GpulensError(
        f"refusing to serve on {host}: binding beyond loopback exposes your runs; "
        "add --auth USER:PASSWORD or --token TOKEN (or keep the default --host 127.0.0.1 "
        "and use an SSH tunnel: ssh -L 8050:127.0.0.1:8050 HOST)")


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


def install(server: Any, access: Access) -> None:
    """Register the Host check, authentication and security headers on the Flask server."""
    from flask import Response, redirect, request

    allowed = access.allowed_hosts or allowed_hosts(access.host)

    @server.before_request
    def _guard() -> Any:
        if host_of(request.host) not in allowed:
            return Response(f"gpulens: host {request.host!r} not allowed (see --allow-host)\n", 400,
                            mimetype="text/plain")
        if not access.needs_auth:
            return None
        if access.token:
            given = request.args.get("token")
            if given is not None and hmac.compare_digest(given.encode(), access.token.encode()):
                args = [(k, v) for k, v in request.args.items(multi=True) if k != "token"]
                target = request.path + ("?" + urlencode(args) if args else "")
                resp = redirect(target)
                resp.set_cookie(TOKEN_COOKIE, access.token, httponly=True, samesite="Strict")
                return resp
            auth = request.headers.get("Authorization", "")
            cookie = request.cookies.get(TOKEN_COOKIE, "")
            for candidate in (auth[7:].strip() if auth.lower().startswith("bearer ") else "", cookie):
                if candidate and hmac.compare_digest(candidate.encode(), access.token.encode()):
                    return None
        if access.password and access.user:
            if _basic_ok(request.headers.get("Authorization", ""), access.user, access.password):
                return None
        return Response("gpulens: authentication required\n", 401, mimetype="text/plain",
                        headers={"WWW-Authenticate": 'Basic realm="gpulens", charset="UTF-8"'}
                        if access.password else {})

    @server.after_request
    def _headers(resp: Any) -> Any:
        resp.headers.setdefault("X-Content-Type-Options", "nosniff")
        resp.headers.setdefault("X-Frame-Options", "DENY")
        resp.headers.setdefault("Referrer-Policy", "no-referrer")
        resp.headers.setdefault("Cross-Origin-Opener-Policy", "same-origin")
        return resp
