"""A settled run's ``report --json`` is kept beside it and printed again without being computed -- byte for
byte what computing it prints -- and any change to the run's files, its place, the analysis' limits or gpulens'
own code makes it computed again.  Running and crashed runs are never kept (their report changes with the
clock); a damaged or foreign kept report is computed again and replaced."""
from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from gpulens.cli import main as cli_main
from gpulens.profiler.analysis import report_cache
from gpulens.profiler.analysis.run_analysis import RunAnalysis

REPO = Path(__file__).resolve().parent.parent
SAMPLE = REPO / "sample_runs" / "cpu-cnn-workers"
TRACE = REPO / "tests" / "data" / "traces" / "hta__trace_diff__control__control.json.gz"


def _report(run: Path) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert cli_main(["report", str(run), "--json"]) == 0
    return out.getvalue()


def _copy(tmp_path: Path, name: str = "cnn-copy-a") -> Path:
    run = tmp_path / name
    shutil.copytree(SAMPLE, run, ignore=shutil.ignore_patterns("*.gpulens-analysis.json", report_cache.FILE))
    return run


def _refuse_computing(m: pytest.MonkeyPatch) -> None:
    """Computing a report fails loudly: what is printed then came from the kept file."""
    def refuse(self, suggestions=True):
        raise AssertionError("the report was computed")

    m.setattr(RunAnalysis, "report", refuse)


def test_a_settled_runs_report_is_kept_and_printed_again_byte_for_byte(tmp_path, monkeypatch):
    run = _copy(tmp_path)
    computed = _report(run)
    assert json.loads(computed)["status"] == "finished"
    assert (run / report_cache.FILE).is_file()
    with monkeypatch.context() as m:
        _refuse_computing(m)
        assert _report(run) == computed  # printed from the kept file, reading the run changed nothing in the key
    (run / report_cache.FILE).unlink()
    assert _report(run) == computed  # and computed again, the same bytes


def test_one_run_named_three_ways_prints_one_report_and_keeps_one(tmp_path, monkeypatch):
    """The report prints the run's absolute path, so its absolute path, a path relative to the working
    directory and its id under a runs root print the same text -- and all three read what the first kept."""
    run = _copy(tmp_path)
    computed = _report(run)
    assert json.loads(computed)["run"]["path"] == str(run)
    monkeypatch.chdir(tmp_path)
    _refuse_computing(monkeypatch)
    assert _report(Path("cnn-copy-a")) == computed
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert cli_main(["report", "cnn-copy-a", "--runs-dir", ".", "--json"]) == 0
    assert out.getvalue() == computed


def test_any_change_to_the_run_its_place_its_limits_or_gpulens_computes_it_again(tmp_path, monkeypatch):
    import gpulens.profiler

    extra_code = tmp_path / "more_gpulens"  # a module of gpulens' own, which the test can edit
    extra_code.mkdir()
    (extra_code / "module.py").write_text("X = 1\n")
    monkeypatch.setattr(gpulens.profiler, "__path__", [*gpulens.profiler.__path__, str(extra_code)])
    run = _copy(tmp_path)
    computed = _report(run)
    trace = next((run / "traces").glob("*.pt.trace.json.gz"))

    def changes():
        yield "the database rewritten", lambda: os.utime(run / "rank-0.db", ns=(0, 0))
        yield "a file added", lambda: (run / "traces" / "notes.txt").write_text("x")
        yield "a file removed", lambda: (run / "traces" / "notes.txt").unlink()
        yield "a trace rewritten", lambda: os.utime(trace, ns=(10**18, 10**18))
        yield "the trace-size limit", lambda: monkeypatch.setenv("GPULENS_MAX_TRACE_BYTES", str(10**12))
        yield "gpulens' code edited", lambda: (extra_code / "module.py").write_text("X = 2\n")

    for what, change in changes():
        assert report_cache.load(run) is not None, what
        change()
        assert report_cache.load(run) is None, f"{what}: still read as the run's report"
        assert _report(run) == computed, what  # computed again (nothing above changes a figure) and kept again
    moved = run.rename(tmp_path / "cnn-copy-b")
    assert report_cache.load(moved) is None  # the report prints the run's path, and its folder's name as its id
    assert _report(moved) == computed.replace("cnn-copy-a", "cnn-copy-b")


