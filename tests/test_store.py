"""Run stores: every rank publishes to one store, readers go through a local cache.

Real parts only: s3fs against moto's S3 server started here on 127.0.0.1, a ``file://`` store in a second
directory, training processes launched the way two torchrun agents of a ``--nnodes 2`` job are.
"""
from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

moto_server = pytest.importorskip("moto.server")
pytest.importorskip("s3fs")

from gpulens.profiler import open_run  # noqa: E402
from gpulens.profiler.store.remote import sync_runs  # noqa: E402
from helpers import TINY_TRAIN as TRAIN  # noqa: E402



def _agents(tmp_path: Path, store: str, env: dict[str, str], seconds: float = 2.0) -> list[subprocess.Popen]:
    """Two training processes as two nodes' agents would start them, each with its own local runs dir."""
    base = {k: v for k, v in os.environ.items() if k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "GROUP_RANK")}
    base.update(env, WORLD_SIZE="2", LOCAL_RANK="0", LOCAL_WORLD_SIZE="1", TORCHELASTIC_RUN_ID="job-7",
                GPULENS_STORE=store, GPULENS_PUBLISH_EVERY="0.5")
    return [subprocess.Popen([sys.executable, "-c", TRAIN, str(seconds)],
                             env={**base, "RANK": str(n), "GROUP_RANK": str(n),
                                  "GPULENS_DIR": str(tmp_path / f"node{n}")},
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT) for n in (0, 1)]


