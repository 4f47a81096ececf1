"""Runs that span machines: every node's GPUs and host in the summary, per-node and per-rank rows.

Two agents on one host with different node ranks are two nodes (that is how a job spread over machines
looks to gpulens): the real test launches two training processes the way torchrun's agents of a
``--nnodes 2`` job would set them up, each sampling its own "node".
"""
from __future__ import annotations

import html
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from helpers import TINY_TRAIN

from gpulens.hooks.track.runmeta import node_count, node_rank, rank_env
from gpulens.profiler import open_run
from gpulens.profiler.analysis.run_analysis import RunAnalysis
from gpulens.profiler.store.writer import RunWriter



def test_node_rank_comes_from_the_launcher():
    assert node_rank({"GROUP_RANK": "1", "SLURM_NODEID": "3"}) == 1  # torchrun's agent first
    assert node_rank({"SLURM_NODEID": "3"}) == 3 and node_rank({"NODE_RANK": "2"}) == 2
    assert node_rank({}) == 0 and node_rank({"GROUP_RANK": "x", "NODE_RANK": "4"}) == 4


def test_node_count_comes_from_the_launcher():
    assert node_count({"GROUP_WORLD_SIZE": "2", "SLURM_JOB_NUM_NODES": "4"}) == 2  # torchrun's agent first
    assert node_count({"SLURM_NNODES": "3"}) == 3
    assert node_count({"WORLD_SIZE": "16", "LOCAL_WORLD_SIZE": "8"}) == 2
    assert node_count({"WORLD_SIZE": "6", "LOCAL_WORLD_SIZE": "4"}) == 0 and node_count({}) == 0
    assert rank_env({"RANK": "5", "GROUP_RANK": "1"})["node_rank"] == 1


