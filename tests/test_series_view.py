"""Rollups and series views: what the dashboard reads for long runs."""
from __future__ import annotations

import numpy as np

from gpulens.profiler import open_run
from gpulens.profiler.store.writer import RunWriter


def _write(path, chunks):
    w = RunWriter(path / "rank-0.db", {"name": "rollups", "status": "finished", "start": 0.0, "end": 1.0},
                  flush_interval=0.05)
    sid = w.series("gpu.util", 0, "%")
    for t, v in chunks:
        w.points_bulk(sid, t, v)
        w.sync()
    w.close()
    return open_run(path)


def test_rollups_merge_across_chunks_and_match_the_raw_points(tmp_path):
    rng = np.random.default_rng(0)
    t = np.arange(0, 3600, 0.1) + 1.0e9
    v = rng.uniform(0, 100, t.size)
    v[5000] = np.nan  # a gap: never counted into the buckets
    # three chunks whose boundaries fall inside buckets, so buckets must be merged by upsert
    cuts = [0, 12345, 23456, t.size]
    run = _write(tmp_path, [(t[a:b], v[a:b]) for a, b in zip(cuts, cuts[1:])])
    view = run.series_view("gpu.util", 0, max_points=100)
    assert view.kind == "buckets" and view.level == 60  # coarsest with >= 50 buckets: 3,600 s / 60 s
    ok = np.isfinite(v)
    b = np.floor(t[ok] / 60).astype(np.int64)
    uniq, idx = np.unique(b, return_index=True)
    assert np.array_equal(view.t, uniq * 60.0)
    assert np.allclose(view.vmin, np.minimum.reduceat(v[ok], idx))
    assert np.allclose(view.vmax, np.maximum.reduceat(v[ok], idx))
    assert np.allclose(view.v, np.add.reduceat(v[ok], idx) / np.diff(np.r_[idx, ok.sum()]))

    mid = run.series_view("gpu.util", 0, t0=t[0] + 600, t1=t[0] + 1800, max_points=200)
    assert mid.kind == "buckets" and mid.level == 10 and mid.t[0] >= t[0] + 590 and mid.t[-1] <= t[0] + 1800
    # a zoom into one minute is read point by point again
    zoom = run.series_view("gpu.util", 0, t0=t[0] + 600, t1=t[0] + 660, max_points=200)
    assert zoom.kind == "raw" and zoom.t.min() >= t[0] + 600 and zoom.t.max() <= t[0] + 660
    assert 590 <= len(zoom) <= 601
    run.close()


def test_small_series_are_read_raw(tmp_path):
    t = np.linspace(1e9, 1e9 + 10, 101)
    run = _write(tmp_path, [(t, np.arange(101.0))])
    view = run.series_view("gpu.util", 0)
    assert view.kind == "raw" and len(view) == 101 and view.unit == "%"
    assert run.series_view("gpu.power", 0) is None
    run.close()


def test_small_chunks_are_compacted_without_losing_a_point(tmp_path, monkeypatch):
    from gpulens.profiler.store import writer as writer_mod

    monkeypatch.setattr(writer_mod, "COMPACT_EVERY_S", 0.0)  # compact after every flush
    w = RunWriter(tmp_path / "rank-0.db", {"name": "compact"}, flush_interval=0.01)
    sid = w.series("gpu.power", 0, "W")
    t = 1.0e9 + np.arange(600) * 0.1
    for i in range(0, t.size, 3):  # three points per flush, as the live recorder writes them
        for j in range(i, min(i + 3, t.size)):
            w.point(sid, t[j], float(j))
        w.sync()
    w.close()
    run = open_run(tmp_path)
    got = run.series("gpu.power", 0)
    assert np.array_equal(got.t, t) and np.array_equal(got.v, np.arange(600.0))
    chunks = run._db(0).query("SELECT COUNT(*), MIN(n) FROM chunks")[0]
    assert chunks[0] <= 3, chunks  # 200 flushes -> one or two chunks
    assert run.series_stats("gpu.power", 0) == reader_stats(np.arange(600.0))
    run.close()


def reader_stats(v):
    from gpulens.profiler import SeriesStats

    return SeriesStats(int(v.size), float(v.mean()), float(v.min()), float(v.max()))


def test_step_view_buckets_agree_with_the_steps(tmp_path):
    from gpulens.profiler.store import schema

    w = RunWriter(tmp_path / "rank-0.db", {"name": "steps"}, flush_interval=0.05)
    rng = np.random.default_rng(1)
    t = 1.0e9
    rows = []
    for i in range(20000):
        phases = rng.uniform(0.001, 0.02, 5)
        dur = float(phases.sum())
        row = dict.fromkeys(schema.STEP_COLUMNS)
        row.update(step=i, t_start=t, t_end=t + dur, data_wait=phases[0], forward=phases[1], backward=phases[2],
                   optimizer=phases[3], other=phases[4], samples=32, flags=0)
        rows.append(row)
        w.step(tuple(row[c] for c in schema.STEP_COLUMNS))
        t += dur
        if i % 5000 == 4999:
            w.sync()
    w.close()
    run = open_run(tmp_path)
    raw = run.step_view(max_points=100_000)
    assert raw.kind == "raw" and len(raw) == 20000
    view = run.step_view(max_points=200)  # ~1,000 s of steps -> 10 s buckets
    assert view.kind == "buckets" and view.level == 10 and int(view.n.sum()) == 20000
    b = np.floor(raw.t / 10)
    first = b == b[0]
    assert view.n[0] == first.sum()
    assert np.isclose(view.dur[0], raw.dur[first].mean()) and np.isclose(view.dur_max[0], raw.dur[first].max())
    assert np.isclose(view.phases["backward"][0], raw.phases["backward"][first].mean())
    run.close()
