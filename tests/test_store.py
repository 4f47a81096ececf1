"""Run stores: every process publishes Parquet segments to one store, readers go through a local cache.

Real parts only: s3fs against moto's S3 server started here on 127.0.0.1 (no mock of s3fs or botocore), a
``file://`` store in a second directory, training processes launched the way users launch them (``gpulens
run``, ``track()``, torchrun agents with static and c10d rendezvous, ``mp.spawn``), killed the way jobs die.
"""
from __future__ import annotations

import json
import re
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

moto_server = pytest.importorskip("moto.server")
pytest.importorskip("s3fs")
pytest.importorskip("pyarrow")

from gpulens.profiler import GpulensError, open_run  # noqa: E402
from gpulens.profiler.store import segments as seg  # noqa: E402
from gpulens.profiler.store.mirror import sync_runs  # noqa: E402
from gpulens.profiler.store.publisher import FANOUT  # noqa: E402
from gpulens.profiler.store.reader import node_key  # noqa: E402
from helpers import TINY_TRAIN as TRAIN  # noqa: E402

GPULENS = str(Path(sys.executable).with_name("gpulens"))
TORCHRUN = str(Path(sys.executable).with_name("torchrun"))
SCRIPTS = Path(__file__).resolve().parent / "scripts"

#: A plain training loop, as a user writes it (no gpulens in it): ``gpulens run`` finds its steps.
LOOP = textwrap.dedent("""
    import sys, time, torch, torch.nn as nn
    seconds = float(sys.argv[1])
    torch.manual_seed(0)
    model = nn.Linear(64, 64)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    x = torch.randn(32, 64)
    end = time.time() + seconds
    print("started", flush=True)
    while time.time() < end:
        loss = model(x).square().mean()
        loss.backward()
        opt.step()
        opt.zero_grad()
        time.sleep(0.004)
""")


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("GPULENS_") and k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "GROUP_RANK")}
    env.update(extra)
    return env


def _report(url: str, env: dict[str, str] | None = None) -> dict:
    out = subprocess.run([sys.executable, "-m", "gpulens", "report", url, "--json"], capture_output=True, text=True,
                         timeout=120, env=env)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def _steps(db: Path) -> list[tuple]:
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as con:
        return con.execute("SELECT step, t_start, t_end, loss, samples, flags FROM steps ORDER BY step").fetchall()


