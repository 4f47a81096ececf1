"""The dashboard is safe by default: loopback only, Host allowlist, authentication beyond loopback."""
from __future__ import annotations

import base64
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request

import psutil
import pytest
from dash_support import HOSTILE_ID, make_root

from gpulens.cli import _build_parser, main as cli_main
from gpulens.dashboard import connections
from gpulens.dashboard.app import create_app
from gpulens.dashboard.security import Access, allowed_hosts, check_bind, host_of
from gpulens.profiler import GpulensError

LOCAL = {"Host": "127.0.0.1:8050"}


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return make_root(tmp_path_factory.mktemp("sec") / "runs", runs=("cpu-cnn-workers",))


def test_default_bind_is_loopback():
    args = _build_parser().parse_args(["dashboard"])
    assert args.host == "127.0.0.1" and args.port == 8050


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "::1", "127.0.0.5"])
def test_loopback_needs_no_auth(host):
    check_bind(host, None, None, None)


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "10.1.2.3", "gpu-box.example.com"])
def test_non_loopback_without_auth_is_refused(host):
    with pytest.raises(GpulensError, match="GPULENS_AUTH=USER:PASSWORD .* or GPULENS_TOKEN=TOKEN"):
        check_bind(host, None, None, None)
    with pytest.raises(GpulensError, match="a password of 6 characters: use at least 12"):
        check_bind(host, "me", "secret", None)  # a network deserves more than a 6-letter password
    check_bind(host, "me", "correct horse battery", None)
    check_bind(host, None, None, "t" * 24)