def _finish(procs: list[subprocess.Popen]) -> list[str]:
    outs = [p.communicate(timeout=120)[0].decode() for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    return outs


def _report(url: str) -> dict:
    out = subprocess.run([sys.executable, "-m", "gpulens", "report", url, "--json"], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("GPULENS_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture(scope="module")
def s3():
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    server.start()
    host, port = server.get_host_and_port()
    env = {"AWS_ENDPOINT_URL": f"http://{host}:{port}", "AWS_ACCESS_KEY_ID": "testing",
           "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    import s3fs

    s3fs.S3FileSystem.clear_instance_cache()
    s3fs.S3FileSystem().mkdir("runs-bucket")
    yield env
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    server.stop()


def test_two_nodes_publish_one_run_to_a_file_store(tmp_path, cache):
    store = f"file://{tmp_path / 'store'}"
    _finish(_agents(tmp_path, store, {"GPULENS_CACHE": str(cache)}))
    (run_id,) = os.listdir(tmp_path / "store")
    assert sorted(os.listdir(tmp_path / "store" / run_id)) == ["rank-0.db", "rank-1.db"]
    report = _report(f"{store}/{run_id}")
    assert [n["node_rank"] for n in report["nodes"]] == [0, 1] and report["status"] == "finished"
    assert all(r["steps"] > 20 for r in report["ranks"])
    for n in (0, 1):  # the store holds what each node holds locally
        with open_run(tmp_path / f"node{n}" / run_id) as local:
            assert len(local.steps(n)) == report["ranks"][n]["steps"] + 3  # + warm-up and profiled


def test_s3_store_through_s3fs_with_a_cache_that_fetches_only_changes(tmp_path, cache, s3):
    store = "s3://runs-bucket/team"
    _finish(_agents(tmp_path, store, {}))
    out = subprocess.run([sys.executable, "-m", "gpulens", "ls", store, "--json"], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    (row,) = json.loads(out.stdout)
    assert row["status"] == "finished" and row["steps"] > 20
    report = _report(f"{store}/{row['id']}")
    assert len(report["nodes"]) == 2 and len(report["ranks"]) == 2
    _, again = sync_runs(store)
    assert again.fetched == 0 and again.unchanged == 2  # nothing changed: nothing downloaded


def test_a_store_that_refuses_costs_one_warning_and_the_run_finishes_locally(tmp_path, s3):
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE")}
    env.update(GPULENS_DIR=str(tmp_path / "local"), GPULENS_STORE="s3://no-such-bucket/x",
               GPULENS_PUBLISH_EVERY="0.3")
    code = TRAIN.replace("quiet=True", "quiet=False")
    out = subprocess.run([sys.executable, "-c", code, "1.5"], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    warnings = [line for line in out.stderr.splitlines() if "cannot publish" in line]
    assert len(warnings) == 1 and "complete locally" in warnings[0] and "Traceback" not in out.stderr
    (run_dir,) = (tmp_path / "local").iterdir()
    with open_run(run_dir) as run:
        assert run.info.status == "finished" and len(run.steps()) > 20


def test_sigkill_leaves_the_store_at_most_one_publish_behind(tmp_path, cache):
    store = f"file://{tmp_path / 'store'}"
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE")}
    env.update(GPULENS_DIR=str(tmp_path / "local"), GPULENS_STORE=store, GPULENS_PUBLISH_EVERY="1.0")
    proc = subprocess.Popen([sys.executable, "-c", TRAIN, "60"], env=env, stdout=subprocess.PIPE)
    assert proc.stdout.readline().strip() == b"started"
    time.sleep(4.0)
    killed_at = time.time()
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)
    (run_id,) = os.listdir(tmp_path / "store")
    db = tmp_path / "store" / run_id / "rank-0.db"
    with sqlite3.connect(db) as con:  # a whole database, never half of one
        last = con.execute("SELECT MAX(t_end) FROM steps").fetchone()[0]
    assert killed_at - last <= 1.0 + 2.0, killed_at - last
    report = _report(f"{store}/{run_id}")
    assert report["status"] in ("running", "crashed") and report["steps"] > 20


def test_publish_uploads_a_finished_local_run(tmp_path, cache):
    import shutil

    src = Path(__file__).resolve().parent.parent / "sample_runs" / "cpu-cnn-workers"
    run_dir = tmp_path / "cpu-cnn-workers"
    shutil.copytree(src, run_dir)
    store = f"file://{tmp_path / 'store'}"
    out = subprocess.run([sys.executable, "-m", "gpulens", "publish", str(run_dir), store], capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0 and "published cpu-cnn-workers" in out.stdout, out.stderr
    assert (tmp_path / "store" / "cpu-cnn-workers" / "traces").is_dir()
    assert _report(f"{store}/cpu-cnn-workers")["steps"] == _report(str(run_dir))["steps"]
    bad = subprocess.run([sys.executable, "-m", "gpulens", "publish", str(run_dir), "not-a-url"],
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "not a store URL" in bad.stderr and "Traceback" not in bad.stderr


def test_torchrun_two_agents_with_nnodes_2_become_one_run_in_the_store(tmp_path, cache):
    """A real CPU DDP job (gloo) launched as two torchrun agents, --nnodes 2 --node-rank 0/1 on 127.0.0.1,
    each with its own local runs dir and the same store."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    store = f"file://{tmp_path / 'store'}"
    script = Path(__file__).resolve().parent / "scripts" / "ddp_train.py"
    torchrun = str(Path(sys.executable).with_name("torchrun"))
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env["GPULENS_PUBLISH_EVERY"] = "1"
    agents = []
    for node in (0, 1):
        (tmp_path / f"node{node}").mkdir()
        agents.append(subprocess.Popen(
            [sys.executable, "-m", "gpulens", "run", "--quiet", "--store", store, "--no-advise", "--", torchrun,
             "--nnodes", "2", "--node-rank", str(node), "--nproc-per-node", "1", "--rdzv-backend", "c10d",
             "--rdzv-endpoint", f"127.0.0.1:{port}", "--rdzv-id", "job-77", str(script), "--epochs", "2"],
            cwd=tmp_path / f"node{node}", env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT))
    outs = [a.communicate(timeout=240)[0].decode() for a in agents]
    assert all(a.returncode == 0 for a in agents), outs
    (run_id,) = os.listdir(tmp_path / "store")  # both agents derived the same run id from --rdzv-id
    report = _report(f"{store}/{run_id}")
    assert [n["node_rank"] for n in report["nodes"]] == [0, 1]
    assert [(r["rank"], r["node_rank"]) for r in report["ranks"]] == [(0, 0), (1, 1)]
    assert all(r["steps"] >= 12 for r in report["ranks"]), report["ranks"]  # 20 per rank, less warm-up, profiled
    # node 1's clock against rank 0's, through the job's own c10d store: one host here, so ~0 -- measured even
    # in this 20-step job, where rank 0 finishes while node 1 may still be pinging (rank 0 answers before exit)
    clock = report["nodes"][1]
    assert clock["clock_uncertainty_s"] is not None and clock["clock_uncertainty_s"] < 0.05, clock
    assert abs(clock["clock_offset_s"]) <= clock["clock_uncertainty_s"] + 0.002, clock
    assert report["nodes"][0]["clock_offset_s"] == 0.0


def test_track_store_argument_and_a_mirror_that_picks_up_new_runs(tmp_path, monkeypatch, cache):
    import torch

    import gpulens
    from gpulens.profiler.store.remote import start_mirror

    monkeypatch.setenv("GPULENS_DIR", str(tmp_path / "local"))
    store = f"file://{tmp_path / 'store'}"
    (tmp_path / "store").mkdir()
    import threading

    stop = threading.Event()
    mirror = start_mirror(store, every=0.2, stop=stop)  # what `gpulens dashboard STORE_URL` serves from
    with gpulens.track("in-process", quiet=True, store=store, profile=False, advise=False) as run:
        w = torch.zeros(8, requires_grad=True)
        for _ in range(30):
            (w * 2).sum().backward()
            run.step()
    with open_run(tmp_path / "store" / run.id) as stored:  # the final publish carries the final status
        assert stored.info.status == "finished" and len(stored.steps()) == 30
    deadline = time.monotonic() + 10
    try:
        while not (mirror / run.id / "rank-0.db").exists():
            assert time.monotonic() < deadline, "the mirror never fetched the new run"
            time.sleep(0.1)
    finally:
        stop.set()


def test_publishing_keeps_to_its_bandwidth_budget(tmp_path):
    """A snapshot is a whole database: a big one is sent less often, so the job's network stays its own."""
    import shutil

    from gpulens.profiler.store.remote import Publisher

    run_dir = tmp_path / "h100-cnn-input-bound"
    shutil.copytree(Path(__file__).resolve().parent.parent / "sample_runs" / "h100-cnn-input-bound", run_dir)
    p = Publisher(f"file://{tmp_path / 'store'}", run_dir, run_dir / "rank-0.db", every=10.0, budget_bps=1e4)
    try:
        assert p.interval() == 10.0  # nothing sent yet
        assert p.publish_once() and p.last_size > 1e5  # the sample database: ~220 KB
        assert p.interval() == pytest.approx(p.last_size / 1e4) and p.interval() > 10.0  # 10 KB/s on average
        assert p.publish_once() and p.stats.skipped == 1  # unchanged: nothing sent again
    finally:
        p._stop.set()
