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
