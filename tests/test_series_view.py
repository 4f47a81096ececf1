"""Rollups and series views: what the dashboard reads for long runs."""
from __future__ import annotations

import numpy as np

from gpulens.profiler import open_run
from gpulens.profiler.writer import RunWriter


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
