"""Nothing lost, nothing hidden, nothing exposed: full disks, broken runs, bounded inputs, credentials, exit codes."""
from __future__ import annotations

import base64
import json
import shutil
import os
import socket
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from dash_support import SAMPLES

import gpulens
from gpulens.cli import _build_parser, main as cli_main
from gpulens.dashboard import data
from gpulens.dashboard.app import create_app
from gpulens.dashboard.security import Access, Backoff, auth_setting, token_setting
from gpulens.profiler import GpulensError, RunError, open_run

GPULENS = str(Path(sys.executable).with_name("gpulens"))
PY = sys.executable
LOCAL = {"Host": "127.0.0.1:8050"}


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GPULENS_")}
    env.update(extra)
    return env


def _one_line_error(proc: subprocess.CompletedProcess, fragment: str) -> None:
    err = proc.stderr.strip()
    assert proc.returncode == 2, (proc.returncode, err)
    assert fragment in err and "\n" not in err and "internal error" not in err, err


# ----------------------------------------------------------------------------- 1. full disks
FILLER = textwrap.dedent("""
    import os, resource, signal, sys, time, torch, gpulens
    root, mode = sys.argv[1], sys.argv[2]
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead of killing us
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    model = torch.nn.Linear(8, 1); opt = torch.optim.SGD(model.parameters(), lr=0.01)
    n = 0
    with gpulens.track("full", runs_dir=root, quiet=True, advise=False, profile=False) as run:
        for phase, seconds in (("free", 1.0), ("full", 1.5), ("freed", 1.0)):
            if phase == "full":
                resource.setrlimit(resource.RLIMIT_FSIZE, (1, hard))  # nothing can grow: a full disk
            elif phase == "freed" and mode == "frees":
                resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
            end = time.time() + seconds
            while time.time() < end:
                opt.zero_grad(); model(torch.randn(4, 8)).sum().backward(); opt.step(); run.step(); n += 1
                time.sleep(0.001)
        if mode == "frees":
            pass
        else:
            resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))  # let close() write, as a freed disk would
    print(n, run.path)
""")


def test_a_disk_that_fills_and_frees_loses_nothing(tmp_path):
    """Writes that fail on a full disk are kept (bounded) and written once space is back."""
    script = tmp_path / "fill.py"
    script.write_text(FILLER)
    proc = subprocess.run([PY, str(script), str(tmp_path / "runs"), "frees"], capture_output=True, text=True,
                          timeout=120, env=_env())
    assert proc.returncode == 0, proc.stderr
    made, path = proc.stdout.split()
    run = open_run(path)
    assert run.info.status == "finished"
    assert len(run.steps()) == int(made)  # every step, the ones made while the disk was full included
    kinds = [e.kind for e in run.events()]
    assert "write_recovered" in kinds
    assert not run.meta().get("records_lost")
    assert "keeping up to" in proc.stderr  # said once, when it started


@pytest.fixture
def tiny_disk(tmp_path):
    """A 2 MB tmpfs (needs root and mount rights; skipped where a container forbids it)."""
    mnt = tmp_path / "tiny"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mnt)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here (not root, or no mount rights)")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


DELETER = textwrap.dedent("""
    import shutil, sys, time, torch, gpulens
    root, at = sys.argv[1], int(sys.argv[2])
    model = torch.nn.Linear(8, 1); opt = torch.optim.SGD(model.parameters(), lr=0.01)
    with gpulens.track("deleted", runs_dir=root, advise=False) as run:
        for i in range(3000):
            opt.zero_grad(); model(torch.randn(4, 8)).sum().backward(); opt.step(); run.step()
            if i == at:
                time.sleep(0.8)  # what came before is on disk
                # "rm -rf" of the run folder, by hand or by a cleanup job; like rm, it may find the folder not
                # empty at the end: the recorder saw its files go and began a new database in it (a busy host
                # gives it the time between rmtree's listing and its rmdir)
                shutil.rmtree(run.path, ignore_errors=True)
            time.sleep(0.0005)
    print(run.path)
""")


