"""Nothing lost, nothing damaged: SIGKILLed runs open, bad files give one-line errors."""
from __future__ import annotations

import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

import gpulens
from gpulens.cli import main as cli_main
from gpulens.profiler import RunError, open_run

TRAIN = textwrap.dedent("""
    import sys, time, torch, torch.nn as nn, gpulens
    model = nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 10))
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    x, y = torch.randn(32, 64), torch.randint(0, 10, (32,))
    done = open(sys.argv[2], "a", buffering=1)  # each finished step and when, as the loop saw it
    with gpulens.track("doomed", runs_dir=sys.argv[1], quiet=True, batch_size=32) as run:
        print(run.path, flush=True)
        step = 0
        while True:
            with run.phase("forward"):
                loss = nn.functional.cross_entropy(model(x), y)
            with run.phase("backward"):
                loss.backward()
            with run.phase("optimizer"):
                opt.step(); opt.zero_grad()
            run.step(loss=loss)
            done.write(f"{step} {time.time()}\\n")
            step += 1
""")


def _lines(path) -> int:
    return path.read_text().count("\n") if path.exists() else 0


def test_sigkill_keeps_everything_up_to_the_last_second(tmp_path):
    """Everything the loop had finished a second before the kill is in the run, however slowly a busy host ran it."""
    done = tmp_path / "done.txt"
    proc = subprocess.Popen([sys.executable, "-c", TRAIN, str(tmp_path), str(done)], stdout=subprocess.PIPE,
                            text=True)
    path = proc.stdout.readline().strip()
    started, deadline = time.monotonic(), time.monotonic() + 120
    while time.monotonic() - started < 3.0 or _lines(done) < 20:  # 3 s of samples (2 Hz) and 20 steps at least
        assert proc.poll() is None and time.monotonic() < deadline, "the loop never finished 20 steps"
        time.sleep(0.1)
    time.sleep(1.5)  # the first 20 steps are now more than a second old
    t_kill = time.time()
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)

    reader = open_run(path)
    info = reader.info
    assert info.status == "crashed"
    assert "ended without closing" in info.status_reason
    host = reader.series("host.cpu")
    assert host.t.size >= 5  # 2 Hz for 3 s
    assert t_kill - host.t[-1] <= 1.0, f"last sample {t_kill - host.t[-1]:.2f} s before the kill"
    steps = reader.steps()
    finished = [line.split() for line in done.read_text().split("\n")[:-1]]  # whole lines (the kill may cut one)
    due = [int(step) for step, t in finished if float(t) <= t_kill - 1.0]  # finished a second before the kill
    assert len(due) >= 20 and set(due) <= set(steps.step.tolist()), (len(due), len(steps))
    assert np.isfinite(steps.loss).all()
    # a crashed run still reports, through the CLI too
    assert cli_main(["report", path, "--json"]) == 0


def _finished_run(root):
    with gpulens.track("good", runs_dir=root, quiet=True) as run:
        for _ in range(5):
            run.step()
    return run.path


def _cli_error(capsys, path):
    code = cli_main(["report", str(path)])
    err = capsys.readouterr().err
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


def test_corrupt_database_gives_one_line_naming_the_file(tmp_path, capsys):
    path = _finished_run(tmp_path)
    db = path / "rank-0.db"
    data = bytearray(db.read_bytes())
    data[100:4096] = os.urandom(3996)  # trash the first page's b-tree
    db.write_bytes(bytes(data))
    with pytest.raises(RunError) as err:
        open_run(path).steps()
    assert "rank-0.db" in str(err.value)
    line = _cli_error(capsys, path)
    assert "rank-0.db" in line and "corrupt" in line


def test_truncated_database(tmp_path, capsys):
    path = _finished_run(tmp_path)
    db = path / "rank-0.db"
    data = db.read_bytes()
    db.write_bytes(data[: len(data) // 2])
    line = _cli_error(capsys, path)
    assert "rank-0.db" in line and "truncated" in line


def test_foreign_sqlite_file(tmp_path, capsys):
    run = tmp_path / "not-ours"
    run.mkdir()
    conn = sqlite3.connect(run / "rank-0.db")
    conn.execute("CREATE TABLE photos (id INTEGER, path TEXT)")
    conn.commit()
    conn.close()
    line = _cli_error(capsys, run)
    assert "rank-0.db" in line and "foreign SQLite file" in line


def test_not_sqlite_at_all(tmp_path, capsys):
    run = tmp_path / "junk"
    run.mkdir()
    (run / "rank-0.db").write_text("hello, I am a text file pretending to be a run\n" * 10)
    line = _cli_error(capsys, run)
    assert "not an SQLite file" in line


def test_newer_schema_is_refused_with_advice(tmp_path, capsys):
    path = _finished_run(tmp_path)
    conn = sqlite3.connect(path / "rank-0.db")
    conn.execute("PRAGMA user_version = 99")
    conn.commit()
    conn.close()
    line = _cli_error(capsys, path)
    assert "newer gpulens (schema 99" in line and "upgrade" in line


def test_a_broken_run_never_breaks_the_others(tmp_path, capsys):
    good = _finished_run(tmp_path)
    bad = tmp_path / "broken-run"
    bad.mkdir()
    (bad / "rank-0.db").write_bytes(b"\x00" * 50)
    before = (good / "rank-0.db").read_bytes()
    assert cli_main(["ls", str(tmp_path), "--json"]) == 0
    import json

    rows = {r["id"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows[good.name]["status"] == "finished"
    assert rows["broken-run"]["status"] == "broken" and "rank-0.db" in rows["broken-run"]["error"]
    assert (good / "rank-0.db").read_bytes() == before, "reading must never modify a run"


def test_reading_a_read_only_copy(tmp_path):
    path = _finished_run(tmp_path / "a")
    copy = tmp_path / "ro" / path.name
    shutil.copytree(path, copy)
    for f in copy.iterdir():
        f.chmod(0o444)
    copy.chmod(0o555)
    try:
        assert len(open_run(copy).steps()) == 5
    finally:
        copy.chmod(0o755)
