"""The dashboard's data path and callbacks, called as plain functions on real recorded runs."""
from __future__ import annotations

import base64
import json
import re
import threading
import time
from pathlib import Path

import numpy as np
import msgspec
import pytest
from dash_support import BROKEN_ID, HOSTILE, HOSTILE_ID, SAMPLES, SLOW_ID, make_root

from gpulens.dashboard import comparison, data, downsample, figures, overview, panels
from gpulens.dashboard.app import create_app
from gpulens.profiler import GpulensError, open_run


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return make_root(tmp_path_factory.mktemp("dash") / "runs")


@pytest.fixture(scope="module")
def app(root):
    return create_app(root)


@pytest.fixture(autouse=True)
def _configured(root):
    data.configure(root)
    yield


def decode(arr):
    if isinstance(arr, dict):
        return np.frombuffer(base64.b64decode(arr["bdata"]), dtype=np.float32)
    return np.asarray([np.nan if v is None else v for v in arr], dtype=np.float64)


# ---------------------------------------------------------------------- downsampling
def test_minmax_lttb_keeps_every_spike_and_the_size():
    t = np.arange(1_000_000, dtype=np.float64) * 0.1
    v = np.sin(t / 50.0)
    v[123_457] = 9.0
    v[765_433] = -7.0
    x, y = downsample.minmax_lttb(t, v, 1000)
    assert len(x) == 1000 and np.all(np.diff(x) > 0)
    assert y.max() == 9.0 and y.min() == -7.0


def test_gaps_become_nan_and_output_is_float32_relative_to_origin():
    t = np.r_[np.arange(0, 100, 0.1), np.arange(300, 400, 0.1)] + 1e9
    x, y = downsample.for_plot(t, np.ones_like(t), 400, origin=1e9)
    assert x.dtype == np.float32 and y.dtype == np.float32
    nan = np.flatnonzero(np.isnan(y))
    assert nan.size == 1 and 100 <= x[nan[0]] <= 300  # one break, inside the hole
    assert x[0] == pytest.approx(0.0, abs=1e-3)


def test_steps_break_only_where_no_step_ran_and_a_lone_step_stays_visible():
    # 8 ms steps, 52 of 290 ms, then an eval pause of 30 s and one last step alone
    d = np.r_[np.full(200, 0.008), np.full(52, 0.290), np.full(200, 0.008), [0.5]]
    start = np.cumsum(np.r_[0.0, d[:-1]])
    start[-1] += 30.0
    x, y = downsample.steps_for_plot(start + d, d, 2000)
    nan = np.flatnonzero(np.isnan(y))
    assert nan.size == 1  # the eval pause only: the slow stretch is not cut into lone points
    slow = y[:nan[0]] > 0.2
    assert slow.sum() == 52
    tail_x, tail_y = x[nan[0] + 1:], y[nan[0] + 1:]
    assert tail_y.tolist() == [0.5, 0.5] and tail_x[1] - tail_x[0] == pytest.approx(0.5, rel=1e-3)


def test_bucket_envelope_keeps_extremes():
    t = np.arange(0, 86400, 60.0)
    vmin = np.zeros_like(t)
    vmax = np.full_like(t, 50.0)
    vmax[700] = 100.0
    x, y = downsample.for_plot(t, (vmin + vmax) / 2, 500, vmin=vmin, vmax=vmax, bucket=60.0)
    assert len(x) <= 500 and np.nanmax(y) == 100.0 and np.nanmin(y) == 0.0