@pytest.mark.parametrize("at", [1000, 2999])  # mid-run, and just before the run closes
def test_a_run_folder_deleted_mid_run_is_said_once_and_recording_goes_on_into_a_new_one(tmp_path, at):
    script = tmp_path / "deleter.py"
    script.write_text(DELETER)
    proc = subprocess.run([PY, str(script), str(tmp_path / "runs"), str(at)], capture_output=True, text=True,
                          timeout=180, env=_env())
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.count("was deleted while the run was recording") == 1, proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert "finished: 3000 steps, but the run's database was deleted during the run: it holds what came after" in \
        last, proc.stderr
    with open_run(Path(proc.stdout.strip())) as run:
        assert run.info.status == "finished"
        kept = len(run.steps())
        assert kept < 3000 - at + 200 and (kept > 500 if at < 2000 else True)  # what came after, not before
        meta = run.meta()
        assert meta["records_lost"]["deleted"] > 0 and len(meta["recreated"]) == 1
        assert meta["name"] == "deleted" and meta["steps"] == 3000  # its metadata survived


def test_a_run_that_filled_the_disk_still_opens_with_its_status_and_counts(tiny_disk, tmp_path):
    script = tmp_path / "fast.py"
    script.write_text(textwrap.dedent(f"""
        import shutil, sys, time, torch, gpulens
        from gpulens.profiler.store.writer import MAX_PENDING
        MAX_PENDING["steps"] = 2000  # the writer's backlog bound, small so that the test passes it in seconds
        model = torch.nn.Linear(8, 1); opt = torch.optim.SGD(model.parameters(), lr=0.01)
        with gpulens.track("fill", runs_dir={str(tiny_disk)!r}, quiet=True, advise=False) as run:
            # until the disk is full, then more steps than the writer's backlog holds, however long a busy
            # host takes for them
            deadline, full, after = time.time() + 200, None, 0
            while time.time() < deadline and not (full and after > MAX_PENDING["steps"] + 2000
                                                   and time.time() - full > 3):
                opt.zero_grad(); model(torch.randn(4, 8)).sum().backward(); opt.step(); run.step()
                if full is None and shutil.disk_usage({str(tiny_disk)!r}).free < 64 * 1024:
                    full = time.time()
                after += full is not None
        print(run.path)
        print("disk full" if full else "disk never filled", file=sys.stderr)
    """))
    proc = subprocess.run([PY, str(script)], capture_output=True, text=True, timeout=240, env=_env())
    assert proc.returncode == 0, proc.stderr  # training went on
    assert "disk full" in proc.stderr
    path = Path(proc.stdout.strip())
    assert Path(f"{path}/rank-0.db-wal").exists()  # the closing checkpoint could not run: the WAL holds the run
    run = open_run(path)
    assert run.info.status == "finished"  # the space set aside at the start carried the final status
    assert len(run.steps()) > 1000
    lost = run.meta()["records_lost"]
    assert lost["steps"] > 0
    report = subprocess.run([GPULENS, "report", str(path)], capture_output=True, text=True, timeout=120,
                            env=_env(COLUMNS="160"))
    assert report.returncode == 0 and "never written (a full backlog" in report.stdout, report.stderr


def test_the_writer_backlog_is_bounded_and_what_it_drops_is_counted(tmp_path, monkeypatch):
    from gpulens.profiler.store import writer as writer_mod

    monkeypatch.setitem(writer_mod.MAX_PENDING, "steps", 1000)
    w = writer_mod.RunWriter(tmp_path / "rank-0.db", {"name": "backlog", "status": "running"}, flush_interval=60)
    row = lambda i: (i, 1e9 + i, 1e9 + i + 0.5, 0.0, 0.1, 0.1, 0.1, 0.2, 8, None, 1.0) + (None,) * 9 + (0, None)
    for i in range(5000):  # faster than any flush: the writer is asleep for 60 s
        w.step(row(i))
    assert len(w._steps) == 1000
    w.close(status="finished")
    run = open_run(tmp_path)
    steps = run.steps()
    assert list(steps.step[[0, -1]]) == [4000, 4999]  # the newest kept, the oldest dropped
    assert run.meta()["records_lost"] == {"steps": 4000}


