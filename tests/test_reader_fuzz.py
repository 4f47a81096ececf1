"""The reader against damaged runs: random corruption of a real run's database and trace.

Every outcome is a one-line RunError or a valid read -- never another
exception escaping, never a hang, never another run of the same root
affected.  Seeds are fixed: a failure names the seed that reproduces it.
"""
from __future__ import annotations

import json
import random
import shutil
import sqlite3
from pathlib import Path

import pytest

from gpulens.cli import main as cli_main
from gpulens.profiler import RunError, open_run
from gpulens.profiler.analysis.run_analysis import summarize

SAMPLE = Path(__file__).resolve().parent.parent / "sample_runs" / "cpu-cnn-workers"


def _read_everything(path: Path) -> None:
    """Every reader entry point, as the report and the dashboard call them."""
    with open_run(path) as run:
        run.refresh()
        for info in run.series_list():
            run.series(info.metric, info.gpu, info.rank)
            run.series_view(info.metric, info.gpu, max_points=500, rank=info.rank)
            run.series_stats(info.metric, info.gpu, info.rank)
        run.steps()
        run.step_view(max_points=200)
        run.events()
        run.windows()
        run.flops()
        summarize(run)


def _corrupt_bytes(db: Path, rng: random.Random) -> str:
    data = bytearray(db.read_bytes())
    how = rng.choice(["flip", "zero-page", "truncate", "garbage-tail"])
    if how == "flip":
        for _ in range(rng.randint(1, 40)):
            i = rng.randrange(len(data))
            data[i] ^= 1 << rng.randrange(8)
    elif how == "zero-page":
        page = rng.randrange(max(1, len(data) // 4096))
        data[page * 4096:(page + 1) * 4096] = bytes(min(4096, len(data) - page * 4096))
    elif how == "truncate":
        del data[rng.randrange(100, len(data)):]
    else:
        data += bytes(rng.randrange(256) for _ in range(rng.randint(1, 9000)))
    db.write_bytes(bytes(data))
    return how


def _corrupt_values(db: Path, rng: random.Random) -> str:
    """Valid SQLite, wrong contents: what a foreign writer or a bad copy leaves."""
    conn = sqlite3.connect(db)
    keys = [k for (k,) in conn.execute("SELECT key FROM meta")]
    how = rng.choice(["meta-json", "meta-type", "extra", "chunk-blob", "step-null", "series-unit", "window-path"])
    if how == "meta-json":
        conn.execute("UPDATE meta SET value = ? WHERE key = ?", ("{broken", rng.choice(keys)))
    elif how == "meta-type":
        conn.execute("UPDATE meta SET value = ? WHERE key = ?",
                     (json.dumps(rng.choice(["x", [1, 2], {"a": 1}, None, 3.5, True])), rng.choice(keys)))
    elif how == "extra":
        conn.execute("UPDATE steps SET extra = ? WHERE step = (SELECT min(step) + 3 FROM steps)",
                     (rng.choice(["{not json", "[1,2]", "42", "\"s\""]),))
    elif how == "chunk-blob":
        conn.execute("UPDATE chunks SET v = ? WHERE rowid = (SELECT min(rowid) FROM chunks)",
                     (bytes(rng.randrange(256) for _ in range(rng.randint(0, 13))),))
    elif how == "step-null":
        conn.execute("UPDATE steps SET samples = ?, loss = ? WHERE step = 5", ("lots", "x"))
    elif how == "series-unit":
        conn.execute("UPDATE series SET unit = ?, gpu = ? WHERE id = 1", (42, "zero"))
    else:
        conn.execute("UPDATE windows SET path = ?", (rng.choice(["../../../etc/passwd", "/etc/passwd", None, 7]),))
    conn.commit()
    conn.close()
    return how


def _corrupt_trace(run: Path, rng: random.Random) -> str:
    trace = next((run / "traces").glob("*.gz"))
    data = bytearray(trace.read_bytes())
    for _ in range(rng.randint(1, 20)):
        i = rng.randrange(len(data))
        data[i] = rng.randrange(256)
    if rng.random() < 0.3:
        del data[rng.randrange(10, len(data)):]
    trace.write_bytes(bytes(data))
    return "trace"


@pytest.mark.parametrize("seed", range(240))
def test_damaged_run_reads_or_says_why_and_never_touches_another(tmp_path, seed, capsys):
    rng = random.Random(seed)
    good = tmp_path / "good"
    victim = tmp_path / "victim"
    shutil.copytree(SAMPLE, good)
    shutil.copytree(SAMPLE, victim)
    kind = rng.choice([_corrupt_bytes, _corrupt_values, _corrupt_trace])
    how = kind(victim, rng) if kind is _corrupt_trace else kind(victim / "rank-0.db", rng)
    before = (good / "rank-0.db").read_bytes()
    try:
        _read_everything(victim)
    except RunError as exc:
        text = str(exc)
        assert "\n" not in text and len(text) < 600, (seed, how, text)
    assert cli_main(["ls", str(tmp_path), "--json"]) == 0, (seed, how)
    rows = {r["id"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows["good"]["status"] == "finished" and rows["good"]["steps"] == 114, (seed, how)
    _read_everything(good)
    assert (good / "rank-0.db").read_bytes() == before