# ---------------------------------------------------------------------- panels and figures
def test_timeseries_of_a_gpu_run_has_every_panel_with_units_and_one_colour_per_gpu():
    run = open_run(SAMPLES / "h100-cnn-input-bound")
    ts = panels.timeseries(run, width=800)
    keys = [p.spec.key for p in ts.panels]
    assert keys == ["util", "tensor", "dram", "memory", "power", "clock", "temp", "pcie", "host_cpu", "proc_cpu",
                    "disk", "step", "loss"]
    gpu_colours = {t.color_index for p in ts.panels for t in p.traces if t.group == "GPU 0"}
    assert gpu_colours == {0}
    util = ts.panels[0].traces[0]
    raw = run.series("gpu.util", 0)
    assert np.nanmax(util.y) == pytest.approx(raw.v.max()) and len(util.x) <= 800
    fig = figures.timeseries_figure(ts, "dark", duration_s=run.info.duration_s)
    lay = fig["layout"]
    assert lay["hoversubplots"] == "axis" and lay["hovermode"] == "x unified"
    assert {tr["xaxis"] for tr in fig["data"] if len(tr["x"])} == {"x"}  # every line on the one time axis
    tops = [k for k in fig["layout"] if re.fullmatch(r"xaxis\d+", k)]  # GPU, host, training-loop groups
    assert len(tops) == 3 and all(fig["layout"][k]["matches"] == "x" for k in tops)
    assert all(tr["type"] == "scatter" for tr in fig["data"])  # SVG: no WebGL contexts
    titles = [v["title"]["text"] for k, v in lay.items() if k.startswith("yaxis")]
    assert all(re.search(r"\(.+\)$", t) for t in titles), titles  # a unit on every axis
    # ticks end at 100 %; the room above them holds the panel's line key, which no line crosses
    assert lay["yaxis"]["tickvals"][-1] == 100 and lay["yaxis"]["range"][1] == pytest.approx(100 / (1 - 0.22))
    assert lay["yaxis"]["title"]["text"] == "Utilization (%)"
    assert fig["data"][0]["x"]["dtype"] == "f4"
    run.close()


def test_a_cpu_run_shows_host_panels_and_says_why_there_is_no_gpu():
    run = open_run(SAMPLES / "cpu-cnn-workers")
    ts = panels.timeseries(run)
    assert [p.spec.key for p in ts.panels] == ["host_cpu", "proc_cpu", "disk", "step", "loss"]
    workers = [t for p in ts.panels for t in p.traces if t.metric == "workers.cpu"]
    assert workers and np.nanmax(workers[0].y) > 0.5  # the DataLoader workers did the work
    run.close()


def test_unsupported_metrics_are_listed_with_their_reason(tmp_path):
    from gpulens.profiler.store.writer import RunWriter

    w = RunWriter(tmp_path / "rank-0.db", {"name": "x", "start": 1e9})
    w.mark_series("gpm.tensor_active", 0, "unsupported", "GPM needs Hopper or newer (compute capability 8.0)")
    sid = w.series("gpu.util", 0, "%")
    w.point(sid, 1e9 + 1, 50.0)
    w.close()
    run = open_run(tmp_path)
    ts = panels.timeseries(run)
    assert [p.spec.key for p in ts.panels] == ["util"]
    assert ts.unavailable == ["Tensor activity (GPM): not available on this GPU "
                              "(GPM needs Hopper or newer (compute capability 8.0))"]
    run.close()


def test_zoomed_view_reads_full_resolution_inside_the_range():
    run = open_run(SAMPLES / "h100-cnn-input-bound")
    ts = panels.timeseries(run, 5.0, 7.0, width=2000)
    for p in ts.panels:
        for tr in p.traces:
            x = tr.x[np.isfinite(tr.x)]
            assert x.size and x.min() >= 5.0 - 1e-3 and x.max() <= 7.0 + 1e-3
    power = next(t for p in ts.panels for t in p.traces if t.metric == "gpu.power")
    raw = run.series("gpu.power", 0, t0=run.info.start + 5, t1=run.info.start + 7)
    assert len(power.x) == len(raw)  # 10 Hz for 2 s: every point, nothing dropped
    run.close()


