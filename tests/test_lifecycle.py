"""A run closes correctly whatever happens in the training block, and never hurts it."""
from __future__ import annotations

import logging
import signal
import subprocess
import sys
import textwrap
import time

import pytest

import gpulens
from gpulens.profiler import list_runs, open_run


def test_clean_exit_is_finished(runs_dir):
    with gpulens.track("ok", quiet=True) as run:
        run.step()
    info = open_run(run.path).info
    assert info.status == "finished" and info.meta["steps"] == 1
    assert not (run.path / "rank-0.db-wal").exists(), "a finished run is one self-contained file"


def test_exception_inside_block_is_crashed_and_propagates(runs_dir):
    with pytest.raises(ValueError, match="boom"):
        with gpulens.track("boom", quiet=True) as run:
            run.step()
            raise ValueError("boom")
    info = open_run(run.path).info
    assert info.status == "crashed"
    assert info.status_reason == "ValueError: boom"


def test_keyboard_interrupt_is_interrupted(runs_dir):
    with pytest.raises(KeyboardInterrupt):
        with gpulens.track("ctrl-c", quiet=True) as run:
            run.step()
            raise KeyboardInterrupt
    assert open_run(run.path).info.status == "interrupted"


def test_nested_track_shares_the_outer_run(runs_dir):
    with gpulens.track("outer", quiet=True) as outer:
        outer.step()
        with gpulens.track("inner", quiet=True) as inner:
            assert inner is outer
            inner.step()
        outer.step()  # still recording after the inner block closed
    runs = list_runs(runs_dir)
    assert len(runs) == 1
    reader = open_run(runs[0])
    assert reader.info.status == "finished" and len(reader.steps()) == 3


def test_exception_in_nested_block_crashes_the_outer_run_once(runs_dir):
    with pytest.raises(RuntimeError):
        with gpulens.track("outer", quiet=True) as outer:
            with gpulens.track("inner", quiet=True):
                raise RuntimeError("deep")
    assert open_run(outer.path).info.status == "crashed"


def test_repeated_track_makes_separate_runs(runs_dir):
    ids = []
    for i in range(3):
        with gpulens.track("again", quiet=True) as run:
            run.step()
        ids.append(run.id)
    assert len(set(ids)) == 3
    assert len(list_runs(runs_dir)) == 3
    assert all(open_run(p).info.status == "finished" for p in list_runs(runs_dir))


def test_close_without_with_and_twice(runs_dir):
    run = gpulens.track("manual-close", quiet=True)
    run.step()
    run.close()
    run.close()
    run.step()  # after close: a no-op, not an error
    assert open_run(run.path).info.status == "finished"


def test_unwritable_runs_dir_disables_recording_but_not_training(tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger="gpulens")
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the runs root should be")
    with gpulens.track("nowhere", runs_dir=blocker, quiet=True) as run:
        for _ in range(3):
            with run.phase("forward"):
                pass
            run.step()
        assert list(run.loader([1, 2, 3])) == [1, 2, 3]
    assert any("recording disabled" in r.getMessage() for r in caplog.records)


def test_a_failing_hook_never_raises_into_the_loop(runs_dir, caplog, monkeypatch):
    caplog.set_level(logging.WARNING, logger="gpulens")
    with gpulens.track("hook-fails", quiet=True) as run:
        run.step()

        def broken(*a, **k):
            raise OSError("disk on fire")

        monkeypatch.setattr(run._rec, "step", broken)
        for _ in range(5):
            run.step()  # must not raise
        with run.phase("forward"):
            pass
    warnings = [r for r in caplog.records if "step recording failed" in r.getMessage()]
    assert len(warnings) == 1
    assert open_run(run.path).info.status == "finished"


def test_invalid_run_id_is_refused_without_raising(runs_dir, caplog):
    caplog.set_level(logging.WARNING, logger="gpulens")
    with gpulens.track("x", run_id="../escape", quiet=True) as run:
        run.step()
    assert run.path is None
    assert not (runs_dir.parent / "escape").exists()
    assert any("invalid run id" in r.getMessage() for r in caplog.records)


SIGTERM_SCRIPT = textwrap.dedent("""
    import sys, time, gpulens
    with gpulens.track("sigterm", runs_dir=sys.argv[1], quiet=True) as run:
        print(run.path, flush=True)
        while True:
            time.sleep(0.01)
            run.step()
""")


def test_sigterm_leaves_an_interrupted_run_and_still_dies_by_sigterm(tmp_path):
    proc = subprocess.Popen([sys.executable, "-c", SIGTERM_SCRIPT, str(tmp_path)],
                            stdout=subprocess.PIPE, text=True)
    path = proc.stdout.readline().strip()
    time.sleep(1.0)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=20) == -signal.SIGTERM  # the exit status is unchanged for the caller
    info = open_run(path).info
    assert info.status == "interrupted" and info.status_reason == "SIGTERM"
    assert info.meta["steps"] > 20
