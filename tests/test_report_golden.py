"""``gpulens report --json`` is the documented interface: on every sample run it stays byte-for-byte what
tests/data/report_golden/ holds (recorded before the analysis moved behind RunAnalysis).  A deliberate change
of the report regenerates them: ``python tests/test_report_golden.py --update``."""
from __future__ import annotations

import contextlib
import gzip
import io
import sys
from pathlib import Path

import pytest

from gpulens.cli import main as cli_main

REPO = Path(__file__).resolve().parent.parent
GOLDEN = REPO / "tests" / "data" / "report_golden"
RUNS = sorted(p for p in (REPO / "sample_runs").iterdir() if p.is_dir())


def report_json(run: Path) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert cli_main(["report", str(run.resolve()), "--json"]) == 0
    return out.getvalue().replace(str(run.resolve()), "<RUN>")


@pytest.mark.parametrize("run", RUNS, ids=[p.name for p in RUNS])
def test_report_json_is_unchanged(run):
    expected = gzip.decompress((GOLDEN / f"{run.name}.json.gz").read_bytes()).decode()
    assert report_json(run) == expected


if __name__ == "__main__" and sys.argv[1:] == ["--update"]:
    for run in RUNS:
        (GOLDEN / f"{run.name}.json.gz").write_bytes(gzip.compress(report_json(run).encode(), mtime=0))
        print("wrote", run.name)


def test_window_analyses_are_kept_beside_their_traces_and_reused(tmp_path, monkeypatch):
    """A trace is parsed once: later reports read its analysis back (and the report is the same);
    a trace that changes is analysed again."""
    import os
    import shutil

    from gpulens.profiler import RunAnalysis, open_run
    from gpulens.profiler.analysis import run_analysis, window_cache

    run_dir = tmp_path / "run"
    shutil.copytree(REPO / "sample_runs" / "h100-gpt-small-batch", run_dir,
                    ignore=shutil.ignore_patterns("*" + window_cache.SUFFIX))
    traces = sorted((run_dir / "traces").glob("*.pt.trace.json.gz"))
    with open_run(run_dir) as run:
        first = RunAnalysis(run).report().as_dict()
    assert all(window_cache.cache_path(t).is_file() for t in traces)

    def no_parsing(*args, **kwargs):
        raise AssertionError("a trace was parsed again")

    monkeypatch.setattr(run_analysis, "load_trace", no_parsing)
    with open_run(run_dir) as run:
        assert RunAnalysis(run).report().as_dict() == first
    os.utime(traces[0], ns=(0, 0))  # the trace changed: its analysis is stale
    with pytest.raises(AssertionError, match="parsed again"), open_run(run_dir) as run:
        RunAnalysis(run).summary
    monkeypatch.undo()
    with open_run(run_dir) as run:
        assert RunAnalysis(run, persist=False).report().as_dict() == first