# ---------------------------------------------------------------------- run page
def _polled(callback, *args, timeout: float = 120.0):
    """What a page shows once its analysis is there: the callback is asked again, as the page's poll does,
    until it stops its poll (its last output, the poll's ``max_intervals``: 0).  Each call answers at once,
    analysed or not, and while analysing arms exactly one more tick."""
    from gpulens.dashboard.components import POLL_DONE

    deadline = time.monotonic() + timeout
    n = 0
    while True:
        t0 = time.monotonic()
        *out, poll = callback(*args, n)
        assert time.monotonic() - t0 < 30  # never waits for the analysis (a generous bound for a busy host)
        assert poll in (POLL_DONE, n + 1), poll
        n += 1
        if poll == POLL_DONE:
            return out[0] if len(out) == 1 else tuple(out)
        assert time.monotonic() < deadline, "the analysis never arrived"
        time.sleep(0.1)


def test_pages_answer_at_once_while_a_run_is_analysed_and_fill_in_by_polling(app):
    from gpulens.dashboard.pages import compare as cpage
    from gpulens.dashboard.pages import kernels as kpage
    from gpulens.dashboard.pages import run as run_page

    data.reset()
    release = threading.Event()
    started = threading.Event()
    real = data.analyse

    def held(path):  # an analysis that takes as long as the test says (in a thread: the test holds it)
        started.set()
        release.wait(60)
        return real(path)

    data.analyse = held
    threaded, data._analyses = data._analyses, data._Analyses(processes=False)
    try:
        with app.server.app_context():
            # analysing: each answers at once and arms one more tick of its poll (max_intervals = n + 1)
            cards, suggestions, targets, events, poll = run_page.run_overview("h100-cnn-input-bound", 3)
            assert started.wait(30)
            assert poll == 4 and "analysing" in json.dumps(cards.to_plotly_json())
            assert kpage.kernels_view("h100-cnn-input-bound", "all", None, None, "light", 0)[-1] == 1
            assert kpage.trace_analysis_view("h100-cnn-input-bound", "all", "light", 0)[-1] == 1
            body, poll = cpage.compare("h100-cnn-input-bound", "h100-gpt-small-batch", "light", 7)
            assert poll == 8
            release.set()
            cards = _polled(run_page.run_overview, "h100-cnn-input-bound")[0]
            assert [c.id for c in cards][0] == "card-gpu_busy"
    finally:
        data.analyse = real
        release.set()
        data._analyses = threaded
        data.reset()


def test_run_overview_cards_and_suggestions_with_zoomable_evidence(app):
    from gpulens.dashboard.pages import run as run_page

    with app.server.app_context():
        cards, suggestions, targets, events = _polled(run_page.run_overview, "h100-cnn-input-bound")
    ids = [c.id for c in cards]
    assert ids == ["card-gpu_busy", "card-sm_active", "card-tensor_active", "card-dram_bw", "card-mfu",
                   "card-throughput", "card-step_time", "card-energy", "card-memory"]
    text = json.dumps(cards[0].to_plotly_json(), default=lambda o: o.to_plotly_json())
    assert "15.2%" in text  # the mean of NVML utilization.gpu, as `gpulens report` says
    assert suggestions[0].id == "suggestion-dataloader_bound"
    assert "kernels run 10.9% of the profiled steps" in text  # the advisor's other busy figure, same words
    page = json.dumps([s.to_plotly_json() for s in suggestions], default=lambda o: o.to_plotly_json())
    assert "combined-gain" in page and "Together: up to" in page
    assert "Overlaps with" in page  # launch_bound and low_gpu_busy reclaim the same idle time
    zooms = [t for t in targets if t["t0"] is not None]
    assert zooms, targets  # the profiled window's time range
    run = open_run(SAMPLES / "h100-cnn-input-bound")
    w = run.windows()[0]
    assert zooms[0]["t0"] < w.t_start - run.info.start < w.t_end - run.info.start < zooms[0]["t1"]
    run.close()


def test_a_cpu_run_gets_one_no_gpu_card_and_host_and_data_wait_cards():
    run = open_run(SAMPLES / "cpu-cnn-workers")
    a = data.analyse(run.path)
    cards = {c.key: c for c in overview.headline(a.report)}
    assert [k for k, c in cards.items() if not c.available] == ["gpu_busy"]  # one card says why, not six
    assert cards["gpu_busy"].value == "none" and "no NVIDIA driver" in cards["gpu_busy"].sub
    assert cards["host_cpu"].value.endswith("%") and "2 cores" in cards["host_cpu"].sub
    assert cards["proc_cpu"].value.endswith("cores")
    share = a.report.step_time.phases["data_wait"].share
    assert cards["data_wait"].value == f"{100 * share:.1f}%"
    assert cards["throughput"].available and cards["memory"].sub == "process RSS (CPU run)"
    run.close()


