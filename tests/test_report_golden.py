"""``gpulens report --json`` is the documented interface: on every sample run it stays what
tests/data/report_golden/ holds (recorded before the analysis moved behind RunAnalysis): the same keys in the
same order, the same strings, integers and nulls, the same text around them -- and the same floats up to the
last bits that least-squares fits take from the CPU's BLAS kernels (an AVX-512 machine and an AVX2 one
differ in the 15th digit of the energy by phase).  A deliberate change of the report regenerates them:
``python tests/test_report_golden.py --update``."""
from __future__ import annotations

import contextlib
import gzip
import io
import json
import math
import re
import sys
from pathlib import Path

import pytest

from gpulens.cli import main as cli_main
from gpulens.profiler.analysis import report_cache

REPO = Path(__file__).resolve().parent.parent
GOLDEN = REPO / "tests" / "data" / "report_golden"
RUNS = sorted(p for p in (REPO / "sample_runs").iterdir() if p.is_dir())


def report_json(run: Path, computed: bool = True) -> str:
    """``computed``: the report kept beside the run (report_cache) removed first, so the summary runs."""
    if computed:
        (run / report_cache.FILE).unlink(missing_ok=True)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert cli_main(["report", str(run.resolve()), "--json"]) == 0
    return out.getvalue().replace(str(run.resolve()), "<RUN>")


_FLOAT = re.compile(r"-?\d+\.\d+(?:e[-+]?\d+)?|-?\d+e[-+]?\d+")


def same_report(got: str, expected: str) -> None:
    """Byte for byte, except that each float may differ from the golden one in its last bits (rel. 1e-12)."""
    if got == expected:
        return
    assert _FLOAT.sub("<float>", got) == _FLOAT.sub("<float>", expected), "the report's text changed"
    for a, b in zip(_FLOAT.findall(got), _FLOAT.findall(expected)):
        assert math.isclose(float(a), float(b), rel_tol=1e-12, abs_tol=1e-300), f"{a} != {b}"


@pytest.mark.parametrize("run", RUNS, ids=[p.name for p in RUNS])
def test_report_json_is_unchanged(run):
    expected = gzip.decompress((GOLDEN / f"{run.name}.json.gz").read_bytes()).decode()
    got = report_json(run)
    same_report(got, expected)
    assert report_json(run, computed=False) == got  # a sample run is settled: printed again from what was kept


def test_the_golden_comparison_catches_a_changed_key_a_changed_number_and_a_reordered_key():
    base = json.dumps({"a": 1, "b": 0.1 + 0.2, "c": "x"}, indent=2)
    same_report(base.replace("0.30000000000000004", "0.3000000000000001"), base)  # last bits: the same
    for changed in (base.replace('"c"', '"d"'), base.replace("1,", "2,"), base.replace("0.30000000000000004", "0.31"),
                    json.dumps({"b": 0.1 + 0.2, "a": 1, "c": "x"}, indent=2), base.replace("1,", "1.0,")):
        with pytest.raises(AssertionError):
            same_report(changed, base)


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
    from gpulens.profiler.analysis import window_cache
    from gpulens.profiler.analysis.trace import parse

    run_dir = tmp_path / "run"
    shutil.copytree(REPO / "sample_runs" / "h100-gpt-small-batch", run_dir,
                    ignore=shutil.ignore_patterns("*" + window_cache.SUFFIX))
    traces = sorted((run_dir / "traces").glob("*.pt.trace.json.gz"))
    with open_run(run_dir) as run:
        first = RunAnalysis(run).report().as_dict()
    assert all(window_cache.cache_path(t).is_file() for t in traces)

    def no_parsing(*args, **kwargs):
        raise AssertionError("a trace was parsed again")

    monkeypatch.setattr(parse, "load_trace", no_parsing)
    with open_run(run_dir) as run:
        assert RunAnalysis(run).report().as_dict() == first
    os.utime(traces[0], ns=(0, 0))  # the trace changed: its analysis is stale
    with pytest.raises(AssertionError, match="parsed again"), open_run(run_dir) as run:
        RunAnalysis(run).figures
    monkeypatch.undo()
    with open_run(run_dir) as run:
        assert RunAnalysis(run, persist=False).report().as_dict() == first


def test_a_cached_analysis_of_the_wrong_shape_is_analysed_again_not_read(tmp_path):
    """The cache beside a trace reads back through the analysis' types: a file with the right key but a
    damaged or foreign analysis (a field of the wrong type, a key gpulens never wrote, not JSON at all) is
    no cache -- the trace is parsed again and the report is the one from the trace."""
    import shutil

    import msgspec

    from gpulens.profiler import RunAnalysis, open_run
    from gpulens.profiler.analysis import window_cache

    run_dir = tmp_path / "run"
    shutil.copytree(REPO / "sample_runs" / "cpu-cnn-workers", run_dir,
                    ignore=shutil.ignore_patterns("*" + window_cache.SUFFIX))
    (trace,) = sorted((run_dir / "traces").glob("*.pt.trace.json.gz"))
    with open_run(run_dir) as run:
        first = RunAnalysis(run).report().as_dict()
    good = window_cache.cache_path(trace).read_bytes()
    doc = msgspec.json.decode(good)
    assert window_cache.load(trace, 0) is not None
    wrong_type = {**doc, "analysis": {**doc["analysis"], "kernels": "many"}}
    extra_key = {**doc, "analysis": {**doc["analysis"], "injected": 1}}
    for bad in (msgspec.json.encode(wrong_type), msgspec.json.encode(extra_key), b'{"key": ', b"\x00" * 64):
        window_cache.cache_path(trace).write_bytes(bad)
        assert window_cache.load(trace, 0) is None
        with open_run(run_dir) as run:
            assert RunAnalysis(run).report().as_dict() == first
        assert window_cache.cache_path(trace).read_bytes() == good  # written again, from the trace