def test_two_nodes_make_one_run_with_both_hosts_and_every_ranks_steps(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "GROUP_RANK")}
    env.update(GPULENS_DIR=str(tmp_path), WORLD_SIZE="2", LOCAL_RANK="0", LOCAL_WORLD_SIZE="1",
               TORCHELASTIC_RUN_ID="job-42")
    procs = [subprocess.Popen([sys.executable, "-c", TINY_TRAIN, "2"],
                              env={**env, "RANK": str(n), "GROUP_RANK": str(n)},
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT) for n in (0, 1)]
    outs = [p.communicate(timeout=120)[0].decode() for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    (run_dir,) = [p for p in tmp_path.iterdir() if p.is_dir()]  # one run: the ranks found the same id alone
    with open_run(run_dir) as run:
        assert sorted(run.ranks) == [0, 1]
        nodes = run.nodes()
        assert [(n.node_rank, n.ranks, n.sampling_rank) for n in nodes] == [(0, [0], 0), (1, [1], 1)]
        report = RunAnalysis(run).report().as_dict()
    assert [n["node_rank"] for n in report["nodes"]] == [0, 1]
    for node in report["nodes"]:  # the bug: node 1's host was dropped, keyed like node 0's
        assert node["host_cpu_pct"] is not None and node["steps"] > 20 and node["step_time_median_s"] > 0
    assert [(r["rank"], r["node_rank"]) for r in report["ranks"]] == [(0, 0), (1, 1)]
    assert all(r["steps"] > 20 for r in report["ranks"])
    out = subprocess.run([sys.executable, "-m", "gpulens", "report", str(run_dir)], capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    table = out.stdout[out.stdout.index("Nodes (2)"):]
    assert "median step" in table and "vs fastest" in table


def _node_db(path: Path, rank: int, node: int, busy: float) -> None:
    """One rank's database as the node's sampling rank writes it: its GPU 0 at ``busy`` %, its host CPU."""
    start = 1_800_000_000.0
    w = RunWriter(path / f"rank-{rank}.db", {
        "name": "two-gpu-nodes", "status": "running", "start": start, "host": f"node{node}", "rank": rank,
        "local_rank": 0, "world_size": 2, "node_rank": node, "pid": 1,
        "gpus": [{"index": 0, "name": "NVIDIA H200", "uuid": f"GPU-node{node}"}],
        "nvml": {"available": True}})
    util = w.series("gpu.util", 0, "%")
    cpu = w.series("host.cpu", -1, "%")
    for i in range(50):
        w.point(util, start + i * 0.1, busy)
        w.point(cpu, start + i * 0.1, 10.0 + node)
    w.close(status="finished", end=start + 5.0)


def test_gpus_are_keyed_by_node_and_index(tmp_path):
    run_dir = tmp_path / "r"
    _node_db(run_dir, 0, 0, busy=90.0)
    _node_db(run_dir, 1, 1, busy=30.0)  # also GPU 0, on another machine
    with open_run(run_dir) as run:
        report = RunAnalysis(run).report().as_dict()
    got = {(g["node_rank"], g["index"]): g["metrics"]["gpu.util"]["mean"] for g in report["gpus"]}
    assert got == {(0, 0): pytest.approx(90.0), (1, 0): pytest.approx(30.0)}
    assert set(report["memory"]["gpu_memory_used_max_bytes"]) == {"0:0", "1:0"}
    by_node = {n["node_rank"]: n for n in report["nodes"]}
    assert by_node[1]["hostname"] == "node1" and by_node[1]["gpus"][0]["uuid"] == "GPU-node1"
    assert by_node[0]["gpu_busy_pct"] == pytest.approx(90.0) and by_node[1]["gpu_busy_pct"] == pytest.approx(30.0)
    assert by_node[1]["host_cpu_pct"] == pytest.approx(11.0)
    json.dumps(report)  # plain JSON


def test_the_advisor_reads_every_gpu_as_the_cards_do(tmp_path):
    """GPU busy 90 % on node 0's GPU and 30 % on node 1's: the advisor's figure is the cards' 60 %, not
    GPU 0's 90 %."""
    from gpulens.dashboard import overview

    run_dir = tmp_path / "r"
    _node_db(run_dir, 0, 0, busy=90.0)
    _node_db(run_dir, 1, 1, busy=30.0)
    with open_run(run_dir) as run:
        analysis = RunAnalysis(run)
        measured = analysis.measurements
        report = analysis.figures
    cards = {c.key: c for c in overview.headline(report)}
    assert measured.gpu_busy_pct == pytest.approx(60.0)
    assert cards["gpu_busy"].value == "60.0%"


def test_run_page_lists_the_nodes(tmp_path):
    from gpulens.dashboard import data
    from gpulens.dashboard.app import create_app

    _node_db(tmp_path / "r", 0, 0, busy=90.0)
    _node_db(tmp_path / "r", 1, 1, busy=30.0)
    app = create_app(tmp_path)
    import gpulens.dashboard.pages.run as run_page

    with app.server.app_context():
        assert data.analysis("r", wait=60) is not None
        table = run_page.nodes_table("r", [])
    text = html.unescape(table.children)  # components.text_table's Markdown: punctuation as references
    assert table.id == "nodes-table" and "node1" in text and "90.0%" in text and "30.0%" in text


def test_the_clock_anchor_keeps_the_reading_no_pause_split():
    """Two bare readings in a row (wall, then perf_counter) can be split by another thread taking the GIL or the
    OS on a busy host, and every timestamp of the process would be late by the pause: the anchor brackets the
    wall clock between two perf_counter readings and keeps the tightest pair, with half its gap as the error."""
    from gpulens.profiler.store import clock

    # perf_counter readings around each wall reading: a 5 ms pause in the first try, 1 us in the second
    perfs = iter([10.0, 10.005, 20.0, 20.000001])
    walls = iter([1000.0, 2000.0])
    wall, perf, error = clock.anchor(wall=lambda: next(walls), perf=lambda: next(perfs), good_gap_s=20e-6)
    assert wall == 2000.0 and perf == pytest.approx(20.0000005, abs=1e-9) and error == pytest.approx(0.5e-6)
    # every try paused: the tightest is kept, and its error says how far it can be off
    perfs = iter([0.0, 0.004, 1.0, 1.002, 2.0, 2.003])
    wall, perf, error = clock.anchor(wall=lambda: 7.0, perf=lambda: next(perfs), tries=3)
    assert perf == pytest.approx(1.001) and error == pytest.approx(0.001)
    # this process' own anchor: its perf epoch is what now() and from_perf() are built on
    assert 0 <= clock.ANCHOR_ERROR_S < 1
    assert clock.from_perf(0.0) == clock.perf_epoch()


def test_clock_offset_through_a_real_tcp_store_and_no_answer_costs_only_the_measurement(monkeypatch):
    import threading
    import time
    from datetime import timedelta

    import torch.distributed as dist

    from gpulens.hooks.track import clocksync
    from gpulens.profiler.store import clock

    server = dist.TCPStore("127.0.0.1", 0, world_size=1, is_master=True, wait_for_workers=False,
                           timeout=timedelta(seconds=10))
    client = dist.TCPStore("127.0.0.1", server.port, is_master=False, timeout=timedelta(seconds=10))
    stop = threading.Event()
    answering = threading.Thread(target=clocksync.serve, args=(server, stop), kwargs={"serve_for": 20}, daemon=True)
    answering.start()
    try:
        got = clocksync.ping(client, rank=4)
        with monkeypatch.context() as m:  # both ends' anchor errors count in the uncertainty
            m.setattr(clock, "ANCHOR_ERROR_S", 0.003)
            loose = clocksync.ping(client, rank=5)
    finally:
        stop.set()
    assert loose is not None and loose["uncertainty_s"] >= 0.006
    assert got is not None and got["rounds"] == clocksync.ROUNDS
    assert 0 <= got["uncertainty_s"] < 0.05 and abs(got["offset_s"]) <= got["uncertainty_s"] + 1e-6  # one clock
    assert got["perf_epoch_s"] == clock.perf_epoch()
    # nobody answers: the ping gives up after its short wait and raises inside the background thread only
    lonely = dist.TCPStore("127.0.0.1", 0, world_size=1, is_master=True, wait_for_workers=False,
                           timeout=timedelta(seconds=10))
    t0 = time.monotonic()
    with pytest.raises(Exception):
        clocksync.ping(lonely, rank=9, rounds=1)
    assert time.monotonic() - t0 < 5


def test_rank_0_closing_still_answers_the_peers_that_asked():
    """A short job: rank 0's run closes while another node's rank is pinging; the answers still come."""
    import threading
    import time
    from datetime import timedelta

    import torch.distributed as dist

    from gpulens.hooks.track import clocksync

    server = dist.TCPStore("127.0.0.1", 0, world_size=1, is_master=True, wait_for_workers=False,
                           timeout=timedelta(seconds=10))
    client = dist.TCPStore("127.0.0.1", server.port, is_master=False, timeout=timedelta(seconds=10))
    stop = threading.Event()
    serving = threading.Thread(target=clocksync.serve, args=(server, stop), daemon=True)
    serving.start()
    got: list = []
    pinging = threading.Thread(target=lambda: got.append(clocksync.ping(client, rank=3)), daemon=True)
    pinging.start()
    while int(server.add(f"{clocksync.KEY}/peers", 0)) < 1:  # the peer has asked ...
        time.sleep(0.001)
    stop.set()  # ... and rank 0's run closes at once
    t0 = time.monotonic()
    serving.join(timeout=10)
    pinging.join(timeout=10)
    assert not serving.is_alive() and time.monotonic() - t0 < clocksync.DRAIN_S + 1
    assert got and got[0] is not None and got[0]["rounds"] == clocksync.ROUNDS


def test_rank_0_closing_before_a_peer_asked_waits_for_the_nodes_it_expects():
    """rank 0's run closes before the other node's clock thread has asked at all (a 20-step job on a busy
    host): knowing the job has 2 nodes, rank 0 waits for the ask and answers it."""
    import threading
    import time
    from datetime import timedelta

    import torch.distributed as dist

    from gpulens.hooks.track import clocksync

    server = dist.TCPStore("127.0.0.1", 0, world_size=1, is_master=True, wait_for_workers=False,
                           timeout=timedelta(seconds=10))
    client = dist.TCPStore("127.0.0.1", server.port, is_master=False, timeout=timedelta(seconds=10))
    stop = threading.Event()
    stop.set()  # closed before anyone asked
    seen: list = []
    serving = threading.Thread(target=lambda: seen.append(clocksync.serve(server, stop, peers=1)), daemon=True)
    serving.start()
    time.sleep(0.5)
    got = clocksync.ping(client, rank=1)
    serving.join(timeout=10)
    assert seen == [1] and got is not None and got["rounds"] == clocksync.ROUNDS
    # a job whose other nodes never ask: rank 0 gives up after its drain time
    lonely = dist.TCPStore("127.0.0.1", 0, world_size=1, is_master=True, wait_for_workers=False,
                           timeout=timedelta(seconds=10))
    t0 = time.monotonic()
    assert clocksync.serve(lonely, stop, peers=1, drain_s=0.3) == 0
    assert time.monotonic() - t0 < 2


def test_a_clock_measured_while_the_run_closes_is_kept(tmp_path, monkeypatch):
    """The node's pings end while its run is closing (rank 0 answered at its own close): the run waits for
    them and keeps the offset (it used to be dropped, so node 1's clock was missing from the report)."""
    import threading
    import time

    import torch  # noqa: F401  (the clock sync starts only with torch loaded)

    import gpulens
    from gpulens.hooks.track import clocksync

    measured = {"offset_s": 0.004, "uncertainty_s": 0.0002, "rounds": 8, "against_rank": 0}

    def late_start(torch, rank, local_rank, node_rank, world_size, record, stop, nodes=0):
        thread = threading.Thread(target=lambda: (time.sleep(0.5), record(measured)), daemon=True)
        thread.start()
        return thread

    monkeypatch.setattr(clocksync, "start", late_start)
    run = gpulens.track("late-clock", runs_dir=tmp_path, quiet=True, advise=False,
                        sampling=gpulens.SamplingConfig(devices=False, host=False))
    run._start_clock_sync()  # as at step 1 of a distributed job
    run.close()
    with open_run(run.path) as reader:
        assert reader.meta(0)["clock"] == measured


def test_a_node_whose_clock_runs_ahead_is_read_on_rank_0s_clock(tmp_path):
    """Node 1's clock is 5 s ahead of rank 0's (measured: offset +5 s): the same moments, recorded in each
    node's own clock, come back on one time axis -- series, views, steps, step views, loss, windows, events."""
    from gpulens.profiler.store.schema import STEP_COLUMNS

    start = 1_800_000_000.0
    for rank, ahead in ((0, 0.0), (1, 5.0)):
        clock = {"offset_s": ahead, "uncertainty_s": 0.001, "rounds": 8, "against_rank": 0}
        if rank == 0:
            clock["reference"] = True
        w = RunWriter(tmp_path / "r" / f"rank-{rank}.db", {
            "name": "skewed", "status": "running", "start": start + ahead, "host": f"node{rank}", "rank": rank,
            "local_rank": 0, "world_size": 2, "node_rank": rank, "pid": 1, "clock": clock})
        cpu = w.series("host.cpu", -1, "%")
        for i in range(40):
            w.point(cpu, start + ahead + i * 0.1, 50.0)
            row = dict.fromkeys(STEP_COLUMNS)
            row.update(step=i, t_start=start + ahead + i * 0.1, t_end=start + ahead + (i + 1) * 0.1, samples=1,
                       flags=0, data_wait=0.0, forward=0.05, backward=0.04, optimizer=0.01, other=0.0, loss=1.0)
            w.step(tuple(row[c] for c in STEP_COLUMNS))
        w.event("note", "half way", t=start + ahead + 2.0)
        w.close(status="finished", end=start + ahead + 4.0)
    with open_run(tmp_path / "r") as run:
        a, b = run.series("host.cpu", rank=0), run.series("host.cpu", rank=1)
        assert np.allclose(a.t, b.t)
        assert np.allclose(run.steps(0).t_end, run.steps(1).t_end)
        assert np.allclose(run.step_view(1).t, run.step_view(0).t)
        assert np.allclose(run.loss_view(1)[0], run.loss_view(0)[0])
        # a range asked on rank 0's clock finds node 1's points of that moment
        mid = start + 2.0
        assert run.series("host.cpu", rank=1, t0=mid, t1=mid + 0.35).t.size == 4
        assert run.series_view("host.cpu", rank=1, t0=mid, t1=mid + 0.35).t.min() >= mid - 1e-6
        assert len(run.steps(1, t0=mid, t1=mid + 0.35)) == len(run.steps(0, t0=mid, t1=mid + 0.35))
        events = [e.t for e in run.events()]
        assert np.allclose(events, [start + 2.0, start + 2.0])
        assert run.info.start == pytest.approx(start) and run.info.end == pytest.approx(start + 4.0)
        assert run.step_span(3, 1) == pytest.approx(run.step_span(3, 0))
        assert np.allclose([s.t_first for s in run.series_list() if s.metric == "host.cpu"], start)