def test_headline_says_why_gpm_figures_are_missing():
    run = open_run(SAMPLES / "h100-cnn-healthy")
    a = data.analyse(run.path)
    report = msgspec.structs.replace(a.report, gpus=[
        msgspec.structs.replace(g, metrics={k: v for k, v in g.metrics.items() if not k.startswith("gpm.")},
                                not_available={"gpm.sm_active": "unsupported: not a Hopper GPU"})
        for g in a.report.gpus])
    cards = {c.key: c for c in overview.headline(report)}
    assert cards["sm_active"].value == "n/a" and "not a Hopper GPU" in cards["sm_active"].sub
    run.close()


def test_relayout_parsing():
    from gpulens.dashboard.pages.run import parse_relayout

    assert parse_relayout({"xaxis.range[0]": 1.5, "xaxis.range[1]": 2.0}, 60.0) == ("zoom", 90.0, 120.0)
    assert parse_relayout({"xaxis.autorange": True}, 1.0)[0] == "reset"
    assert parse_relayout({"yaxis3.range[0]": 1, "yaxis3.range[1]": 2}, 1.0)[0] == "none"
    assert parse_relayout({"xaxis.range": [3, 4]}, 1.0) == ("zoom", 3.0, 4.0)
    assert parse_relayout(None, 1.0)[0] == "none"


def test_ts_and_steps_callbacks_follow_the_range(app):
    from gpulens.dashboard.pages import run as run_page

    with app.server.app_context():
        fig, level, missing, anchors = run_page.ts_figure("h100-cnn-input-bound", {"t0": 4.0, "t1": 6.0, "n": 0},
                                                          "light", {"width": 900})
        steps = run_page.steps_figure("h100-cnn-input-bound", {"t0": 4.0, "t1": 6.0, "n": 0}, "light", [],
                                      {"width": 900})
    assert fig["layout"]["xaxis"]["range"] == [4.0, 6.0]
    x = decode(fig["data"][0]["x"])
    assert np.nanmin(x) >= 4.0 - 1e-3 and np.nanmax(x) <= 6.0 + 1e-3
    assert "raw samples" in level
    assert {a.id for a in anchors} >= {"panel-util", "panel-memory", "panel-step"}
    names = [t["name"] for t in steps["data"]]
    assert names[0].startswith("data wait") and len(steps["data"]) == 5
    sx = decode(steps["data"][0]["x"])
    assert sx.min() >= 4.0 - 0.2 and sx.max() <= 6.0 + 0.2


# ---------------------------------------------------------------------- runs list
def test_runs_list_shows_broken_runs_with_their_error_and_the_rest_complete(app, root):
    from gpulens.dashboard.pages import runs as runs_page

    with app.server.app_context():
        deadline = time.monotonic() + 120
        while True:
            rows, poll_off, note, where = runs_page.refresh_runs(0)
            if poll_off or time.monotonic() > deadline:
                break
            time.sleep(0.2)
    by_id = {r["id"]: r for r in rows}
    assert set(by_id) == {"h100-cnn-input-bound", "h100-gpt-small-batch", "cpu-cnn-workers", BROKEN_ID, HOSTILE_ID,
                         SLOW_ID}
    broken = by_id[BROKEN_ID]
    assert broken["status"] == "broken"
    assert broken["top"].endswith("broken-run/rank-0.db: not a gpulens database (not an SQLite file)")
    assert "1 unreadable" in note and poll_off  # every analysis done, nothing running: polling stops
    ok = by_id["h100-cnn-input-bound"]
    assert ok["run"] == "[h100\\-cnn\\-input\\-bound](/run/h100-cnn-input-bound)"
    assert ok["top"].startswith("[high] The training loop waits for data")
    assert ok["gpu"] == "H100 80GB HBM3 × 1" and ok["mfu"] == pytest.approx(1.85, abs=0.01)