def test_a_running_or_crashed_run_is_computed_every_time_then_kept_once_it_finished(tmp_path, monkeypatch):
    from gpulens.profiler.store.writer import RunWriter

    run = tmp_path / "live"
    w = RunWriter(run / "rank-0.db", {"name": "live", "status": "running", "start": time.time() - 5,
                                      "host": socket.gethostname(), "pid": os.getpid(),
                                      "pid_create_time": psutil.Process().create_time()}, flush_interval=0.05)
    sid = w.series("host.cpu", -1, "%")
    for i in range(20):
        w.point(sid, time.time() - 5 + i * 0.1, float(i))
    w.sync()
    assert json.loads(_report(run))["status"] == "running"
    assert not (run / report_cache.FILE).exists()
    w.close(status="finished", end=time.time())
    finished = _report(run)
    assert json.loads(finished)["status"] == "finished" and (run / report_cache.FILE).is_file()
    with monkeypatch.context() as m:
        _refuse_computing(m)
        assert _report(run) == finished  # the writer's WAL folded back at close: reading changes nothing
    for status in ("running", "crashed"):  # their status and its reason are the reader's, from the clock
        (run / report_cache.FILE).unlink(missing_ok=True)
        report_cache.store(run, status, finished, report_cache.key(run))
        assert not (run / report_cache.FILE).exists()


def test_a_run_that_changed_while_its_report_was_computed_keeps_nothing(tmp_path, monkeypatch):
    """A file written during the computation (another process) makes the report the one of files that are
    gone: nothing is kept, and the next report -- of files that stayed -- is."""
    run = _copy(tmp_path)
    real = RunAnalysis.report

    def report_then_a_write(self, suggestions=True):
        done = real(self, suggestions)
        (run / "traces" / "late.txt").write_text("written meanwhile")
        return done

    with monkeypatch.context() as m:
        m.setattr(RunAnalysis, "report", report_then_a_write)
        first = _report(run)
    assert not (run / report_cache.FILE).exists()
    assert _report(run) == first and report_cache.load(run) == first.rstrip("\n")


@pytest.mark.parametrize("kept", [b"", b"\x00" * 64, b'{"key": ', b"[1, 2]", b'{"key": null, "report": "{}"}',
                                  b'{"report": 5}'], ids=["empty", "binary", "truncated", "a list", "another key",
                                                          "not text"])
def test_a_damaged_or_foreign_kept_report_is_computed_again_and_replaced(tmp_path, kept):
    run = _copy(tmp_path)
    computed = _report(run)
    good = (run / report_cache.FILE).read_bytes()
    (run / report_cache.FILE).write_bytes(kept)
    assert report_cache.load(run) is None
    assert _report(run) == computed
    assert (run / report_cache.FILE).read_bytes() == good


def test_a_kept_report_with_terminal_escapes_is_never_printed(tmp_path):
    """The text is printed as it was kept, so it must be text json.dumps wrote: no control character but
    newlines (an escape sequence could retitle or rewrite the user's terminal) -- even under the right key."""
    run = _copy(tmp_path)
    computed = _report(run)
    doc = json.loads((run / report_cache.FILE).read_bytes())
    for hostile in ("\x1b]0;owned\x07" + computed, computed.replace('"finished"', '"\x1b[2Jfinished"'), "\r"):
        (run / report_cache.FILE).write_text(json.dumps({**doc, "report": hostile}))
        assert report_cache.load(run) is None
        assert _report(run) == computed


def test_gpulens_import_keeps_the_report_and_the_next_report_needs_no_numpy(tmp_path):
    """The two commands a user runs: the second prints what the first kept, in a process that never imports
    numpy, the reader or the summary -- and it is what the one-process form prints."""
    env = {**os.environ, "GPULENS_DIR": str(tmp_path / "runs")}
    one = subprocess.run([sys.executable, "-m", "gpulens", "import", str(TRACE), "--report", "--json"],
                         capture_output=True, text=True, env=env, check=True).stdout
    run_dir = subprocess.run([sys.executable, "-m", "gpulens", "import", str(TRACE)], capture_output=True, text=True,
                             env=env, check=True).stdout.strip()
    assert (Path(run_dir) / report_cache.FILE).is_file()
    probe = ("import sys; from gpulens.cli import main; rc = main(['report', sys.argv[1], '--json']); "
             "print([m for m in ('numpy', 'msgspec', 'gpulens.profiler.store.reader', "
             "'gpulens.profiler.analysis.summary') if m in sys.modules], file=sys.stderr); sys.exit(rc)")
    out = subprocess.run([sys.executable, "-c", probe, run_dir], capture_output=True, text=True, env=env, check=True)
    assert out.stderr.strip() == "[]"
    first, second = json.loads(one)["run"]["id"], json.loads(out.stdout)["run"]["id"]
    assert first != second  # two imports of one trace, two runs: the same report but for the run's id
    assert one.replace(first, second) == out.stdout


def test_a_run_that_refuses_the_file_is_reported_every_time(tmp_path):
    """Keeping is best effort: where the file cannot be written (here a folder stands in its place, which
    refuses root as well as anyone -- a read-only run would not) the report is computed and printed all the same."""
    run = _copy(tmp_path)
    (run / report_cache.FILE).mkdir()
    computed = _report(run)
    assert json.loads(computed)["status"] == "finished"
    assert (run / report_cache.FILE).is_dir() and report_cache.load(run) is None
    assert _report(run) == computed
    assert not list(run.glob("*.tmp"))  # nothing half-written left behind