@pytest.mark.parametrize("argv, fragment", [
    (["--host", "0.0.0.0"], "refusing to serve on 0.0.0.0"),
    (["--host", "0.0.0.0", "--port", "9123"], "ssh -L 9123:127.0.0.1:9123 HOST"),  # the hint keeps the port
    (["--auth", "nocolon"], "--auth takes USER:PASSWORD"),
    (["--port", "70000"], "not a TCP port"),
    (["--token", "short"], "at least 16 characters"),
])
def test_cli_refuses_with_one_line(root, capsys, argv, fragment):
    assert cli_main(["dashboard", str(root), *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert fragment in err and "\n" not in err


def test_cli_missing_runs_dir(tmp_path, capsys):
    assert cli_main(["dashboard", str(tmp_path / "nope")]) == 2
    assert "no such runs directory" in capsys.readouterr().err


def test_host_header_allowlist_blocks_dns_rebinding(root):
    client = create_app(root).server.test_client()
    assert client.get("/", headers=LOCAL).status_code == 200
    assert client.get("/", headers={"Host": "localhost:8050"}).status_code == 200
    assert client.get("/", headers={"Host": "[::1]:8050"}).status_code == 200
    r = client.get("/", headers={"Host": "attacker.example:8050"})
    assert r.status_code == 400 and b"not allowed" in r.data
    assert client.get("/_dash-layout", headers={"Host": "attacker.example"}).status_code == 400


def test_host_parsing_and_wide_binds():
    assert host_of("[::1]:8050") == "::1" and host_of("a.b:1") == "a.b" and host_of("::1") == "::1"
    assert "gpu-box" in allowed_hosts("0.0.0.0", ["gpu-box"])
    assert "10.0.0.7" in allowed_hosts("10.0.0.7")


def test_basic_auth(root):
    access = Access("0.0.0.0", 8050, "me", "s3cret", None, allowed_hosts("0.0.0.0", ["box"]))
    client = create_app(root, access).server.test_client()
    host = {"Host": "box:8050"}
    r = client.get("/", headers=host)
    assert r.status_code == 401 and r.headers["WWW-Authenticate"].startswith("Basic")
    bad = base64.b64encode(b"me:wrong").decode()
    assert client.get("/", headers={**host, "Authorization": f"Basic {bad}"}).status_code == 401
    good = base64.b64encode(b"me:s3cret").decode()
    assert client.get("/", headers={**host, "Authorization": f"Basic {good}"}).status_code == 200
    assert client.get("/_dash-layout", headers={**host, "Authorization": f"Basic {good}"}).status_code == 200
    assert client.get("/_dash-layout", headers=host).status_code == 401  # the API too, not only the page


def test_token_auth_sets_a_cookie_once(root):
    token = "t0ken-" + "x" * 20
    access = Access("0.0.0.0", 8050, None, None, token, allowed_hosts("0.0.0.0", ["box"]))
    client = create_app(root, access).server.test_client()
    host = {"Host": "box"}
    assert client.get("/", headers=host).status_code == 401
    assert client.get("/?token=wrong", headers=host).status_code == 401
    r = client.get(f"/run/x?token={token}&a=1", headers=host)
    assert r.status_code == 302 and r.headers["Location"].endswith("/run/x?a=1")
    assert "HttpOnly" in r.headers["Set-Cookie"] and "SameSite=Strict" in r.headers["Set-Cookie"]
    assert client.get("/", headers=host).status_code == 200  # the cookie
    fresh = create_app(root, access).server.test_client()
    assert fresh.get("/", headers={**host, "Authorization": f"Bearer {token}"}).status_code == 200


def test_security_headers(root):
    r = create_app(root).server.test_client().get("/", headers=LOCAL)
    assert r.headers["X-Frame-Options"] == "DENY" and r.headers["X-Content-Type-Options"] == "nosniff"


def test_trace_download_and_traversal(root, tmp_path):
    make_root(tmp_path / "r2", runs=())
    client = create_app(tmp_path / "r2").server.test_client()
    ok = client.get(f"/download/trace/{HOSTILE_ID}/0/0", headers=LOCAL)
    assert ok.status_code == 200 and ok.data[:2] == b"\x1f\x8b"  # the gzipped trace, as recorded
    assert "attachment" in ok.headers["Content-Disposition"]
    for bad in ("..%2F..%2Fetc", "..", "%2Fetc%2Fpasswd", f"{HOSTILE_ID}%2F..%2F..", "nope"):
        r = client.get(f"/download/trace/{bad}/0/0", headers=LOCAL)
        # either refused, or (a path the URL parser normalised away) Dash's own page shell: never a file
        assert r.status_code == 404 or (r.mimetype == "text/html" and b"_dash-config" in r.data), bad
        assert "Content-Disposition" not in r.headers, bad
    assert client.get(f"/download/trace/{HOSTILE_ID}/0/99", headers=LOCAL).status_code == 404


def test_pages_with_bad_run_ids_show_an_error_not_a_traceback(root):
    from gpulens.dashboard import data
    from gpulens.dashboard.pages import kernels, live, run

    data.configure(root)
    for page in (run, kernels, live):
        for bad in ("../cpu-cnn-workers", "/etc/passwd", "no-such-run"):
            text = str(page.layout(run_id=bad).to_plotly_json())
            assert "page-error" in text and ("invalid run id" in text or "no such run" in text), (page, bad)


# ----------------------------------------------------------------------------- idle and half-sent connections
def _half_open(port: int, n: int) -> list[socket.socket]:
    """``n`` sockets that each sent the start of a request head and then nothing (slowloris)."""
    held = []
    for _ in range(n):
        s = socket.create_connection(("127.0.0.1", port), timeout=5)
        s.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
        held.append(s)
    return held


def _timed_get(url: str, headers: dict[str, str] | None = None) -> tuple[int, float]:
    t0 = time.monotonic()
    with urllib.request.urlopen(urllib.request.Request(url, headers=headers or {}), timeout=30) as resp:
        resp.read()
        return resp.status, time.monotonic() - t0


def _wait_until_up(proc: subprocess.Popen, port: int) -> None:
    deadline = time.monotonic() + 60
    while True:
        try:
            _timed_get(f"http://127.0.0.1:{port}/healthz")
            return
        except OSError:
            assert proc.poll() is None and time.monotonic() < deadline, "the dashboard did not start"
            time.sleep(0.2)


def test_two_hundred_half_sent_requests_do_not_starve_the_dashboard(root):
    """The real server (waitress, as ``gpulens dashboard`` runs it): 200 idle half-sent requests from one
    address, before any authentication, and a request still answers within 2 s."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "gpulens", "dashboard", str(root), "--port", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    held: list[socket.socket] = []
    try:
        _wait_until_up(proc, port)
        held = _half_open(port, 200)
        time.sleep(1.0)  # let the server take them all in
        status, took = _timed_get(f"http://127.0.0.1:{port}/healthz")
        assert status == 200 and took <= 2.0, took
        status, took = _timed_get(f"http://127.0.0.1:{port}/", {"Host": f"127.0.0.1:{port}"})
        assert status == 200 and took <= 2.0, took
        # the server shed the oldest of them: far fewer than 200 are still open on its side
        conns = [c for c in psutil.Process(proc.pid).net_connections("tcp") if c.status == "ESTABLISHED"]
        assert len(conns) <= connections.PER_CLIENT + 8, len(conns)
    finally:
        for s in held:
            s.close()
        proc.terminate()
        proc.wait(timeout=10)


def test_a_request_head_sent_a_byte_at_a_time_is_cut_off_and_idle_sockets_are_capped(monkeypatch):
    """The limits themselves on a real waitress server with a tiny app (short deadlines to keep it quick)."""
    from waitress import create_server

    monkeypatch.setattr(connections, "HEADER_TIMEOUT_S", 1.0)
    monkeypatch.setattr(connections, "PER_CLIENT", 5)

    def app(environ, start_response):
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"ok\n"]

    server = create_server(app, host="127.0.0.1", port=0, threads=2,
                           **{**connections.SERVER_OPTIONS, "cleanup_interval": 0.2, "asyncore_loop_timeout": 0.2})
    connections.guard(server)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    port = server.effective_port
    try:
        trickler = socket.create_connection(("127.0.0.1", port), timeout=10)
        head = b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: " + b"a" * 40
        cut_after = None
        t0 = time.monotonic()
        for byte in head:  # a byte every 0.1 s keeps waitress's idle timer fresh, not the head's deadline
            try:
                trickler.sendall(bytes([byte]))
            except OSError:
                cut_after = time.monotonic() - t0
                break
            time.sleep(0.1)
        if cut_after is None:
            trickler.settimeout(5)
            assert trickler.recv(100) == b""  # closed by the server without an answer
            cut_after = time.monotonic() - t0
        assert 1.0 <= cut_after <= 4.0, cut_after
        trickler.close()
        held = _half_open(port, 12)
        time.sleep(1.5)
        open_ = sum(1 for c in psutil.Process().net_connections("tcp")
                    if c.status == "ESTABLISHED" and c.laddr.port == port)
        assert open_ <= 5, open_  # the longest-idle ones were closed past the per-client limit
        assert _timed_get(f"http://127.0.0.1:{port}/")[0] == 200
        for s in held:
            s.close()
    finally:
        server.close()


@pytest.fixture(scope="module")
def long_run_root(tmp_path_factory):
    """A run of a million steps (an analysis of seconds), made once and copied by each test that needs it."""
    root = tmp_path_factory.mktemp("long-run")
    return root, _long_run(root)


def _long_run(root) -> str:
    """A run whose analysis takes seconds: a sample run with a million more steps."""
    import shutil
    import sqlite3

    from dash_support import SAMPLES

    from gpulens.profiler.store.schema import STEP_COLUMNS

    shutil.copytree(SAMPLES / "cpu-cnn-workers", root / "long")
    conn = sqlite3.connect(root / "long" / "rank-0.db")
    cols = list(STEP_COLUMNS)
    last = conn.execute(f"SELECT {', '.join(cols)} FROM steps ORDER BY step DESC LIMIT 1").fetchone()
    step, t_start, t_end = cols.index("step"), cols.index("t_start"), cols.index("t_end")
    # the last step repeated a million times, 10 ms apart, inside SQLite (a Python generator of rows took
    # ~11 CPU-s, once per pytest worker that ran one of these tests)
    values = []
    for i in range(len(last)):
        if i == step:
            values.append(f"{int(last[step])} + k")
        elif i == t_start:
            values.append(f"{float(last[t_end])!r} + (k - 1) * 0.01")
        elif i == t_end:
            values.append(f"{float(last[t_end])!r} + k * 0.01")
        else:
            values.append("?")
    conn.execute(f"WITH RECURSIVE n(k) AS (SELECT 1 UNION ALL SELECT k + 1 FROM n WHERE k < 1000000) "
                 f"INSERT INTO steps ({', '.join(cols)}) SELECT {', '.join(values)} FROM n",
                 [v for i, v in enumerate(last) if i not in (step, t_start, t_end)])
    conn.commit()
    conn.close()
    return "long"


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGKILL], ids=["ctrl-c", "term", "kill"])
def test_a_stopped_dashboard_leaves_no_analysis_process_behind(tmp_path, long_run_root, sig):
    """Analyses run in a worker process. Ctrl-C and SIGTERM (`kill`, `docker stop`) stop the dashboard without
    waiting for one, without a traceback, with the exit a supervisor expects; even SIGKILL, which runs no
    cleanup, leaves no orphaned analysis process holding its memory."""
    import json

    root = tmp_path / "runs"
    template, run_id = long_run_root
    shutil.copytree(template, root)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "gpulens", "dashboard", str(root), "--port", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        _wait_until_up(proc, port)
        base = f"http://127.0.0.1:{port}"
        deps = json.load(urllib.request.urlopen(base + "/_dash-dependencies", timeout=30))
        cb = next(d for d in deps if "run-cards.children" in d["output"])
        outputs = [{"id": o.split(".")[0], "property": o.split(".")[1]}
                   for o in cb["output"].strip(".").split("...")]
        body = json.dumps({"output": cb["output"], "outputs": outputs, "state": [], "changedPropIds": [],
                           "inputs": [{"id": "run-id", "property": "data", "value": run_id},
                                      {"id": "run-analysis-poll", "property": "n_intervals", "value": 0}]})
        req = urllib.request.Request(base + "/_dash-update-component", data=body.encode(),
                                     headers={"Content-Type": "application/json"})
        answer = json.load(urllib.request.urlopen(req, timeout=30))
        assert answer["response"]["run-analysis-poll"]["max_intervals"] == 1  # analysing, said at once: one more tick
        family = psutil.Process(proc.pid).children(recursive=True)
        workers = [p for p in family if "multiprocessing" in " ".join(p.cmdline())]
        assert workers  # the analysis's process, busy with a million steps
        proc.send_signal(sig)
        out, _ = proc.communicate(timeout=60)
        assert proc.returncode == {signal.SIGINT: 130, signal.SIGTERM: -signal.SIGTERM,
                                   signal.SIGKILL: -signal.SIGKILL}[sig], out.decode()
        assert b"Traceback" not in out, out.decode()
        # an analysis takes seconds more; gone well before it could have finished (SIGKILL: the worker's own
        # parent check, once a second)
        _, alive = psutil.wait_procs(family, timeout=30)
        assert not [p for p in alive if p.status() != psutil.STATUS_ZOMBIE], alive
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_a_run_pages_html_starts_its_analysis_only_once_the_request_passed_the_checks(root):
    """Typing or reloading a run's page starts its analysis with the HTML, ~1 s before the page's callbacks
    ask for it -- but only for a request the security layer let through, only for a run in the root."""
    from gpulens.dashboard import data

    access = Access("0.0.0.0", 8050, "me", "correct horse battery", None, allowed_hosts("0.0.0.0", ["box"]))
    client = create_app(root, access).server.test_client()
    run = data.run_path("cpu-cnn-workers")
    host = {"Host": "box:8050"}
    good = {**host, "Authorization": "Basic " + base64.b64encode(b"me:correct horse battery").decode()}
    try:
        assert client.get("/run/cpu-cnn-workers/kernels", headers=host).status_code == 401
        assert client.get("/run/cpu-cnn-workers", headers={"Host": "attacker.example"}).status_code == 400
        assert run not in data._analyses._cache  # refused requests start nothing
        for hostile in ("/run/..%2F..%2Fetc/kernels", "/run/%00/kernels", "/run/no-such-run", "/run/../../x"):
            assert client.get(hostile, headers=good).status_code in (200, 404)  # the page says what is wrong
        assert client.get("/run/cpu-cnn-workers/kernels", headers=good).status_code == 200
        assert run in data._analyses._cache
        done = data.analysis("cpu-cnn-workers", wait=120)
        assert done is not None and done.error is None and done.windows  # the one the page's callbacks read
    finally:
        data.shutdown(now=True)