# ---------------------------------------------------------------------- kernels, compare
def test_kernels_view_per_window_keeps_names_as_data(app):
    from gpulens.dashboard.pages import kernels as kpage

    with app.server.app_context():
        out = _polled(kpage.kernels_view, HOSTILE_ID, "0:0", None, None, "light")
        rows, cards, cat_fig, tmp_fig, memcpy, sync, download, problems = out
        assert rows and rows[0]["name"] == HOSTILE  # passed to the grid as a value, never as markup
        assert download[0].href == f"/download/trace/{HOSTILE_ID}/0/0"
        gemm = _polled(kpage.kernels_view, "h100-gpt-small-batch", "all", ["gemm"], None, "light")[0]
    assert gemm and {r["category"] for r in gemm} == {"gemm"}
    assert sum(r["share_pct"] for r in gemm) < 100


def test_compare_two_runs(app):
    from gpulens.dashboard.pages import compare as cpage

    with app.server.app_context():
        body = _polled(cpage.compare, "h100-cnn-input-bound", "h100-gpt-small-batch", "light")
    text = json.dumps(body.to_plotly_json(), default=lambda o: o.to_plotly_json())
    for needle in ("cmp-headline", "cmp-steps", "cmp-dist", "cmp-kernels", "cmp-config", "Samples/s",
                   "config.model", "95% CI", "Energy/sample"):
        assert needle in text


def test_compare_page_gives_noise_aware_verdicts():
    """The page's "beyond the noise" rows are gpulens compare's: the input-bound CNN against the healthy one."""
    from gpulens.profiler import open_run

    a = data.analyse(SAMPLES / "h100-cnn-input-bound").report
    b = data.analyse(SAMPLES / "h100-cnn-healthy").report
    with open_run(SAMPLES / "h100-cnn-input-bound") as ra, open_run(SAMPLES / "h100-cnn-healthy") as rb:
        head, fixes = comparison.headline_rows(ra, a, rb, b, data.analyse(SAMPLES / "h100-cnn-input-bound").advice)
        rows = {r["metric"]: r for r in head}
    assert fixes == []  # the advice proposed 3 workers; the healthy run has 4 (and another batch): not its change
    assert rows["Data wait share"]["verdict"] == "better" and rows["Data wait share"]["change"] == "-66.9 pp"
    # the report's own figures: the page never contradicts the cards or gpulens report
    assert rows["Data wait share"]["a"] == "70.6%" and rows["Data wait share"]["b"] == "3.7%"
    assert rows["Samples/s"]["verdict"] == "better" and rows["Samples/s"]["b"] == "4,243/s"
    assert ".." in rows["Samples/s"]["ci"]
    # batch 32 vs 256: a per-step figure gets no verdict
    assert rows["Step time"]["verdict"] == "not judged (batch sizes differ: compare samples/s)"
    assert rows["Other share"]["verdict"] in ("in noise", "same")
    assert rows["Tensor activity (GPM)"]["change"].endswith(" pp") and rows["Power (mean)"]["a"].endswith(" W")


def test_config_diff_and_kernel_deltas_are_pure():
    a = data.analyse(SAMPLES / "h100-gpt-small-batch").report
    b = data.analyse(SAMPLES / "h100-gpt-compiled").report
    diff = {r["key"]: r for r in comparison.config_diff(a, b)}
    assert diff["config.precision"]["changed"] and not diff["gpu"]["changed"]
    deltas = comparison.kernel_deltas(a, b)
    assert deltas and abs(deltas[0]["delta_us"]) >= abs(deltas[-1]["delta_us"])


