"""Step rows reach SQLite exactly as recorded, whatever one flush holds.

The writer inserts a flush's rows in statements of power-of-two sizes and binds ``None`` as ``''`` turned back
into NULL inside SQLite (profiler/store/writer.py says why); these tests hold it to the plain meaning: every
row, in order, NULL where the recorder had None, the last row written for a step being the one kept.
"""
from __future__ import annotations

import math
import sqlite3

import pytest

from gpulens.profiler.store.schema import STEP_COLUMNS
from gpulens.profiler.store.writer import ROWS_PER_INSERT, RunWriter


def _row(step: int) -> list:
    """A step row with the value types a real one holds: ints, floats, None, a JSON text, a flag."""
    t = 1.8e9 + step * 0.0123456789
    return [step, t, t + 0.01, 0.001 * (step % 7), 0.002, 0.003, 0.0005, 1e-6, 32 if step % 3 else None,
            None, (step % 11) / 3.0 if step % 5 else None, None, 0.004 if step % 2 else None, None, None, None,
            None, None, 123456789012 if step % 4 == 0 else None, None, step % 3,
            '{"@compile": 0.5}' if step == 1 else None]


def _stored(db) -> list[tuple]:
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as con:
        return con.execute(f"SELECT {', '.join(STEP_COLUMNS)} FROM steps ORDER BY step").fetchall()


@pytest.mark.parametrize("n", [1, 3, ROWS_PER_INSERT - 1, ROWS_PER_INSERT, ROWS_PER_INSERT + 1, 1100])
def test_every_row_lands_as_recorded_whatever_the_flush_holds(tmp_path, n):
    writer = RunWriter(tmp_path / "rank-0.db", {"name": "rows"}, flush_interval=3600)  # one flush, at close
    rows = [_row(i) for i in range(n)]
    for i, row in enumerate(rows):
        writer.step(row if i % 2 else tuple(row))  # the recorder's lists and callers' tuples alike
    writer.close(status="finished")
    stored = _stored(tmp_path / "rank-0.db")
    assert stored == [tuple(r) for r in rows]  # NULL for None, never ''; ints stay ints, floats exact
    with sqlite3.connect(tmp_path / "rank-0.db") as con:
        assert con.execute("SELECT count(*) FROM steps WHERE extra = '' OR loss = '' OR tokens = ''").fetchone() == (0,)


def test_a_later_row_for_a_step_replaces_the_earlier_across_statements(tmp_path):
    writer = RunWriter(tmp_path / "rank-0.db", {"name": "rows"}, flush_interval=3600)
    first = [_row(i) for i in range(ROWS_PER_INSERT + 5)]  # step 3 goes in the first statement ...
    again = _row(3)
    again[STEP_COLUMNS.index("loss")] = 9.5
    for row in [*first, again]:  # ... and again in the last one
        writer.step(row)
    writer.close(status="finished")
    stored = _stored(tmp_path / "rank-0.db")
    assert len(stored) == ROWS_PER_INSERT + 5 and stored[3] == tuple(again)


def test_non_finite_losses_are_kept_as_sqlite_keeps_them(tmp_path):
    """A NaN loss reads back NULL and infinity as infinity, as binding them directly always did."""
    writer = RunWriter(tmp_path / "rank-0.db", {"name": "rows"}, flush_interval=3600)
    loss = STEP_COLUMNS.index("loss")
    for step, value in enumerate([math.nan, math.inf, -math.inf, 0.0]):
        row = _row(step)
        row[loss] = value
        writer.step(row)
    writer.close(status="finished")
    assert [r[loss] for r in _stored(tmp_path / "rank-0.db")] == [None, math.inf, -math.inf, 0.0]


def test_sync_commits_what_came_before_it_without_waiting_out_the_flush_interval(tmp_path):
    """sync() (the notebook view, an import) needs a flush started after the call: the writer must not sleep
    its interval between the flush under way and that one.  With an interval of an hour, a sync that waited it
    would run into its own 30 s timeout (and say so)."""
    writer = RunWriter(tmp_path / "rank-0.db", {"name": "sync"}, flush_interval=3600)
    try:
        for round_ in range(3):
            rows = [_row(round_ * 10 + i) for i in range(10)]
            for row in rows:
                writer.step(row)
            assert writer.sync(timeout=30)
            assert len(_stored(tmp_path / "rank-0.db")) == 10 * (round_ + 1)
    finally:
        writer.close(status="finished")