# ----------------------------------------------------------------------------- 2. one bad run hides nothing
@pytest.fixture
def mixed_root(tmp_path):
    import shutil

    root = tmp_path / "runs"
    root.mkdir()
    for name in ("good", "badpid", "badextra", "name\udcff"):
        shutil.copytree(SAMPLES / "cpu-cnn-workers", root / name)  # "\udcff": the byte 0xff, not UTF-8
    conn = sqlite3.connect(root / "badpid" / "rank-0.db")
    conn.execute("UPDATE meta SET value = ? WHERE key = 'pid'", (json.dumps("abc"),))
    conn.execute("UPDATE meta SET value = ? WHERE key = 'status'", (json.dumps("running"),))
    conn.commit()
    conn.close()
    conn = sqlite3.connect(root / "badextra" / "rank-0.db")
    conn.execute("UPDATE steps SET extra = '{not json' WHERE step = 3")
    conn.commit()
    conn.close()
    return root


def test_ls_lists_every_run_and_marks_the_broken_ones(mixed_root):
    proc = subprocess.run([GPULENS, "ls", str(mixed_root), "--json"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    rows = {r["id"]: r for r in json.loads(proc.stdout)}
    assert rows["good"]["status"] == "finished" and rows["good"]["steps"] == 114
    assert rows["badpid"]["status"] == "broken" and "pid is 'abc'" in rows["badpid"]["error"]
    assert rows["badextra"]["status"] == "broken" and "corrupt run data" in rows["badextra"]["error"]
    assert rows["name\\xff"]["status"] == "broken" and "invalid run id" in rows["name\\xff"]["error"]
    table = subprocess.run([GPULENS, "ls", str(mixed_root)], capture_output=True, text=True, timeout=120)
    assert table.returncode == 0 and "good" in table.stdout and "name\\xff" in table.stdout
    report = subprocess.run([GPULENS, "report", os.fsdecode(os.fsencode(mixed_root) + b"/name\xff")],
                            capture_output=True, text=True, timeout=120, env=_env(COLUMNS="120"))
    assert report.returncode == 0 and "name\\xff" in report.stdout, report.stderr


def test_dashboard_runs_page_survives_broken_runs(mixed_root):
    app = create_app(mixed_root)
    client = app.server.test_client()
    deps = client.get("/_dash-dependencies", headers=LOCAL).get_json()
    cb = next(d for d in deps if any(i["id"] == "runs-poll" for i in d["inputs"]))
    outputs = [{"id": o.split(".")[0], "property": o.split(".")[1]} for o in cb["output"].strip(".").split("...")]
    deadline = time.monotonic() + 120
    for n in range(10_000):  # as the page polls: until every analysis is in
        resp = client.post("/_dash-update-component", headers=LOCAL, json={
            "output": cb["output"], "outputs": outputs, "changedPropIds": ["runs-poll.n_intervals"],
            "inputs": [{"id": "runs-poll", "property": "n_intervals", "value": n}], "state": []})
        assert resp.status_code == 200
        if resp.get_json()["response"]["runs-poll"]["disabled"] or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    rows = {r["id"]: r for r in resp.get_json()["response"]["runs-grid"]["rowData"]}
    assert rows["good"]["status"] == "finished"
    assert rows["badpid"]["status"] == "broken" and rows["badextra"]["status"] == "broken"
    assert len(rows) == 4
    data.reset()


# ----------------------------------------------------------------------------- 3. a busy Prometheus port
def test_a_busy_prometheus_port_records_and_closes_the_run(tmp_path, caplog):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with gpulens.track("prom", runs_dir=tmp_path, quiet=True, advise=False, profile=False,
                           prometheus_port=port) as run:
            for _ in range(6):
                run.step()
    assert run.prometheus_url is None
    warnings = [r.getMessage() for r in caplog.records if "Prometheus" in r.getMessage()]
    assert len(warnings) == 1 and "already in use" in warnings[0] and "recording goes on" in warnings[0]
    reader = open_run(run.path)
    assert reader.info.status == "finished" and len(reader.steps()) == 6


# ----------------------------------------------------------------------------- 4. bounded inputs
def test_request_bodies_are_capped_before_auth_and_before_reading(tmp_path):
    root = tmp_path / "runs"
    root.mkdir()
    big = b"x" * (20 << 20)
    for access in (Access(), Access(host="0.0.0.0", user="me", password="correct horse battery")):
        client = create_app(root, access).server.test_client()
        resp = client.post("/_dash-update-component", data=big, headers={**LOCAL, "Content-Type": "application/json"})
        assert resp.status_code == 413


def test_a_forged_live_cursor_costs_no_more_than_a_real_one(tmp_path):
    from test_dashboard import _live_writer

    from gpulens.dashboard.pages import live

    data.configure(tmp_path)
    w, sid, start = _live_writer(tmp_path / "live-run")
    try:
        forged = {"token": "made-up", "last": [0.0] * 50,
                  "sources": [{"metric": "host.cpu", "gpu": -1, "rank": 0, "scale": 1}] * 50}
        t0 = time.perf_counter()
        fig, upd, cursor, *_ = live.live_update(1, 60, "light", "live-run", forged, {"width": 800})
        assert upd is live.no_update and fig["data"]  # an unknown build: a fresh figure, nothing read for it
        assert set(cursor) == {"token", "last"} and cursor["token"] != "made-up"
        cursor["last"] = [0.0] * len(cursor["last"])  # a real token, positions from the epoch
        _, upd, *_ = live.live_update(2, 60, "light", "live-run", cursor, {"width": 800})
        assert upd is live.no_update or all(len(x) <= m for x, m in zip(upd["x"], upd["max"]))
        cursor["last"] = ["x"]  # positions that do not fit the build: a rebuild
        fig3, upd3, *_ = live.live_update(3, 60, "light", "live-run", cursor, {"width": 800})
        assert upd3 is live.no_update and fig3["data"]
        assert time.perf_counter() - t0 < 30  # a bound for a loaded machine; forged work was 13 s per call before
    finally:
        w.meta(status="finished", end=time.time())
        w.close()
        data.reset()


def test_a_gzip_bomb_is_refused_with_a_clear_error_and_bounded_memory(tmp_path):
    import gzip

    bomb = tmp_path / "bomb.pt.trace.json.gz"
    bomb.write_bytes(gzip.compress(b'{"traceEvents": [' + b" " * (300 << 20) + b"]}", 9))
    assert bomb.stat().st_size < 1 << 20
    proc = subprocess.run(["/usr/bin/time", "-f", "%M", GPULENS, "import", str(bomb), "--runs-dir",
                           str(tmp_path / "runs")], capture_output=True, text=True, timeout=120)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and "decompresses to more than" in lines[0]
    assert int(lines[-1]) < 400_000  # KiB of peak RSS: far from the 300 MiB the file holds
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


# ----------------------------------------------------------------------------- 5. credentials and what pages show
def test_credentials_come_from_a_file_or_the_environment_and_argv_warns(tmp_path, capsys):
    secret = tmp_path / "auth"
    secret.write_text("me:correct horse battery\n")
    assert auth_setting(None, str(secret), {})[:2] == ("me:correct horse battery", f"--auth-file {secret}")
    assert auth_setting(None, None, {"GPULENS_AUTH": "me:from env here"}) == ("me:from env here", "GPULENS_AUTH", None)
    value, _, warning = auth_setting("me:on the command line", None, {})
    assert value == "me:on the command line" and "visible to every local user" in warning
    assert cli_main(["dashboard", str(tmp_path), "--host", "0.0.0.0", "--auth", "me:short"]) == 2
    err = capsys.readouterr().err.strip()
    assert "at least 12" in err and "\n" not in err


def test_tokens_come_from_a_file_or_the_environment_and_argv_warns(tmp_path, capsys):
    secret = tmp_path / "token"
    secret.write_text("s3cr3t-token-of-24-chars\n")
    assert token_setting(None, str(secret), {})[:2] == ("s3cr3t-token-of-24-chars", f"--token-file {secret}")
    assert token_setting(None, None, {"GPULENS_TOKEN": "from-the-environment"})[0] == "from-the-environment"
    value, _, warning = token_setting("on-the-command-line-1", None, {})
    assert value == "on-the-command-line-1" and "visible to every local user" in warning
    assert "GPULENS_TOKEN=TOKEN or --token-file FILE" in warning
    assert cli_main(["dashboard", str(tmp_path), "--token-file", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err.strip()
    assert "--token-file" in err and "cannot read" in err and "\n" not in err
    assert cli_main(["dashboard", str(tmp_path), "--host", "0.0.0.0", "--token", "short"]) == 2
    err = capsys.readouterr().err.strip()
    assert "at least 16 characters" in err and "--token TOKEN" not in err


def test_an_empty_token_variable_does_not_stop_the_loopback_dashboard(monkeypatch):
    monkeypatch.setenv("GPULENS_TOKEN", "")
    args = _build_parser().parse_args(["dashboard"])
    assert args.token is None


def test_repeated_failed_logins_back_off():
    backoff = Backoff()
    for _ in range(4):
        backoff.failed("10.0.0.9", now=100.0)
        assert backoff.wait_s("10.0.0.9", now=100.0) == 0  # the first failures cost nothing
    backoff.failed("10.0.0.9", now=100.0)
    waits = [backoff.wait_s("10.0.0.9", now=100.0)]
    for _ in range(10):
        backoff.failed("10.0.0.9", now=100.0)
        waits.append(backoff.wait_s("10.0.0.9", now=100.0))
    assert waits[0] == 1 and waits[1] == 2 and max(waits) == 60  # doubling, capped
    assert backoff.wait_s("10.0.0.8", now=100.0) == 0  # others are not punished
    backoff.succeeded("10.0.0.9")
    assert backoff.wait_s("10.0.0.9", now=100.0) == 0


def test_login_backoff_over_http_and_the_security_headers(tmp_path):
    root = tmp_path / "runs"
    root.mkdir()
    client = create_app(root, Access(host="0.0.0.0", user="me", password="correct horse battery")).server.test_client()
    def basic(password: str) -> dict[str, str]:
        return {**LOCAL, "Authorization": "Basic " + base64.b64encode(f"me:{password}".encode()).decode()}

    # a browser's fetches before it asks for the password, and the same stale password resent: no guesses
    assert {client.get("/", headers=LOCAL).status_code for _ in range(12)} == {401}
    assert {client.get("/", headers=basic("yesterday's one")).status_code for _ in range(12)} == {401}
    assert client.get("/", headers=basic("correct horse battery")).status_code == 200
    codes = [client.get("/", headers=basic(f"guess {i}")).status_code for i in range(7)]  # a guesser
    assert codes[:5] == [401] * 5 and codes[5] == 429
    assert client.get("/", headers=basic("correct horse battery")).status_code == 429  # no answer while waiting
    ok = create_app(root).server.test_client().get("/", headers=LOCAL)
    csp = ok.headers["Content-Security-Policy"]
    assert "script-src 'self' 'sha256-" in csp and "unsafe-inline" not in csp.split("style-src")[0]
    assert "object-src 'none'" in csp and "frame-ancestors 'none'" in csp


def test_run_names_reach_plotly_as_text_and_the_terminal_as_escaped_text(tmp_path):
    from gpulens.dashboard import figures

    fig = figures.grouped_bars_figure(["fwd"], {'A: <a href="javascript:alert(1)">x</a> %{y}': [1.0]}, ["#000"],
                                      "ms", "t")
    name = fig["data"][0]["name"]
    assert "<a" not in name and "&lt;a href" in name and "%{y}" not in fig["data"][0]["hovertemplate"][:40]
    with gpulens.track("evil\x1b]0;pwned\x07\x1b[2J", runs_dir=tmp_path, quiet=True, advise=False) as run:
        run.step()
    out = subprocess.run([GPULENS, "report", str(run.path)], capture_output=True, text=True, timeout=120,
                         env=_env(COLUMNS="120"))
    assert out.returncode == 0
    assert "\x1b]" not in out.stdout and "\x07" not in out.stdout and "\\x1b]0;pwned" in out.stdout


# ----------------------------------------------------------------------------- 7. exit codes
def _trace(tmp_path: Path, name: str, **meta) -> Path:
    doc = {"traceEvents": [{"ph": "X", "name": "aten::mm", "cat": "cpu_op", "ts": 1, "dur": 5, "pid": 1, "tid": 1}],
           **meta}
    path = tmp_path / name
    path.write_text(json.dumps(doc))
    return path


@pytest.mark.parametrize("meta, fragment", [
    ({"deviceProperties": "bad"}, "deviceProperties is not a list"),
    ({"distributedInfo": [1, 2]}, "distributedInfo is not an object"),
    ({"deviceProperties": [{"id": "x"}]}, "not a PyTorch profiler trace gpulens can import"),
])
def test_import_of_bad_metadata_is_one_line_and_writes_nothing(tmp_path, meta, fragment):
    trace = _trace(tmp_path, "t.json", **meta)
    root = tmp_path / "runs"
    proc = subprocess.run([GPULENS, "import", str(trace), "--runs-dir", str(root)], capture_output=True, text=True,
                          timeout=120)
    _one_line_error(proc, fragment)
    assert not root.exists() or not any(root.iterdir())  # no run, and no hidden half-written one


def test_more_bad_input_is_one_line_exit_2(tmp_path):
    trace = SAMPLES / "cpu-cnn-workers" / "traces" / "rank-0.window-0.steps-11-13.pt.trace.json.gz"
    a_file = tmp_path / "file"
    a_file.write_text("x")
    run = lambda *a: subprocess.run([GPULENS, *a], capture_output=True, text=True, timeout=60)  # noqa: E731
    _one_line_error(run("import", str(trace), "--runs-dir", str(a_file)), "not a directory")
    _one_line_error(run("import", str(trace), "--runs-dir", str(a_file / "sub")), "cannot write the run")
    _one_line_error(run("exporter", "--port", "99999"), "not a TCP port")
    _one_line_error(run("exporter", "--addr", "999.1.1.1"), "cannot bind to address")
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        _one_line_error(run("exporter", "--port", str(busy.getsockname()[1])), "already in use")
    _one_line_error(run("report", os.fsdecode(b"/no/such/\xff")), "no such run")


def _steps_trace(path: Path, steps: int, first: int = 0) -> Path:
    """A profiler trace of ``steps`` ProfilerStep spans (100 µs apart), each with one operator inside."""
    events = []
    for i in range(steps):
        ts = 1000 + i * 100
        events.append({"ph": "X", "cat": "user_annotation", "name": f"ProfilerStep#{first + i}", "ts": ts, "dur": 90,
                       "pid": 1, "tid": 1})
        events.append({"ph": "X", "cat": "cpu_op", "name": "aten::mm", "ts": ts + 5, "dur": 50, "pid": 1, "tid": 1})
    path.write_text(json.dumps({"traceEvents": events}))
    return path


def test_an_import_keeps_every_step_of_a_long_trace(tmp_path):
    """The recorder's backlog bound (10,000 steps waiting) protects a training loop; an import has none to
    protect and keeps all 15,000, with nothing counted as lost."""
    trace = _steps_trace(tmp_path / "long.json", 15_000)
    root = tmp_path / "runs"
    proc = subprocess.run([GPULENS, "import", str(trace), "--runs-dir", str(root)], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0 and ".importing-" not in proc.stderr, proc.stderr
    with open_run(Path(proc.stdout.strip())) as run:
        steps = run.steps()
        assert len(steps) == 15_000 and steps.step[0] == 0 and steps.step[-1] == 14_999
        assert not run.meta().get("records_lost")
        assert run.meta()["steps"] == 15_000


def test_hostile_traces_are_one_line_exit_2_and_leave_nothing(tmp_path):
    big = tmp_path / "bigstep.json"
    big.write_text(json.dumps({"traceEvents": [{"ph": "X", "cat": "user_annotation", "ts": 1, "dur": 5, "pid": 1,
                                                "tid": 1, "name": "ProfilerStep#99999999999999999999"}]}))
    far = tmp_path / "far.json"  # a time beyond 2^63 (JSON numbers have no range)
    far.write_text('{"traceEvents":[{"ph":"X","cat":"cpu_op","name":"a","ts":99999999999999999999999,"dur":5,'
                   '"pid":1,"tid":1}]}')
    deep = tmp_path / "deep.json"
    deep.write_text('{"traceEvents":[{"ph":"X","cat":"cpu_op","name":"a","ts":1,"dur":5,"pid":1,"tid":1,"args":'
                    + "[" * 100_000 + "]" * 100_000 + "}]}")
    deep_meta = tmp_path / "deepmeta.json"
    deep_meta.write_text('{"traceEvents":[], "x":' + "[" * 100_000 + "]" * 100_000 + "}")
    root = tmp_path / "runs"
    for trace, fragment in ((big, "step number 99999999999999999999 is out of range"),
                            (far, "timestamps out of range"), (deep, "nested too deeply"),
                            (deep_meta, "nested too deeply")):
        proc = subprocess.run([GPULENS, "import", str(trace), "--runs-dir", str(root)], capture_output=True,
                              text=True, timeout=120)
        _one_line_error(proc, fragment)
        assert not root.exists() or not any(root.iterdir())
    # a process id beyond int64 identifies nothing: the trace still imports
    odd = tmp_path / "oddpid.json"
    odd.write_text('{"traceEvents":[{"ph":"X","cat":"cpu_op","name":"a","ts":1,"dur":5,'
                   '"pid":99999999999999999999999,"tid":1}]}')
    proc = subprocess.run([GPULENS, "import", str(odd), "--runs-dir", str(root)], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize("key, value, fragment", [
    ("gpus", [{"index": "x"}], "gpus is not a list of GPU records"),
    ("records_lost", "lots", "records_lost is 'lots'"),
    ("records_lost", {"steps": "many"}, "records_lost is not a count"),
    ("optimizers", {}, "optimizers is {}"),
    ("optimizers", [1], "optimizers is not a list of optimizer records"),
    ("start", 1e308, "start is 1e+308, not a time"),
])
def test_metadata_of_the_wrong_type_is_a_broken_run_everywhere(tmp_path, key, value, fragment):
    run_dir = tmp_path / "runs" / "odd"
    shutil.copytree(SAMPLES / "cpu-cnn-workers", run_dir)
    conn = sqlite3.connect(run_dir / "rank-0.db")
    conn.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, json.dumps(value)))
    conn.commit()
    conn.close()
    proc = subprocess.run([GPULENS, "report", str(run_dir)], capture_output=True, text=True, timeout=120)
    _one_line_error(proc, fragment)
    client = create_app(tmp_path / "runs").server.test_client()
    page = client.get("/run/odd", headers=LOCAL)
    assert page.status_code == 200  # the page says what is wrong; no 500
    data.reset()
    ls = subprocess.run([GPULENS, "ls", str(tmp_path / "runs"), "--json"], capture_output=True, text=True,
                        timeout=120)
    assert ls.returncode == 0 and json.loads(ls.stdout)[0]["status"] == "broken"


def test_a_gpu_record_written_short_still_reads(tmp_path):
    run_dir = tmp_path / "short"
    shutil.copytree(SAMPLES / "cpu-cnn-workers", run_dir)
    conn = sqlite3.connect(run_dir / "rank-0.db")
    conn.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('gpus', ?)", (json.dumps([{}]),))
    conn.commit()
    conn.close()
    proc = subprocess.run([GPULENS, "report", str(run_dir)], capture_output=True, text=True, timeout=120,
                          env=_env(COLUMNS="120"))
    assert proc.returncode == 0 and "1 × unknown GPU" in proc.stdout, proc.stderr


def test_export_to_an_unwritable_place_or_a_full_disk_is_one_line_and_leaves_no_part_files(tmp_path, tiny_disk):
    run = SAMPLES / "cpu-cnn-workers"
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("x")
    proc = subprocess.run([GPULENS, "export", str(run), "--out", str(not_a_dir / "out")], capture_output=True,
                          text=True, timeout=120)
    _one_line_error(proc, "cannot make the folder")
    (tiny_disk / "filler").write_bytes(b"\0" * (tiny_disk_free(tiny_disk) - 20_000))
    for fmt in ("csv", "parquet"):
        out = tiny_disk / fmt
        proc = subprocess.run([GPULENS, "export", str(run), "--out", str(out), "--format", fmt],
                              capture_output=True, text=True, timeout=120)
        _one_line_error(proc, "No space left on device")
        assert not [p for p in out.iterdir() if p.name.endswith(".tmp")], list(out.iterdir())


def tiny_disk_free(path: Path) -> int:
    return shutil.disk_usage(path).free


@pytest.mark.parametrize("command", [["ls", "ftp://me:secret@files.example/runs"], ["report", "hdfs://nn/runs/x"],
                                     ["publish", str(SAMPLES / "cpu-cnn-workers"), "zip://x"],
                                     ["dashboard", "gopher://x/runs"]])
def test_stores_gpulens_cannot_use_are_refused_in_one_line(command):
    proc = subprocess.run([GPULENS, *command], capture_output=True, text=True, timeout=60)
    _one_line_error(proc, "not a run store (stores are file://, s3://")
    assert "secret" not in proc.stderr


def test_compare_says_when_runs_crashed_and_fail_on_status_fails(tmp_path):
    for name in ("a", "b"):
        shutil.copytree(SAMPLES / "cpu-cnn-workers", tmp_path / name)
    conn = sqlite3.connect(tmp_path / "b" / "rank-0.db")
    conn.execute("UPDATE meta SET value = ? WHERE key = 'status'", (json.dumps("crashed"),))
    conn.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('error', ?)", (json.dumps("RuntimeError: boom"),))
    conn.commit()
    conn.close()
    compare = lambda *rules: subprocess.run(  # noqa: E731
        [GPULENS, "compare", str(tmp_path / "a"), str(tmp_path / "b"), *rules], capture_output=True, text=True,
        timeout=120, env=_env(COLUMNS="200"))
    plain = compare("--fail-on", "step_time>+5%")
    assert plain.returncode == 0 and "warning: candidate crashed (RuntimeError: boom)" in plain.stdout
    gated = compare("--fail-on", "step_time>+5%,status")
    assert gated.returncode == 1 and "FAIL candidate crashed (RuntimeError: boom)" in gated.stdout
    as_json = json.loads(compare("--fail-on", "status", "--json").stdout)
    assert as_json["candidate"]["status"] == "crashed" and as_json["gate"]["passed"] is False
    assert compare("--fail-on", "statu").returncode == 2


def test_gpulens_run_of_a_missing_script_records_nothing(tmp_path):
    root = tmp_path / "runs"
    proc = subprocess.run([GPULENS, "run", "--runs-dir", str(root), "--", PY, str(tmp_path / "missing.py")],
                          capture_output=True, text=True, timeout=60, env=_env())
    _one_line_error(proc, "can't open file")
    assert not root.exists()
    # the same command without the check (python itself says it): still no run left behind
    from gpulens.hooks.run_env import BOOTSTRAP_DIR

    proc = subprocess.run([PY, str(tmp_path / "missing.py")], capture_output=True, text=True, timeout=60,
                          env=_env(GPULENS_AUTORUN=json.dumps({"runs_dir": str(root)}), GPULENS_RUN_ID="m-1",
                                   PYTHONPATH=str(BOOTSTRAP_DIR)))
    assert proc.returncode == 2 and not root.exists()


def test_a_rank_database_linked_from_outside_the_run_is_refused(tmp_path):
    run = tmp_path / "runs" / "linked"
    run.mkdir(parents=True)
    (run / "rank-0.db").symlink_to(SAMPLES / "cpu-cnn-workers" / "rank-0.db")
    with pytest.raises(RunError, match="symbolic link out of its run directory"):
        open_run(run)
    with pytest.raises(GpulensError):
        data.configure(tmp_path / "runs")
        data.reader("linked")
    data.reset()


def test_a_row_the_database_refuses_loses_itself_not_the_final_status(tmp_path):
    from gpulens.profiler.store.writer import RunWriter

    w = RunWriter(tmp_path / "rank-0.db", {"name": "refused", "status": "running"}, flush_interval=60)
    w.step((0, 1e9, 1e9 + 1, 0.0, None, 0.1, 0.1, 0.1, 8, None, 1.0) + (None,) * 9 + (0, None))  # NULL forward
    w.close(status="finished")
    run = open_run(tmp_path)
    assert run.info.status == "finished"
    assert run.meta()["records_lost"] == {"unwritable": 1}