def test_loss_view_reads_every_step_or_bucket_means(tmp_path):
    from gpulens.profiler.store.schema import STEP_COLUMNS
    from gpulens.profiler.store.writer import RunWriter

    w = RunWriter(tmp_path / "r" / "rank-0.db", {"name": "loss", "status": "running", "start": 1000.0, "pid": 1})
    for i in range(5000):
        row = dict.fromkeys(STEP_COLUMNS)
        row.update(step=i, t_start=1000.0 + i * 0.01, t_end=1000.0 + (i + 1) * 0.01, samples=1, flags=0,
                   data_wait=0.0, forward=0.004, backward=0.004, optimizer=0.002, other=0.0,
                   loss=None if i % 2 else 10.0 / (1 + i))
        w.step(tuple(row[c] for c in STEP_COLUMNS))
    w.close(status="finished", end=1051.0)
    with open_run(tmp_path / "r") as run:
        t, loss = run.loss_view(max_points=2000)
        assert t.size == 2500 and loss[0] == 10.0  # every recorded loss (steps without one are skipped)
        t, loss = run.loss_view(max_points=200)
        assert 150 <= t.size <= 201 and np.all(np.diff(t) > 0) and loss[0] < 10.0 and loss[-1] < 0.01
        assert run.step_span(7) == pytest.approx((1000.07, 1000.08))
    # a loss logged every 50th step only: the evenly spread sample would miss most; buckets of all rows
    w = RunWriter(tmp_path / "s" / "rank-0.db", {"name": "sparse", "status": "running", "start": 1000.0, "pid": 1})
    for i in range(20_000):
        row = dict.fromkeys(STEP_COLUMNS)
        row.update(step=i, t_start=1000.0 + i * 0.01, t_end=1000.0 + (i + 1) * 0.01, samples=1, flags=0,
                   data_wait=0.0, forward=0.004, backward=0.004, optimizer=0.002, other=0.0,
                   loss=5.0 - i / 10_000 if i % 50 == 0 else None)
        w.step(tuple(row[c] for c in STEP_COLUMNS))
        if i % 5_000 == 0:
            w.sync(timeout=30)
    w.close(status="finished", end=1201.0)
    with open_run(tmp_path / "s") as run:
        t, loss = run.loss_view(max_points=200)
        assert 150 <= t.size <= 201 and loss[0] == pytest.approx(5.0, abs=0.01) and loss[-1] < 3.1


def test_last_sample_age_reads_in_human_units():
    from gpulens import fmt

    assert fmt.ago(4.25) == "4.2 s ago" or fmt.ago(4.25) == "4.3 s ago"
    assert fmt.ago(600) == "10 min ago" and fmt.ago(584586.4) == "6.8 days ago" and fmt.ago(None) == "never"


# ---------------------------------------------------------------------- safety of ids and paths
@pytest.mark.parametrize("bad", ["../h100-cnn-input-bound", "/etc", "..", "a/b", "", None, 5,
                                 "h100-cnn-input-bound/../../x"])
def test_run_ids_that_leave_the_root_are_refused(bad):
    with pytest.raises(GpulensError):
        data.run_path(bad)


def test_analysis_is_cached_until_the_files_change(tmp_path):
    import shutil

    shutil.copytree(SAMPLES / "cpu-cnn-workers", tmp_path / "r")
    data.configure(tmp_path)
    first = data.analysis("r", wait=30)
    assert data.analysis("r") is first
    db = tmp_path / "r" / "rank-0.db"
    time.sleep(0.01)
    db.touch()
    second = data.analysis("r", wait=30)
    assert second is not first and second.report.steps == first.report.steps


# ---------------------------------------------------------------------- live
def _live_writer(path: Path):
    import os
    import socket

    import psutil

    from gpulens.profiler.store.writer import RunWriter

    start = time.time() - 20.0
    w = RunWriter(path / "rank-0.db", {"name": "live", "status": "running", "start": start, "host": socket.gethostname(),
                                       "pid": os.getpid(), "pid_create_time": psutil.Process().create_time()},
                  flush_interval=0.05)
    sid = w.series("host.cpu", -1, "%")
    for i in range(200):
        w.point(sid, start + i * 0.1, float(i % 100))
    w.sync()
    return w, sid, start