def _only(root: Path) -> Path:
    (run,) = [p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")]
    return run


def _alive(pid: int) -> bool:
    """A process that runs (not one that ended and waits to be reaped)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except OSError:
        return False


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("GPULENS_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture(scope="module")
def s3():
    import logging

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one line per request otherwise
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    server.start()
    host, port = server.get_host_and_port()
    env = {"AWS_ENDPOINT_URL": f"http://{host}:{port}", "AWS_ACCESS_KEY_ID": "testing",
           "AWS_SECRET_ACCESS_KEY": "testing-secret-7f3a", "AWS_DEFAULT_REGION": "us-east-1"}
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


def _bucket(s3, name: str) -> str:
    import s3fs

    s3fs.S3FileSystem.clear_instance_cache()
    s3fs.S3FileSystem().mkdir(name)
    return f"s3://{name}/team"


# ----------------------------------------------------------------------------- the exit paths
@pytest.mark.parametrize("seconds", [1.0, 9.0])
def test_gpulens_run_jobs_read_back_finished_from_s3_short_and_long(tmp_path, cache, s3, seconds):
    """The last round goes out before the job exits, whatever its length (it used to fail at interpreter exit:
    a 5 s job never reached the store, a 14 s one read back crashed with its last snapshot's steps)."""
    store = _bucket(s3, f"exit-{int(seconds)}")
    (tmp_path / "loop.py").write_text(LOOP)
    proc = subprocess.run([GPULENS, "run", "--runs-dir", str(tmp_path / "local"), "--store", store, "--no-advise",
                           "--", sys.executable, str(tmp_path / "loop.py"), str(seconds)],
                          capture_output=True, text=True, timeout=180, env=_env(GPULENS_PUBLISH_EVERY="0.3"))
    assert proc.returncode == 0, proc.stderr
    assert "cannot publish" not in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    run = _only(tmp_path / "local")
    report = _report(f"{store}/{run.name}")
    assert report["status"] == "finished", report["status_reason"]
    assert _steps(cache_run(store, run.name) / "rank-0.db") == _steps(run / "rank-0.db")
    if seconds > 5:  # ~30 rounds on a quiet host: merged segments, and a store that holds few objects for it
        import s3fs

        keys = s3fs.S3FileSystem().find(f"{store[5:]}/{run.name}/rank=0/steps")
        spans = sorted(seg.parse_segment_name(k.rsplit("/", 1)[1]) for k in keys)
        rounds = spans[-1][1]  # one steps segment per round that had new steps, numbered from 1
        assert rounds > 1 and [first for first, _ in spans] == sorted({first for first, _ in spans}), keys
        if rounds >= FANOUT:  # a busy host makes fewer rounds in 9 s (merging, round by round: a test below)
            assert any(last - first == FANOUT - 1 for first, last in spans) and len(keys) <= FANOUT + 1, keys
        else:
            assert len(keys) == rounds, keys


#: LOOP until the test drops ``stop`` beside it (at most 120 s).
STOPPABLE_LOOP = (LOOP.replace("while time.time() < end:", "while time.time() < end and not os.path.exists(stop):")
                  .replace("import sys, time,", "import os, sys, time,")
                  .replace("seconds = float(sys.argv[1])", "seconds = float(sys.argv[1]); stop = sys.argv[2]"))


def test_a_job_publishing_to_s3_is_profiled_on_request_from_another_machine(tmp_path, cache, s3):
    """`gpulens profile STORE/RUN` from a machine that sees only the store (its own cache, no run folder): the
    request goes into the store, the job's publisher brings it into the run folder, the job records the window,
    its answers and its trace come back through the store."""
    store = _bucket(s3, "asked")
    assert "while time.time() < end and not os.path.exists(stop)" in STOPPABLE_LOOP
    (tmp_path / "loop.py").write_text(STOPPABLE_LOOP)
    stop = tmp_path / "stop"
    job = subprocess.Popen([GPULENS, "run", "--runs-dir", str(tmp_path / "local"), "--store", store, "--no-advise",
                            "--profile-every", "0", "--no-auto-capture", "--", sys.executable,
                            str(tmp_path / "loop.py"), "120", str(stop)],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                           env=_env(GPULENS_PUBLISH_EVERY="1", GPULENS_REQUEST_POLL_S="1"))
    elsewhere = tmp_path / "asker"
    elsewhere.mkdir()
    asker_env = _env(GPULENS_CACHE=str(elsewhere / "cache"))
    try:
        assert job.stdout.readline().strip() == "started"
        deadline = time.monotonic() + 90
        while True:  # until the run's first rounds are in the store
            run_id = _only(tmp_path / "local").name if (tmp_path / "local").is_dir() else "none"
            asked = subprocess.run([GPULENS, "profile", f"{store}/{run_id}", "--steps", "3", "--timeout", "90"],
                                   capture_output=True, text=True, timeout=150, env=asker_env, cwd=elsewhere)
            if asked.returncode != 2 or time.monotonic() > deadline:
                break
            assert "no such run in the store" in asked.stderr or "has no rank" in asked.stderr, asked.stderr
            time.sleep(0.5)
    finally:
        stop.touch()
        out, err = job.communicate(timeout=120)
    assert asked.returncode == 0, asked.stdout + asked.stderr
    assert f"gpulens: asked run {run_id} (rank 0) to profile its next 3 steps (request " in asked.stdout
    assert ", through the store)" in asked.stdout
    done = [line for line in asked.stdout.splitlines() if line.startswith("rank 0: done, steps ")]
    assert len(done) == 1 and f": {store}/{run_id}/rank=0/traces/rank-0.window-0." in done[0], asked.stdout
    assert job.returncode == 0 and "Traceback" not in err, err
    report = _report(f"{store}/{run_id}", env=asker_env)  # the store's copy: the window and its trace, unbroken
    (window,) = report["windows"]
    assert window["trigger"] == "on demand" and window["last_step"] - window["first_step"] == 2
    assert done[0].startswith(f"rank 0: done, steps {window['first_step']}-{window['last_step']}: ")
    import s3fs

    fs = s3fs.S3FileSystem()
    fs.invalidate_cache()
    names = sorted(k.rsplit("/", 1)[1] for k in fs.ls(f"{store[5:]}/{run_id}/requests"))
    trace = done[0].split(": ")[-1].split(" ")[0]
    assert len(names) == 2 and names[1].endswith(".rank-0.json") and fs.exists(trace[len("s3://"):])
    # and the job once finished: one line, nothing asked
    after = subprocess.run([GPULENS, "profile", f"{store}/{run_id}"], capture_output=True, text=True, timeout=120,
                           env=asker_env, cwd=elsewhere)
    assert after.returncode == 2 and after.stderr.count("\n") == 1
    assert f"run {run_id} is not running (finished)" in after.stderr, after.stderr


def cache_run(store: str, run_id: str) -> Path:
    from gpulens.profiler.store.remote import cache_dir_for

    return cache_dir_for(store) / run_id


def test_track_closed_at_exit_and_by_sigterm_publishes_its_last_words_to_s3(tmp_path, cache, s3):
    store = _bucket(s3, "track-exit")
    script = tmp_path / "train.py"
    script.write_text(textwrap.dedent(f"""
        import sys, time, torch, gpulens
        run = gpulens.track("no-with", quiet=True, store={store!r}, runs_dir={str(tmp_path / 'local')!r},
                            profile=False, advise=False)
        w = torch.zeros(8, requires_grad=True)
        print("started", flush=True)
        end = time.time() + float(sys.argv[1])
        while time.time() < end:
            (w * 2).sum().backward()
            run.step(loss=float(w.sum()))
            time.sleep(0.003)
    """))  # no close(), no with: the interpreter's exit closes the run
    out = subprocess.run([sys.executable, str(script), "1.5"], capture_output=True, text=True, timeout=120,
                         env=_env())
    assert out.returncode == 0, out.stderr
    (run_a,) = (tmp_path / "local").iterdir()
    proc = subprocess.Popen([sys.executable, str(script), "60"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env=_env())
    assert proc.stdout.readline().strip() == b"started"
    time.sleep(2.0)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGTERM, err  # the script dies of SIGTERM, as it would without gpulens
    (run_b,) = [p for p in (tmp_path / "local").iterdir() if p != run_a]
    assert _report(f"{store}/{run_a.name}")["status"] == "finished"
    report_b = _report(f"{store}/{run_b.name}")
    assert report_b["status"] == "interrupted" and report_b["status_reason"] == "SIGTERM"
    for run in (run_a, run_b):
        assert _steps(cache_run(store, run.name) / "rank-0.db") == _steps(run / "rank-0.db")


def test_ctrl_c_under_gpulens_run_reads_back_interrupted_and_the_exit_stays_the_scripts(tmp_path, cache, s3):
    store = _bucket(s3, "ctrl-c")
    (tmp_path / "loop.py").write_text(LOOP)
    proc = subprocess.Popen([GPULENS, "run", "--runs-dir", str(tmp_path / "local"), "--store", store, "--no-advise",
                             "--", sys.executable, str(tmp_path / "loop.py"), "60"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=_env())
    assert proc.stdout.readline().strip() == b"started"
    time.sleep(2.0)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=90)
    assert proc.returncode == -signal.SIGINT, err.decode()  # died of Ctrl-C, as without gpulens (130 in a shell)
    run = _only(tmp_path / "local")
    report = _report(f"{store}/{run.name}")
    assert report["status"] == "interrupted" and report["status_reason"] == "KeyboardInterrupt"
    assert _steps(cache_run(store, run.name) / "rank-0.db") == _steps(run / "rank-0.db")


def test_sigkill_keeps_every_flushed_step_in_the_store_and_reads_crashed(tmp_path, cache, s3):
    """kill -9 of the training process: its publisher sends everything the database holds, status crashed."""
    store = _bucket(s3, "killed")
    env = _env(GPULENS_DIR=str(tmp_path / "local"), GPULENS_STORE=store, GPULENS_PUBLISH_EVERY="30")
    proc = subprocess.Popen([sys.executable, "-c", TRAIN, "60"], env=env, stdout=subprocess.PIPE)
    assert proc.stdout.readline().strip() == b"started"
    run = _only(tmp_path / "local")
    deadline = time.monotonic() + 55
    while len(_steps(run / "rank-0.db")) < 100:  # killed once 100 steps are on disk, however busy the host
        assert proc.poll() is None and time.monotonic() < deadline, "the loop never committed 100 steps"
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)
    deadline = time.monotonic() + 60
    while True:  # the publisher notices the death within a second and publishes once more
        try:
            sync_runs(store, full=False)
        except GpulensError:  # nothing in the store yet
            pass
        index_file = cache_run(store, run.name).parent / ".index" / run.name / "rank=0.json"
        index = json.loads(index_file.read_text()) if index_file.exists() else {"meta": {}}
        if index["meta"].get("status") == "crashed":
            break
        assert time.monotonic() < deadline, "the publisher never published the crash"
        time.sleep(0.5)
    assert "ended without closing" in index["meta"]["error"]
    sync_runs(store, only=run.name)
    local = _steps(run / "rank-0.db")
    assert len(local) >= 100 and _steps(cache_run(store, run.name) / "rank-0.db") == local  # nothing lost
    report = _report(f"{store}/{run.name}")
    assert report["status"] == "crashed"


def test_a_store_that_refuses_or_is_down_costs_one_warning_and_never_holds_the_exit(tmp_path, s3):
    port = _free_port()  # nothing listens there
    for store, extra in (("s3://no-such-bucket/x", {}),
                         ("s3://runs-bucket/x", {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}"})):
        local = tmp_path / f"local-{len(extra)}"
        env = _env(GPULENS_DIR=str(local), GPULENS_STORE=store, GPULENS_PUBLISH_EVERY="0.3", **extra)
        code = TRAIN.replace("quiet=True", "quiet=False")
        out = subprocess.run([sys.executable, "-c", code, "1.5"], env=env, capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr
        warnings = [line for line in out.stderr.splitlines() if "cannot publish" in line]
        assert len(warnings) == 1 and "complete locally" in warnings[0] and "Traceback" not in out.stderr, out.stderr
        # the publisher goes on trying in the background, with its own output: the captured pipes close with the
        # script, so this call returned while the publisher still retries (a publisher holding them would keep
        # it waiting for its whole minute of retries). Judged by that, not by a time a busy host stretches
        log_text = (_only(local) / ".publish" / "agent.log").read_text()
        publisher = int(re.search(r"\[(\d+)\] publishing", log_text).group(1))
        assert "gave up" not in log_text and _alive(publisher), log_text
        with open_run(_only(local)) as run:  # complete locally: every step the 1.5 s loop made (a busy host's
            # loop makes a handful, a quiet one hundreds)
            assert run.info.status == "finished" and len(run.steps()) >= 1


# ----------------------------------------------------------------------------- one run per job, torch's ranks
@pytest.mark.parametrize("rendezvous", ["static", "c10d"])
def test_torchrun_nodes_become_one_run_with_torchs_ranks(tmp_path, cache, s3, rendezvous):
    """A real CPU DDP job (gloo) as two torchrun agents, --nnodes 2 --node-rank 0/1 on 127.0.0.1, each with its
    own local runs dir: static rendezvous (--master-addr/--master-port, no --rdzv-id: the ranks agree on rank 0's
    run id through their process group) and c10d with --rdzv-id."""
    store = _bucket(s3, f"torchrun-{rendezvous}")
    port = _free_port()
    launch = (["--master-addr", "127.0.0.1", "--master-port", str(port)] if rendezvous == "static" else
              ["--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{port}", "--rdzv-id", "job-77"])
    agents = []
    for node in (0, 1):
        (tmp_path / f"node{node}").mkdir()
        agents.append(subprocess.Popen(
            [GPULENS, "run", "--quiet", "--store", store, "--no-advise", "--", TORCHRUN, "--nnodes", "2",
             "--node-rank", str(node), "--nproc-per-node", "1", *launch, str(SCRIPTS / "ddp_train.py"),
             "--epochs", "2"],
            cwd=tmp_path / f"node{node}", env=_env(GPULENS_PUBLISH_EVERY="1"), stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT))
    outs = [a.communicate(timeout=240)[0].decode() for a in agents]
    assert all(a.returncode == 0 for a in agents), outs
    import s3fs

    s3fs.S3FileSystem.clear_instance_cache()
    runs = [p for p in s3fs.S3FileSystem().ls(store[5:]) if not p.endswith("/_index")]
    assert len(runs) == 1, runs  # one run in the store for the job
    run_id = runs[0].rsplit("/", 1)[1]
    local = [_only(tmp_path / f"node{n}" / "gpulens-runs") for n in (0, 1)]
    assert local[0].name == run_id  # rank 0's id; node 1 keeps its folder and notes the job's
    if rendezvous == "static":
        assert local[1].name != run_id
    with open_run(local[1]) as node1:
        assert node1.meta(1).get("job_run_id", node1.info.id) == run_id
    report = _report(f"{store}/{run_id}")
    assert report["status"] == "finished"
    assert [n["node_rank"] for n in report["nodes"]] == [0, 1]
    assert [(r["rank"], r["node_rank"]) for r in report["ranks"]] == [(0, 0), (1, 1)]
    assert all(r["steps"] >= 12 for r in report["ranks"]), report["ranks"]  # 20 per rank, less warm-up, profiled
    # node 1's clock against rank 0's, through the job's own c10d store -- measured even in this 20-step job,
    # where rank 0 finishes while node 1 may still be pinging (rank 0 answers before exit).  One host here: the
    # two processes share the monotonic clock, so their clocks differ by exactly the difference of their
    # anchors (each anchors it to the wall clock at start; a wall clock stepped between the two starts makes
    # that milliseconds, as CI once saw): the measurement must find that difference within its uncertainty
    clock = report["nodes"][1]
    assert clock["clock_uncertainty_s"] is not None and clock["clock_uncertainty_s"] < 0.05, clock
    with open_run(local[0]) as node0, open_run(local[1]) as node1:
        truth = node1.meta(1)["clock"]["perf_epoch_s"] - node0.meta(0)["clock"]["perf_epoch_s"]
    assert abs(clock["clock_offset_s"] - truth) <= clock["clock_uncertainty_s"] + 20e-6, (clock, truth)
    assert report["nodes"][0]["clock_offset_s"] == 0.0
    for n in (0, 1):  # the store holds what each node holds locally
        assert _steps(cache_run(store, run_id) / f"rank-{n}.db") == _steps(local[n] / f"rank-{n}.db")


def test_mp_spawn_ranks_are_torchs_in_the_store_and_the_parent_is_the_nodes_sampler(tmp_path, cache, s3):
    store = _bucket(s3, "spawn")
    proc = subprocess.run([GPULENS, "run", "--runs-dir", str(tmp_path / "local"), "--store", store, "--no-advise",
                           "--", sys.executable, str(SCRIPTS / "spawn_ddp.py"), "--steps", "20", "--port",
                           str(_free_port())], capture_output=True, text=True, timeout=240, env=_env())
    assert proc.returncode == 0, proc.stderr
    run_id = _only(tmp_path / "local").name
    import s3fs

    s3fs.S3FileSystem.clear_instance_cache()
    folders = sorted(p.rsplit("/", 1)[1] for p in s3fs.S3FileSystem().ls(f"{store[5:]}/{run_id}"))
    assert folders == ["node=0", "rank=0", "rank=1"]
    report = _report(f"{store}/{run_id}")
    assert [r["rank"] for r in report["ranks"]] == [0, 1] and all(r["steps"] >= 12 for r in report["ranks"])
    (node,) = report["nodes"]
    assert node["ranks"] == [0, 1] and node["sampled_by"] == "node process" and node["host_cpu_pct"] is not None
    with open_run(cache_run(store, run_id)) as mirrored:
        assert mirrored.ranks == [0, 1] and mirrored.meta(node_key(0))["role"] == "node"


def test_a_node_killed_mid_run_reads_crashed_while_the_other_finished(tmp_path, cache, s3):
    store = _bucket(s3, "half-dead")
    base = _env(WORLD_SIZE="2", LOCAL_RANK="0", LOCAL_WORLD_SIZE="1", TORCHELASTIC_RUN_ID="job-9",
                GPULENS_STORE=store, GPULENS_PUBLISH_EVERY="0.5", GROUP_WORLD_SIZE="2")
    procs = [subprocess.Popen([sys.executable, "-c", TRAIN, seconds],
                              env={**base, "RANK": str(n), "GROUP_RANK": str(n),
                                   "GPULENS_DIR": str(tmp_path / f"node{n}")},
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, start_new_session=True)
             for n, seconds in ((0, "4"), (1, "60"))]
    for p in procs:
        assert p.stdout.readline().strip() == b"started"
    time.sleep(1.5)
    os.killpg(procs[1].pid, signal.SIGKILL)  # node 1: the whole process group, at once
    assert procs[0].wait(timeout=60) == 0
    procs[1].wait(timeout=10)
    run_id = _only(tmp_path / "node0").name
    deadline = time.monotonic() + 60
    while True:
        report = _report(f"{store}/{run_id}")
        if report["status"] != "running":
            break
        assert time.monotonic() < deadline
        time.sleep(0.5)
    assert [(n["node_rank"], n["status"]) for n in report["nodes"]] == [(0, "finished"), (1, "crashed")]
    assert report["status"] == "crashed"
    assert report["status_reason"].startswith("1 of 2 nodes crashed (node 1: "), report["status_reason"]


# ----------------------------------------------------------------------------- segments: what a round sends
def test_rounds_send_only_new_rows_merge_segments_and_a_mirror_never_duplicates(tmp_path, cache):
    """A real writer adding steps and samples, a publisher round after each batch, a mirror syncing between
    rounds while segments are merged under it: bytes per round follow the rows added, not the database's
    size, and the mirror ends with exactly the database's rows."""
    import numpy as np

    from gpulens.profiler.store.publisher import Publisher, Target
    from gpulens.profiler.store.writer import RunWriter

    run = tmp_path / "local" / "grow"
    writer = RunWriter(run / "rank-0.db", {"name": "grow", "status": "running", "rank": 0, "pid": os.getpid()},
                       flush_interval=0.05)
    store = f"file://{tmp_path / 'store'}"
    pub = Publisher(store, run / "rank-0.db", Target("grow", 0, 0))
    sid = writer.series("gpu.util", 0, "%")
    sent, step, t = [], 0, 1e9
    for round_no in range(40):
        for _ in range(50):
            writer.step((step, t, t + 0.01, 0.001, 0.002, 0.003, 0.002, 0.002, 32, None, 1.0 / (step + 1), None,
                         None, None, None, None, None, None, None, None, 0, None))
            writer.point(sid, t, float(step % 100))
            step, t = step + 1, t + 0.01
        writer.sync()
        assert pub.round()
        sent.append(pub.last.bytes)
        if round_no % 7 == 3:
            sync_runs(store)  # a reader between rounds, while merges replace segments it has applied
    writer.close(status="finished")
    assert pub.round(final=True)
    sync_runs(store)
    mirrored = _steps(cache_run(store, "grow") / "rank-0.db")
    assert mirrored == _steps(run / "rank-0.db") and len(mirrored) == 2000
    with open_run(cache_run(store, "grow")) as m, open_run(run) as local:
        a, b = m.series("gpu.util", 0), local.series("gpu.util", 0)
        assert np.array_equal(a.t, b.t) and np.array_equal(a.v, b.v)  # every point once
        assert m.info.status == "finished"
    plain = [b for i, b in enumerate(sent) if (i + 1) % FANOUT]  # rounds without a merge
    assert max(plain) < 3 * min(plain), sent  # round 39 sends what round 1 sent: bytes follow new rows
    objects = [p for p in (tmp_path / "store" / "grow" / "rank=0" / "steps").iterdir()]
    assert len(objects) <= 2 + 40 % FANOUT, sorted(p.name for p in objects)  # 40 rounds: 2 merged + 8


def test_a_round_cut_short_is_finished_by_the_next_with_nothing_twice(tmp_path, cache):
    """The outbox: a store that fails mid-round keeps what was exported; the next round (or ``gpulens
    publish``) sends it, and no row is exported twice."""
    import shutil

    from gpulens.profiler.store.publisher import Publisher, Target

    run = tmp_path / "cpu-cnn-workers"
    shutil.copytree(Path(__file__).resolve().parent.parent / "sample_runs" / "cpu-cnn-workers", run)
    target = tmp_path / "store"
    target.write_text("a file where the store's folder should be")  # every upload fails
    pub = Publisher(f"file://{target}", run / "rank-0.db", Target("cpu-cnn-workers", 0, 0))
    assert not pub.round(final=True)
    waiting = list(pub.state.outbox)
    assert waiting and all(e["op"] == "put" for e in waiting)
    target.unlink()
    out = subprocess.run([GPULENS, "publish", str(run), f"file://{target}"], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0 and "published cpu-cnn-workers" in out.stdout, out.stderr
    assert _report(f"file://{target}/cpu-cnn-workers")["steps"] == _report(str(run))["steps"]
    assert _steps(cache_run(f"file://{target}", "cpu-cnn-workers") / "rank-0.db") == _steps(run / "rank-0.db")
    assert (target / "cpu-cnn-workers" / "rank=0" / "traces").is_dir()
    bad = subprocess.run([GPULENS, "publish", str(run), "not-a-url"], capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "not a store URL" in bad.stderr and "Traceback" not in bad.stderr


def test_a_round_publishes_rows_and_status_as_they_were_together(tmp_path, cache, monkeypatch):
    """The run's last commit (its last steps and "finished") lands while a round reads the database: the round
    publishes the moment before it, and the last round the rest. Read one statement at a time, the round took
    the steps before the commit and the status after it, published "finished" over part of the steps, and
    the store's index kept the short count (seen under load: `gpulens ls` said 4 steps of 19)."""
    import shutil

    from gpulens.profiler.store.mirror import index_rows
    from gpulens.profiler.store.publisher import Publisher, Target

    run = tmp_path / "r"
    shutil.copytree(Path(__file__).resolve().parent.parent / "sample_runs" / "cpu-cnn-workers", run)
    db = run / "rank-0.db"
    steps = _steps(db)
    with sqlite3.connect(db) as conn:  # the run as it was before its last commit: WAL, running, 10 steps short
        conn.execute("PRAGMA journal_mode=WAL")
        last = conn.execute("SELECT * FROM steps WHERE step >= ? ORDER BY step", (len(steps) - 10,)).fetchall()
        conn.execute("DELETE FROM steps WHERE step >= ?", (len(steps) - 10,))
        conn.execute("UPDATE meta SET value = ? WHERE key = 'status'", (json.dumps("running"),))
    real_points = seg._new_points

    def last_commit_lands(conn, state, source):  # between reading the steps and reading the metadata
        monkeypatch.setattr(seg, "_new_points", real_points)
        with sqlite3.connect(db) as writer:
            writer.executemany(f"INSERT INTO steps VALUES ({', '.join('?' * len(last[0]))})", last)
            writer.execute("UPDATE meta SET value = ? WHERE key = 'status'", (json.dumps("finished"),))
        return real_points(conn, state, source)

    monkeypatch.setattr(seg, "_new_points", last_commit_lands)
    store = f"file://{tmp_path / 'store'}"
    pub = Publisher(store, db, Target("r", 0, 0))
    assert pub.round()
    index, _ = sync_runs(store, full=False)
    (row,) = index_rows(index, {})
    # one moment, before the commit: not finished (a running status whose heartbeat is old reads "crashed")
    assert row.status != "finished" and row.steps == len(steps) - 10
    assert pub.round(final=True)
    index, _ = sync_runs(store, full=False)
    (row,) = index_rows(index, {})
    assert (row.status, row.steps) == ("finished", len(steps))


def test_ls_reads_only_the_index_and_a_cache_fetches_only_changes(tmp_path, cache, s3):
    store = _bucket(s3, "listing")
    base = _env(WORLD_SIZE="2", LOCAL_RANK="0", LOCAL_WORLD_SIZE="1", TORCHELASTIC_RUN_ID="job-7",
                GPULENS_STORE=store, GPULENS_PUBLISH_EVERY="0.5")
    procs = [subprocess.Popen([sys.executable, "-c", TRAIN, "2"],
                              env={**base, "RANK": str(n), "GROUP_RANK": str(n),
                                   "GPULENS_DIR": str(tmp_path / f"node{n}")}) for n in (0, 1)]
    assert all(p.wait(timeout=120) == 0 for p in procs)
    out = subprocess.run([GPULENS, "ls", store, "--json"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    (row,) = json.loads(out.stdout)
    assert row["status"] == "finished" and row["steps"] == len(_steps(_only(tmp_path / "node0") / "rank-0.db"))
    assert not any((cache_run(store, row["id"])).glob("*.db"))  # listing assembled nothing
    report = _report(f"{store}/{row['id']}")
    assert len(report["nodes"]) == 2 and len(report["ranks"]) == 2
    _, again = sync_runs(store)
    assert again.fetched == 0 and again.unchanged > 0  # nothing changed: nothing downloaded


def test_a_run_deleted_from_the_store_leaves_the_cache(tmp_path, cache):
    import shutil

    from gpulens.profiler.store.publisher import publish_run

    store = f"file://{tmp_path / 'store'}"
    for name in ("cpu-cnn-workers", "cpu-gpt-small-batch"):
        shutil.copytree(Path(__file__).resolve().parent.parent / "sample_runs" / name, tmp_path / name)
        publish_run(tmp_path / name, store)
    root, _ = sync_runs(store)
    assert sorted(p.name for p in root.iterdir() if not p.name.startswith(".")) == ["cpu-cnn-workers",
                                                                                   "cpu-gpt-small-batch"]
    shutil.rmtree(tmp_path / "store" / "cpu-gpt-small-batch")
    root, _ = sync_runs(store)
    assert [p.name for p in root.iterdir() if not p.name.startswith(".")] == ["cpu-cnn-workers"]


# ----------------------------------------------------------------------------- bad input, secrets
def test_foreign_truncated_and_hostile_objects_make_their_run_broken_and_nothing_else(tmp_path, cache, s3):
    import shutil

    import s3fs

    from gpulens.profiler.store.publisher import publish_run

    store = _bucket(s3, "hostile")
    fs = s3fs.S3FileSystem()
    src = Path(__file__).resolve().parent.parent / "sample_runs" / "cpu-cnn-workers"
    for name in ("good", "foreign", "truncated", "wrong-table", "not-ours", "dotdot"):
        shutil.copytree(src, tmp_path / name)
        publish_run(tmp_path / name, store)
    bucket = store[5:]
    fs.pipe(f"{bucket}/foreign/rank=0/steps/notes.txt", b"hello")
    seg_key = next(k for k in fs.find(f"{bucket}/truncated/rank=0/steps") if k.endswith(".parquet"))
    fs.pipe(seg_key, fs.cat(seg_key)[:100])
    events = next(k for k in fs.find(f"{bucket}/wrong-table/rank=0/events") if k.endswith(".parquet"))
    fs.pipe(events, fs.cat(seg_key.replace("truncated", "wrong-table")))  # a steps segment filed under events/
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"x": [1, 2]}), tmp_path / "plain.parquet")
    fs.put_file(str(tmp_path / "plain.parquet"),
                next(k for k in fs.find(f"{bucket}/not-ours/rank=0/steps") if k.endswith(".parquet")))
    fs.pipe(f"{bucket}/dotdot/rank=0/../../escape.db", b"SQLite format 3\x00")
    fs.pipe(f"{bucket}/bad\x1b[31mname/rank=0/meta/current.parquet", b"x")
    out = subprocess.run([GPULENS, "ls", store, "--json"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    rows = {r["id"]: r for r in json.loads(out.stdout)}  # ls reads the store's index: one object per process
    assert rows["good"]["status"] == "finished"
    assert any(r["status"] == "broken" and "\x1b" not in r["id"] for r in rows.values() if "name" in r["id"])
    _, stats = sync_runs(store)  # what the dashboard does: every run assembled, the hostile ones marked broken
    assert {"foreign", "dotdot", "truncated", "wrong-table", "not-ours"} <= set(stats.broken), stats.broken
    assert "good" not in stats.broken
    for name, why in (("truncated", "Parquet"), ("wrong-table", "steps"), ("not-ours", "did not write"),
                      ("foreign", "did not write"), ("dotdot", "unsafe")):
        res = subprocess.run([GPULENS, "report", f"{store}/{name}"], capture_output=True, text=True, timeout=120)
        assert res.returncode == 2 and why in res.stderr and "Traceback" not in res.stderr, (name, res.stderr)
        assert len(res.stderr.strip().splitlines()) == 1
    assert _report(f"{store}/good")["steps"] == _report(str(tmp_path / "good"))["steps"]
    assert not list(tmp_path.glob("escape.db")) and not list(cache.parent.glob("**/escape.db"))


def test_publishers_fail_fast_on_a_silent_store_but_keep_the_users_retry_settings(monkeypatch):
    """A publisher retries rounds on its own: its S3 client gives up in seconds (botocore's 60 s connect timeout
    and four retries held a script's exit 13-20 s behind a store that refused connections); readers keep the
    defaults, and a user's own retry settings win."""
    from gpulens.profiler.store.remote import filesystem

    import s3fs

    s3fs.S3FileSystem.clear_instance_cache()  # botocore rewrites a client's retries dict once it connects
    monkeypatch.delenv("AWS_MAX_ATTEMPTS", raising=False)
    monkeypatch.delenv("AWS_RETRY_MODE", raising=False)
    quick, _ = filesystem("s3://bucket/runs", quick=True)
    assert quick.config_kwargs == {"connect_timeout": 5, "retries": {"total_max_attempts": 2, "mode": "standard"}}
    assert filesystem("s3://bucket/runs")[0].config_kwargs == {}
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "7")
    assert filesystem("s3://bucket/runs", quick=True)[0].config_kwargs == {"connect_timeout": 5}
    assert filesystem("file:///tmp/x", quick=True)[1] == "/tmp/x"


def test_secrets_stay_out_of_argv_metadata_messages_and_objects(tmp_path, cache, s3):
    from gpulens.hooks.track.runmeta import redact_argv
    from gpulens.profiler.store.remote import redact

    assert redact("ftp://alice:hunter2@host/runs") == "ftp://***@host/runs"
    assert redact_argv(["train.py", "--api-key", "sk-1", "--hf_token=hf_2", "--lr", "3", "DB_PASSWORD=p",
                        "--data", "https://u:p@h/x"]) == ["train.py", "--api-key", "***", "--hf_token=***", "--lr",
                                                          "3", "DB_PASSWORD=***", "--data", "https://***@h/x"]
    store = _bucket(s3, "secrets")
    script = tmp_path / "train.py"
    script.write_text(LOOP)
    proc = subprocess.Popen([GPULENS, "run", "--runs-dir", str(tmp_path / "local"), "--store", store, "--no-advise",
                             "--", sys.executable, str(script), "4", "--wandb-api-key", "sk-live-123"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env())
    assert proc.stdout.readline().strip() == "started"
    time.sleep(1.5)
    import psutil

    agents = [p for p in psutil.process_iter(["cmdline", "environ"])
              if "gpulens.profiler.store.publisher" in " ".join(p.info["cmdline"] or [])]
    assert agents and all(store not in " ".join(p.info["cmdline"]) for p in agents)  # the URL went by stdin
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    run = _only(tmp_path / "local")
    secret = s3["AWS_SECRET_ACCESS_KEY"]
    state = "".join(p.read_text() for p in (run / ".publish").rglob("*.json"))
    assert store not in state and secret not in state
    import s3fs

    s3fs.S3FileSystem.clear_instance_cache()
    fs = s3fs.S3FileSystem()
    blob = b"".join(fs.cat(k) for k in fs.find(f"{store[5:]}/{run.name}") if k.endswith(".parquet"))
    assert b"sk-live-123" not in blob and secret.encode() not in blob
    with open_run(run) as local:
        assert "sk-live-123" not in json.dumps(local.meta(0)) and "***" in local.meta(0)["command"]


def test_a_team_store_answers_duckdb_without_gpulens(tmp_path, cache):
    """The segments are plain Parquet: DuckDB reads a whole store with one query (what docs/recording.md shows)."""
    import shutil

    duckdb = pytest.importorskip("duckdb")
    from gpulens.profiler.store.publisher import publish_run

    store = tmp_path / "store"
    for name in ("cpu-cnn-workers", "h100-cnn-input-bound"):
        shutil.copytree(Path(__file__).resolve().parent.parent / "sample_runs" / name, tmp_path / name)
        publish_run(tmp_path / name, f"file://{store}")
    rows = duckdb.sql(f"""
        SELECT s.run, s.node, median(s.t_end - s.t_start) AS step_s, any_value(g.busy) AS gpu_busy
        FROM read_parquet('{store}/*/rank=*/steps/*.parquet') s
        LEFT JOIN (SELECT run, node, avg(value) AS busy FROM read_parquet('{store}/*/*/points/*.parquet')
                   WHERE metric = 'gpu.util' GROUP BY run, node) g USING (run, node)
        WHERE s.flags = 0 GROUP BY s.run, s.node ORDER BY s.run
    """).fetchall()
    assert [r[0] for r in rows] == ["cpu-cnn-workers", "h100-cnn-input-bound"]
    by_run = {r[0]: r for r in rows}
    h100 = _report(str(tmp_path / "h100-cnn-input-bound"))
    assert by_run["h100-cnn-input-bound"][2] == pytest.approx(h100["step_time"]["median_s"], rel=1e-9)
    assert by_run["h100-cnn-input-bound"][3] == pytest.approx(h100["gpus"][0]["metrics"]["gpu.util"]["mean"])
    assert by_run["cpu-cnn-workers"][3] is None  # no GPU on that machine


def test_runs_published_whole_by_an_older_gpulens_still_list_and_read(tmp_path, cache):
    """Stores written before segments hold each rank's database whole (<run>/rank-N.db, <run>/traces/)."""
    import shutil

    from gpulens.profiler.store.runstore import KEPT_REPORT_FILE

    src = Path(__file__).resolve().parent.parent / "sample_runs" / "cpu-cnn-workers"
    store = tmp_path / "store"
    shutil.copytree(src, store / "old-run", ignore=shutil.ignore_patterns("*.gpulens-analysis.json", KEPT_REPORT_FILE))
    # a run folder synced into the store by hand carries the report a local `gpulens report` kept: it is skipped,
    # never fetched -- what is printed is computed from the run, not taken from the store
    (store / "old-run" / KEPT_REPORT_FILE).write_text(json.dumps({"key": {}, "report": '{"steps": -1}'}))
    out = subprocess.run([GPULENS, "ls", f"file://{store}", "--json"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    (row,) = json.loads(out.stdout)
    assert (row["id"], row["status"]) == ("old-run", "finished") and row["steps"] == len(_steps(src / "rank-0.db"))
    assert _report(f"file://{store}/old-run")["steps"] == _report(str(src))["steps"] > 0


def test_a_backlog_segment_is_never_merged_and_merges_never_span_it(tmp_path, cache):
    """A round that sends hours of backlog (a publisher that starts late) is not sent again by a merge, and the
    segments around it are merged only with their neighbours, so a mirror misses no row."""
    import numpy as np

    from gpulens.profiler.store import publisher as pub_mod
    from gpulens.profiler.store.publisher import Publisher, Target
    from gpulens.profiler.store.writer import RunWriter

    run = tmp_path / "local" / "late"
    writer = RunWriter(run / "rank-0.db", {"name": "late", "status": "running", "rank": 0}, flush_interval=0.05)
    store = f"file://{tmp_path / 'store'}"
    pub = Publisher(store, run / "rank-0.db", Target("late", 0, 0))
    sid = writer.series("gpu.util", 0, "%")
    old_cap = pub_mod.MERGE_MAX_BYTES
    pub_mod.MERGE_MAX_BYTES = 200_000
    try:
        t = 1e9
        for round_no in range(40):
            n = 40_000 if round_no == 5 else 50  # round 5 carries a backlog
            writer.points_bulk(sid, t + np.arange(n) * 0.01, np.arange(n, dtype=float))
            t += n * 0.01
            writer.sync()
            assert pub.round()
            if round_no == 5:
                big = pub.last.bytes
            elif round_no > 5:
                assert pub.last.bytes < big / 4, (round_no, pub.last.bytes)  # never sent again
    finally:
        pub_mod.MERGE_MAX_BYTES = old_cap
    writer.close(status="finished")
    assert pub.round(final=True)
    sync_runs(store)
    with open_run(cache_run(store, "late")) as m, open_run(run) as local:
        a, b = m.series("gpu.util", 0), local.series("gpu.util", 0)
        assert np.array_equal(a.t, b.t) and np.array_equal(a.v, b.v)
    names = sorted(p.name for p in (tmp_path / "store" / "late" / "rank=0" / "points").iterdir())
    assert "00000006-00000006.parquet" in names, names  # the backlog, alone


def test_the_dashboards_mirror_shows_runs_published_after_it_started_and_drops_deleted_ones(tmp_path, cache, s3):
    """fsspec keeps listings per process: a dashboard's mirror must still see what is new and what is gone."""
    import shutil
    import threading

    import s3fs

    from gpulens.profiler.store.mirror import start_mirror
    from gpulens.profiler.store.publisher import publish_run

    store = _bucket(s3, "live-mirror")
    shutil.copytree(Path(__file__).resolve().parent.parent / "sample_runs" / "cpu-cnn-workers", tmp_path / "first")
    publish_run(tmp_path / "first", store)
    stop = threading.Event()
    root = start_mirror(store, every=0.3, stop=stop)
    try:
        def listed() -> set[str]:
            return {p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")}

        def until(cond) -> None:
            deadline = time.monotonic() + 30
            while not cond():
                assert time.monotonic() < deadline, listed()
                time.sleep(0.1)

        until(lambda: listed() == {"first"})
        shutil.copytree(Path(__file__).resolve().parent.parent / "sample_runs" / "cpu-gpt-small-batch",
                        tmp_path / "second")
        publish_run(tmp_path / "second", store)
        until(lambda: listed() == {"first", "second"})
        s3fs.S3FileSystem().rm(f"{store[5:]}/first", recursive=True)
        until(lambda: listed() == {"second"})
    finally:
        stop.set()


def test_links_fifos_huge_and_clashing_objects_in_a_shared_folder_store_break_only_their_run(tmp_path, cache):
    """Someone who can write a shared file:// store: a trace replaced by a link to a file only the reader may
    read, a FIFO named like a database, a run folder that links elsewhere, a 3 GB sparse database, a name over
    255 bytes, a file and a folder of one name.  Each is one broken run; nothing is read through a link,
    nothing is written outside the cache, and the good run reads as published."""
    import shutil

    from gpulens.profiler.store.publisher import publish_run

    store = tmp_path / "store"
    src = Path(__file__).resolve().parent.parent / "sample_runs" / "cpu-cnn-workers"
    for name in ("good", "linked-trace"):
        shutil.copytree(src, tmp_path / name)
        publish_run(tmp_path / name, f"file://{store}")
    secret = tmp_path / "secret.txt"
    secret.write_text("only the dashboard's user may read this")
    (trace,) = (store / "linked-trace" / "rank=0" / "traces").iterdir()
    trace.unlink()
    trace.symlink_to(secret)
    (store / "fifo-run").mkdir()
    os.mkfifo(store / "fifo-run" / "rank-0.db")
    (store / "elsewhere").symlink_to(tmp_path / "good")
    (store / "huge").mkdir()
    with open(store / "huge" / "rank-0.db", "wb") as fh:
        fh.truncate(3 << 30)  # sparse: 3 GB that take no disk
    (store / "long").mkdir()
    (store / "long" / ("x" * 250 + ".db")).write_bytes(b"x")
    (store / "clash" / "rank-0.db" / "traces").mkdir(parents=True)
    (store / "clash" / "rank-0.db" / "traces" / "x").write_bytes(b"x")
    env = {**os.environ, "GPULENS_MIRROR_MAX_OBJECT_GB": "1"}
    out = subprocess.run([GPULENS, "ls", f"file://{store}", "--json"], capture_output=True, text=True, timeout=120,
                         env=env)
    assert out.returncode == 0 and "internal error" not in out.stderr, out.stderr
    rows = {r["id"]: r for r in json.loads(out.stdout)}
    assert rows["good"]["status"] == "finished"
    dash = subprocess.run([sys.executable, "-c", "import json, sys\n"
                           "from gpulens.profiler.store.mirror import sync_runs\n"
                           "root, stats = sync_runs(sys.argv[1])\n"
                           "print(json.dumps({'root': str(root), 'broken': stats.broken}))", f"file://{store}"],
                          capture_output=True, text=True, timeout=120, env=env)
    assert dash.returncode == 0, dash.stderr
    got = json.loads(dash.stdout)
    assert {"linked-trace", "fifo-run", "huge", "long", "clash"} <= set(got["broken"]), got["broken"]
    assert "good" not in got["broken"] and "elsewhere" not in got["broken"]  # a link beside the runs: not a run
    cached = b"".join(p.read_bytes() for p in Path(got["root"]).rglob("*") if p.is_file() and p.stat().st_size < 1e8)
    assert b"only the dashboard" not in cached
    assert sum(p.stat().st_size for p in Path(got["root"]).rglob("*") if p.is_file()) < 50e6
    assert _report(f"file://{store}/good", env)["steps"] == _report(str(src))["steps"]
    for name in ("linked-trace", "fifo-run", "huge"):
        res = subprocess.run([GPULENS, "report", f"file://{store}/{name}"], capture_output=True, text=True,
                             timeout=60, env=env)
        assert res.returncode == 2 and len(res.stderr.strip().splitlines()) == 1, (name, res.stderr)
