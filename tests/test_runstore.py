"""Run ids, the runs root, and paths that must stay inside it."""
from __future__ import annotations

from pathlib import Path

import pytest

import gpulens
from gpulens.profiler import RunError, resolve_run, runs_root
from gpulens.profiler.errors import GpulensError
from gpulens.profiler.store.runstore import list_runs, new_run_id, run_dir_in, slug, validate_run_id


def test_runs_root_precedence(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("GPULENS_DIR", raising=False)
    assert runs_root() == tmp_path / "gpulens-runs"
    monkeypatch.setenv("GPULENS_DIR", str(tmp_path / "env"))
    assert runs_root() == tmp_path / "env"
    assert runs_root(tmp_path / "arg") == tmp_path / "arg"


@pytest.mark.parametrize("bad", ["../x", "a/b", "/etc", "..", ".hidden", "a\\b", "x" * 200, "", "a..b"])
def test_bad_run_ids_are_refused(bad, tmp_path):
    with pytest.raises(GpulensError):
        validate_run_id(bad)
    with pytest.raises(GpulensError):
        run_dir_in(tmp_path, bad)


def test_symlink_out_of_the_root_is_refused(tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    (tmp_path / "outside").mkdir()
    (root / "sneaky").symlink_to(tmp_path / "outside")
    with pytest.raises(GpulensError, match="escapes"):
        run_dir_in(root, "sneaky")


def test_new_run_ids_are_valid_and_distinct():
    ids = {new_run_id("my model / v2!") for _ in range(50)}
    assert len(ids) == 50
    for run_id in ids:
        assert validate_run_id(run_id) and run_id.startswith("my-model-v2-")
    assert slug("///") == "run"


def test_resolve_run_accepts_dir_db_file_and_id(tmp_path):
    with gpulens.track("resolve", runs_dir=tmp_path, quiet=True) as run:
        run.step()
    assert resolve_run(str(run.path)) == run.path
    assert resolve_run(str(run.path / "rank-0.db")) == run.path
    assert resolve_run(run.id, tmp_path) == tmp_path / run.id
    with pytest.raises(RunError, match="no such run"):
        resolve_run("nope", tmp_path)
    with pytest.raises(RunError, match="no such run"):
        resolve_run("../../no-such-dir-anywhere", tmp_path)
    with pytest.raises(RunError, match="not a gpulens run"):
        resolve_run(str(tmp_path))
    assert list_runs(tmp_path) == [run.path]


def test_track_writes_under_gpulens_dir(runs_dir):
    with gpulens.track("env-root", quiet=True) as run:
        run.step()
    assert run.path.parent == runs_dir.resolve()
    assert Path(run.path / "rank-0.db").is_file()


def test_a_rank_database_appears_whole_to_a_reader_listing_the_folder(tmp_path):
    """A reader that lists a run folder in the instant a rank starts (gpulens profile aligning ranks, the
    dashboard, another rank's publisher) finds no database or a complete one: it is made under a hidden name
    and linked into place.  Made as an empty file that was then filled, readers caught it empty or unstamped
    and called it foreign (a CI failure of the two-rank profile test)."""
    import sqlite3
    import threading

    from gpulens.profiler.store import schema
    from gpulens.profiler.store.runstore import rank_dbs
    from gpulens.profiler.store.writer import RunWriter

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    stop = threading.Event()
    seen: set[str] = set()
    errors: list[str] = []

    def read() -> None:
        while not stop.is_set():
            for path in rank_dbs(run_dir).values():
                try:
                    schema.check_header(path)
                    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as conn:
                        schema.check_version(conn, path)
                    seen.add(path.name)
                except RunError as exc:
                    errors.append(str(exc))

    reader = threading.Thread(target=read)
    reader.start()
    writers = []
    try:
        for rank in range(60):
            writers.append(RunWriter(run_dir / f"rank-{rank}.db", {"name": "race", "status": "running"}))
    finally:
        stop.set()
        reader.join()
        for w in writers:
            w.close(status="finished")
    assert not errors, errors[:3]
    assert seen and not [p for p in run_dir.iterdir() if p.name.startswith(".rank-")]  # nothing hidden left
    with pytest.raises(FileExistsError, match="already exists"):  # the name is still the claim
        RunWriter(run_dir / "rank-0.db", {"name": "again"})