def test_live_update_sends_a_figure_then_only_new_points(tmp_path, app):
    from gpulens.dashboard.pages import live

    data.configure(tmp_path)
    w, sid, start = _live_writer(tmp_path / "live-run")
    try:
        fig, upd, cursor, cards, status, notice, stop = live.live_update(0, 60, "light", "live-run", None,
                                                                        {"width": 800})
        assert upd is live.no_update and fig["data"] and cursor["token"] == fig["layout"]["meta"]["live_token"]
        assert stop == -1  # running: keep polling
        x0 = decode(fig["data"][0]["x"])
        assert np.nanmax(x0) == pytest.approx(19.9, abs=1e-3)
        for i in range(200, 215):
            w.point(sid, start + i * 0.1, 42.0)
        w.sync()
        fig2, upd, cursor, *_ = live.live_update(1, 60, "light", "live-run", cursor, {"width": 800})
        assert fig2 is live.no_update
        assert upd["idx"] == [0] and upd["token"] == cursor["token"]
        assert len(upd["x"][0]) == 15 and upd["x"][0][0] == pytest.approx(20.0, abs=1e-3) and set(upd["y"][0]) == {42.0}
        assert upd["max"][0] >= 600  # the browser keeps a bounded window per trace
        _, upd3, *_ = live.live_update(2, 60, "light", "live-run", cursor, {"width": 800})
        assert upd3 is live.no_update  # nothing new: nothing sent
        ids = [c.id for c in cards]
        assert "live-age" in ids and "live-steps" in ids
    finally:
        w.meta(status="finished", end=time.time())
        w.close()
    data.reset()
    *_, stop = live.live_update(3, 60, "light", "live-run", cursor, {"width": 800})
    assert stop == 4  # finished: one last update, then the interval stops


def test_runs_are_chosen_by_id_where_two_runs_share_a_name():
    """``gpulens run --run-id base-2 -- python train.py`` twice: both are named "train"; the list and the
    compare dropdown say which is which."""
    from gpulens.dashboard.pages import compare as cpage
    from gpulens.dashboard.pages import runs as runs_page

    rows = [data.RunRow(id=f"base-{i}", name="train", status="finished", status_reason=None, replay=False,
                        gpu="CPU only", start=1_800_000_000.0 + 60 * i, duration_s=10.0, ranks=1)
            for i in (1, 2)]
    cells = [runs_page.run_row(r)["run"] for r in rows]
    assert cells == ["[base\\-1](/run/base-1) · train", "[base\\-2](/run/base-2) · train"]
    labels = [cpage.run_label(r) for r in rows]
    assert len(set(labels)) == 2 and labels[1].startswith("base-2 · train · ") and labels[1].endswith("finished")
    same = data.RunRow(id="h100-run", name="h100-run", status="running", status_reason=None, replay=False,
                       gpu="", start=None, duration_s=None, ranks=1)
    assert runs_page.run_row(same)["run"] == "[h100\\-run](/run/h100-run)" and cpage.run_label(same) == \
        "h100-run · running"


def test_a_backlog_of_analyses_all_finish_while_their_processes_are_replaced(tmp_path, monkeypatch):
    """More analyses queued than a process makes before it is replaced: every one finishes.  (Python 3.11's
    ``max_tasks_per_child`` stops replacing processes when work is queued, CPython gh-115634: a dashboard
    on a busy runs root showed "analysing" forever.)"""
    import shutil

    monkeypatch.setattr(data, "TASKS_PER_WORKER", 2)
    paths = []
    for i in range(7):
        shutil.copytree(SAMPLES / "cpu-cnn-workers", tmp_path / f"r{i}")
        paths.append(tmp_path / f"r{i}")
    analyses = data._Analyses(workers=1, processes=True)
    try:
        for path in paths:  # all queued at once, as the runs page of a big root does
            assert analyses.get(path) is None
        done = [analyses.get(path, wait=240) for path in paths]  # a failsafe: each takes ~1 s
        assert all(a is not None and a.report is not None for a in done), [a and a.error for a in done]
        assert analyses.pools_started == 4  # 7 analyses, 2 per process of 1: the pool replaced thrice
    finally:
        analyses.shutdown(now=True)
