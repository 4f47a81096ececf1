"""Profile on demand (issue 30): ``gpulens profile RUN`` asks a running job for a window of its next N steps
through the run folder; the job's request watcher hands it to the profiler at a step boundary.

Real loops, real torch.profiler, real run databases.  What a busy host cannot change is asserted (the window's
steps follow the request's, the trace exists, exit codes, the one-line errors); no time is judged.
"""
from __future__ import annotations

import io
import json
import os
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from gpulens.hooks.track.on_demand import RequestWatcher  # noqa: E402
from gpulens.hooks.track.profiling import Demand, ProfileConfig, ProfilerWindows  # noqa: E402
from gpulens.profiler import RunAnalysis, open_run  # noqa: E402
from gpulens.profiler.store import requests  # noqa: E402
from gpulens.profiler.store.schema import FLAG_PROFILED  # noqa: E402
from gpulens.profiler.store.writer import RunWriter  # noqa: E402

GPULENS = str(Path(sys.executable).with_name("gpulens"))

#: A loop that trains until the test drops a ``stop`` file beside it (at most 90 s), ~10 ms a step; no windows
#: on a schedule.  It prints its step count when it ends.
LOOP = textwrap.dedent("""
    import sys, time, torch, gpulens
    from pathlib import Path
    here = Path(__file__).parent
    model = torch.nn.Linear(32, 32)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    deadline = time.monotonic() + 90
    steps = 0
    # auto_capture off: on a loaded host the loop's own slowdowns get windows of their own (tested apart),
    # and these tests count the windows that requests made
    with gpulens.track("od", runs_dir=str(here / "runs"), run_id="od", profile=False, quiet=True,
                       count_flops=False, auto_capture=False) as run:
        while not (here / "stop").exists() and time.monotonic() < deadline:
            loss = model(torch.randn(16, 32)).pow(2).mean()
            loss.backward(); opt.step(); opt.zero_grad()
            time.sleep(0.01)
            run.step(loss=loss)
            steps += 1
    print("steps", steps)
""")


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("GPULENS_")}


def _profile(tmp_path: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([GPULENS, "profile", "od", "--runs-dir", str(tmp_path / "runs"), *args],
                          capture_output=True, text=True, timeout=timeout, env=_env())


def _ack(request: str, rank: int, status: str, first: int | None = None, last: int | None = None,
         path: str | None = None) -> requests.Ack:
    """A rank's answer as its watcher would write it (window 0 once it has steps)."""
    return requests.Ack(request=request, rank=rank, t=time.time(), status=status,
                        window=None if first is None else 0, first_step=first, last_step=last, path=path)


def _wait_for_steps(run_dir: Path, proc: subprocess.Popen, at_least: int = 3) -> None:
    """Until the loop has recorded a few steps (its watcher answers only once the process steps)."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        if (run_dir / "rank-0.db").exists():
            try:
                with open_run(run_dir) as run:
                    if len(run.steps()) >= at_least:
                        return
            except Exception:
                pass
        time.sleep(0.2)
    raise AssertionError(f"the loop recorded no steps (exit {proc.poll()})")


def test_a_running_job_profiles_its_next_steps_on_request(tmp_path: Path) -> None:
    (tmp_path / "loop.py").write_text(LOOP)
    loop = subprocess.Popen([sys.executable, str(tmp_path / "loop.py")], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=_env())
    run_dir = tmp_path / "runs" / "od"
    try:
        _wait_for_steps(run_dir, loop)
        with open_run(run_dir) as run:
            asked_after = int(run.steps().step.max())
        first = _profile(tmp_path, "--steps", "4")
        assert first.returncode == 0, first.stdout + first.stderr
        assert "asked run od (rank 0) to profile its next 4 steps" in first.stdout
        done = [line for line in first.stdout.splitlines() if line.startswith("rank 0: done, steps ")]
        assert len(done) == 1 and done[0].endswith(".pt.trace.json.gz"), first.stdout
        # a second request once the first is answered: its own window, after the first one's steps
        second = _profile(tmp_path, "--steps", "2", "--rank", "0")
        assert second.returncode == 0, second.stdout + second.stderr
    finally:
        (tmp_path / "stop").touch()
        out, err = loop.communicate(timeout=120)
    assert loop.returncode == 0, err
    with open_run(run_dir) as run:
        windows = run.windows()
        steps = run.steps()
        report = RunAnalysis(run).report().as_dict()
    assert [(w.trigger, w.last_step - w.first_step + 1, w.status) for w in windows] == [
        ("on demand", 4, "ok"), ("on demand", 2, "ok")]
    assert windows[0].first_step > asked_after and windows[1].first_step > windows[0].last_step
    assert all(w.path is not None and w.path.is_file() for w in windows)
    profiled = set(steps.step[(steps.flags & FLAG_PROFILED) != 0].tolist())
    for w in windows:  # its warm-up step and its recorded steps are left out of the run's figures
        assert set(range(w.first_step - 1, w.last_step + 1)) <= profiled
    assert [w["trigger"] for w in report["windows"]] == ["on demand", "on demand"]
    # the acknowledgements say the same
    (req1, req2) = requests.read_requests(run_dir)
    ack = requests.read_acks(run_dir, req1.id)[0]
    assert (ack.status, ack.first_step, ack.last_step) == ("done", windows[0].first_step, windows[0].last_step)
    # a finished run: nothing to ask
    after = _profile(tmp_path)
    assert after.returncode == 2 and after.stderr.count("\n") == 1 and "is not running (finished)" in after.stderr


def _finished_run(tmp_path: Path) -> Path:
    import gpulens

    with gpulens.track("od", runs_dir=str(tmp_path / "runs"), run_id="od", profile=False, quiet=True,
                       count_flops=False) as run:
        for _ in range(3):
            run.step()
    return tmp_path / "runs" / "od"


@pytest.mark.parametrize("args, message", [
    (["--steps", "0"], "--steps must be 1-50, not 0"),
    (["--steps", "51"], "--steps must be 1-50, not 51"),
    (["--timeout", "0"], "--timeout must be a positive number of seconds"),
])
def test_bad_requests_are_one_line_and_exit_2(tmp_path: Path, args: list[str], message: str) -> None:
    _finished_run(tmp_path)
    proc = _profile(tmp_path, *args)
    assert proc.returncode == 2 and proc.stderr.strip().endswith(message), proc.stderr
    assert proc.stderr.count("\n") == 1 and not (tmp_path / "runs" / "od" / "requests").exists()


def test_a_store_run_that_is_not_there_is_one_line(tmp_path: Path) -> None:
    store = tmp_path / "store"
    store.mkdir()
    proc = subprocess.run([GPULENS, "profile", f"file://{store}/od"], capture_output=True, text=True, timeout=60,
                          env={**_env(), "GPULENS_CACHE": str(tmp_path / "cache")})
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert proc.stderr.strip().endswith(f"file://{store}/od: no such run in the store"), proc.stderr
    assert not list(store.iterdir())


def test_the_asker_rides_through_a_store_that_fails_a_poll(tmp_path: Path, monkeypatch) -> None:
    """A store that fails one poll of the answers (a network blip) costs the asker that poll, not the wait."""
    from gpulens import profile_request

    class Blip(requests.LocalFolder):  # a store folder whose first listing fails, as S3 does on a reset socket
        failed = False

        def listing(self) -> dict[str, str]:
            if not Blip.failed:
                Blip.failed = True
                raise ConnectionError("connection reset by peer")
            return super().listing()

    monkeypatch.setattr(profile_request, "STORE_POLL_S", 0.01)
    box = Blip(tmp_path / "store-requests")
    asked = requests.new_request(2, (0,), False, "cli")
    requests.write_ack(box, _ack(asked.id, 0, "done", 4, 5, "traces/t.gz"))
    target = profile_request.Target(tmp_path, "job", (0,), False, 0.0, None, "s3://bucket/runs/job", box)
    out = io.StringIO()
    assert profile_request.wait(target, asked, timeout=60, out=out) == 0 and Blip.failed
    assert out.getvalue() == ("rank 0: done, steps 4-5: s3://bucket/runs/job/rank=0/traces/t.gz "
                              "(with the rank's next publish round)\n")


def test_the_relay_brings_requests_down_once_per_node_and_each_ranks_answers_up_on_change(tmp_path: Path) -> None:
    """Two ranks' publishers share a node's run folder: one lists the store per interval, each sends its own
    rank's answers when they change (a file:// store: the same fsspec calls as S3's, tested there end to end)."""
    from gpulens.profiler.store.remote import filesystem
    from gpulens.profiler.store.request_relay import RequestRelay

    fs, base = filesystem(f"file://{tmp_path / 'store'}")
    run_dir = tmp_path / "node0" / "job"
    run_dir.mkdir(parents=True)
    relays = [RequestRelay(fs, base, run_dir, run_dir / ".publish", every=5.0) for _ in range(2)]
    store = requests.store_folder(fs, base, "job")
    assert relays[0].tick("job", 0, now=100.0) == (0, 0)  # nothing asked yet (and no folder in the store)
    asked = requests.new_request(3, None, False, "cli")
    requests.write_request(store, asked)
    assert relays[1].tick("job", 1, now=102.0) == (0, 0)  # rank 0's relay listed 2 s ago: not this one's turn
    assert relays[1].tick("job", 1, now=105.5) == (1, 0)
    assert [r.id for r in requests.read_requests(run_dir)] == [asked.id]
    assert relays[0].tick("job", 0, now=111.0) == (0, 0)  # listed again: already here
    for rank in (0, 1):
        requests.write_ack(run_dir, _ack(asked.id, rank, "queued"))
    assert relays[0].tick("job", 0, now=111.5) == (0, 1) and relays[0].tick("job", 0, now=112.0) == (0, 0)
    assert set(requests.read_acks(store, asked.id)) == {0}
    assert relays[1].tick("job", 1, now=112.5) == (0, 1)
    time.sleep(0.01)  # a new mtime for the changed answer
    requests.write_ack(run_dir, _ack(asked.id, 0, "done", 10, 12, "traces/t.gz"))
    assert relays[0].tick("job", 0, now=113.0) == (0, 1)
    got = requests.read_acks(store, asked.id)
    assert (got[0].status, got[0].path, got[1].status) == ("done", "traces/t.gz", "queued")
    # another request file and foreign names in the store: only requests come down, and only once
    (Path(store.path) / "notes.txt").write_text("x")
    requests.write_request(store, requests.new_request(2, (1,), False, "cli"))
    assert relays[0].tick("job", 0, now=200.0) == (1, 0)
    assert not (run_dir / "requests" / "notes.txt").exists() and len(requests.read_requests(run_dir)) == 2


def test_checks_against_a_running_run(tmp_path: Path, monkeypatch) -> None:
    """The rank, the memory snapshot and a pending request are checked before anything is written: the run is
    made to look running by its own metadata (this process is its pid)."""
    from gpulens import profile_request
    from gpulens.profiler.errors import GpulensError

    run_dir = tmp_path / "runs" / "od"
    writer = RunWriter(run_dir / "rank-0.db", {"name": "od", "status": "running", "start": time.time() - 5,
                                               "host": socket.gethostname(), "pid": os.getpid(), "gpus": []})
    writer.sync()
    try:
        with pytest.raises(GpulensError, match=r"run od has no rank 3 \(its ranks: 0\)"):
            profile_request.check(run_dir, 5, "3", False)
        with pytest.raises(GpulensError, match="--rank must be a rank number or all, not 'x'"):
            profile_request.check(run_dir, 5, "x", False)
        with pytest.raises(GpulensError, match="--memory takes a CUDA allocator snapshot: run od recorded no GPU"):
            profile_request.check(run_dir, 5, "all", True)
        target = profile_request.check(run_dir, 5, "all", False)
        request = profile_request.ask(target, 5, False)
        with pytest.raises(GpulensError, match=f"request {request.id} .* is still being answered"):
            profile_request.check(run_dir, 5, "0", False)
        # answered: the next request may go
        requests.write_ack(run_dir, _ack(request.id, 0, "done", 10, 14, "traces/x"))
        assert profile_request.check(run_dir, 5, "0", False).ranks == (0,)
        # one nobody answered for a minute (a process without a watcher) blocks nothing
        stale = requests.new_request(3, None, False, "cli")
        requests.write_request(run_dir, stale)
        assert requests.unanswered(run_dir, [0], 0.0, now=stale.asked_at + 61) is None
    finally:
        writer.close(status="finished")


def _windows(tmp_path: Path, config: ProfileConfig) -> tuple[ProfilerWindows, RunWriter]:
    writer = RunWriter(tmp_path / "rank-0.db", {"name": "w", "status": "running", "start": time.time()})
    return ProfilerWindows(torch, tmp_path, 0, config, writer), writer


def _steps(windows: ProfilerWindows, steps: range, requests_at: dict[int, Demand]) -> list[int]:
    """Drive the windows through ``steps`` of a tiny real computation; a demand is queued before the step it is
    keyed by ends.  The steps that were profiled."""
    x = torch.randn(8, 8)
    profiled = []
    for step in steps:
        (x @ x).sum()
        if step in requests_at:
            windows.request(requests_at[step])
        if windows.on_step_end(step):
            profiled.append(step)
    return profiled


def test_a_demand_runs_at_the_next_boundary_and_a_scheduled_window_it_covers_is_skipped(tmp_path: Path) -> None:
    windows, writer = _windows(tmp_path, ProfileConfig(every=10, first=6, warmup=1, active=2, max_windows=3))
    profiled = _steps(windows, range(30), {3: Demand("d1", 4)})
    windows.close()
    writer.close(status="finished")
    with open_run(tmp_path) as run:
        got = [(w.index, w.first_step, w.last_step, w.trigger) for w in run.windows()]
    # asked during step 3: warm-up step 4, steps 5-8; the schedule's window at 6 fell inside it (skipped, not
    # shifted); its next ones start at 16 and 26
    assert got == [(0, 5, 8, "on demand"), (1, 17, 18, None), (2, 27, 28, None)]
    assert profiled == [4, 5, 6, 7, 8, 16, 17, 18, 26, 27, 28]
    state = windows.demands["d1"]
    assert (state.status, state.window, state.first_step, state.last_step) == ("done", 0, 5, 8)
    assert state.path == "traces/rank-0.window-0.steps-5-8.pt.trace.json.gz"


def test_a_demand_while_a_window_records_waits_for_it(tmp_path: Path) -> None:
    windows, writer = _windows(tmp_path, ProfileConfig(every=0))  # no schedule: windows on demand only
    _steps(windows, range(20), {2: Demand("a", 5), 4: Demand("b", 2)})
    windows.close()
    writer.close(status="finished")
    with open_run(tmp_path) as run:
        got = [(w.first_step, w.last_step) for w in run.windows()]
    assert got == [(4, 8), (10, 11)]  # b began when a's last step ended: warm-up 9, steps 10-11
    assert windows.demands["b"].status == "done"


def test_a_demand_the_run_ends_before_is_answered_as_failed(tmp_path: Path) -> None:
    windows, writer = _windows(tmp_path, ProfileConfig(every=0))
    _steps(windows, range(3), {})
    windows.request(Demand("late", 3))
    windows.close()
    writer.close(status="finished")
    assert windows.demands["late"].status == "failed"
    assert windows.demands["late"].reason == "the run ended before the next step"


def test_a_profiler_that_cannot_start_fails_the_demand_and_refuses_the_next(tmp_path: Path, monkeypatch) -> None:
    windows, writer = _windows(tmp_path, ProfileConfig(every=0))

    def broken(*args, **kwargs):
        raise RuntimeError("Kineto is not available")

    monkeypatch.setattr(windows, "_begin", broken)
    windows.request(Demand("first", 3))
    assert windows.on_step_end(0) is False  # the loop never sees it
    assert (windows.demands["first"].status, windows.demands["first"].reason) == (
        "failed", "the profiler failed (RuntimeError: Kineto is not available)")
    later = windows.request(Demand("second", 3))
    assert later.status == "refused" and "the profiler failed earlier in this run" in later.reason
    windows.close()
    writer.close(status="finished")


def test_the_watcher_takes_its_ranks_requests_once_and_answers(tmp_path: Path) -> None:
    windows, writer = _windows(tmp_path, ProfileConfig(every=0))
    stepping = [False]
    watcher = RequestWatcher(tmp_path, 0, lambda: windows, lambda: stepping[0], started=time.time() - 10)
    mine = requests.new_request(3, (0,), False, "cli")
    other = requests.new_request(3, (1,), False, "cli")
    old = requests.ProfileRequest("20200101-000000-abcdef", 3, None, False, time.time() - 3600, "cli")
    for r in (mine, other, old):
        requests.write_request(tmp_path, r)
    (tmp_path / "requests" / "profile-20200101-000000-000000.json").write_text("{not json")  # foreign: skipped
    watcher.poll()
    assert requests.read_acks(tmp_path, mine.id) == {}  # not stepping yet (a spawner's parent never does)
    stepping[0] = True
    watcher.poll()
    watcher.poll()
    assert requests.read_acks(tmp_path, mine.id)[0].status == "queued"
    assert requests.read_acks(tmp_path, other.id) == {} and requests.read_acks(tmp_path, old.id) == {}
    assert list(windows.demands) == [mine.id]
    _steps(windows, range(8), {})
    windows.close()
    watcher.closing = True
    watcher.poll()
    ack = requests.read_acks(tmp_path, mine.id)[0]
    assert (ack.status, ack.first_step, ack.last_step) == ("done", 2, 4) and ack.path.startswith("traces/")
    late = requests.new_request(2, None, False, "cli")
    requests.write_request(tmp_path, late)
    watcher.poll()
    assert requests.read_acks(tmp_path, late.id)[0].status == "refused"
    writer.close(status="finished")
    assert json.loads((tmp_path / "requests" / f"profile-{mine.id}.rank-0.json").read_text())["status"] == "done"


def test_runs_and_store_segments_from_before_the_trigger_column_still_read(tmp_path: Path) -> None:
    """A rank database without ``windows.trigger`` reads its windows as scheduled and publishes; a store's
    windows segment without the column decodes with a null trigger."""
    import io
    import sqlite3

    import pyarrow as pa
    import pyarrow.parquet as pq

    from gpulens.profiler.store import segments

    writer = RunWriter(tmp_path / "rank-0.db", {"name": "old", "status": "running", "start": 1.0})
    writer.window(0, 3, 5, 1.0, 2.0, None, "failed", "export failed: x")
    writer.close(status="finished", end=3.0)
    with sqlite3.connect(tmp_path / "rank-0.db") as conn:
        conn.execute("ALTER TABLE windows DROP COLUMN trigger")  # as an older gpulens wrote it
        rows = segments._snapshot_rows(conn, "windows", None)
    assert rows == [(0, 3, 5, 1.0, 2.0, None, "failed", "export failed: x", None)]
    with open_run(tmp_path) as run:
        (window,) = run.windows()
    assert (window.first_step, window.trigger) == (3, None)

    old = [(name, kind) for name, kind in segments._columns("windows") if name != "trigger"]
    table = pa.table({name: pa.array([value], type=pa.string() if kind == "string" else kind)
                      for (name, kind), value in zip(old + segments.IDENTITY,
                                                     [0, 3, 5, 1.0, 2.0, "traces/t.gz", "ok", None, "r", 0, 0])})
    table = table.replace_schema_metadata({segments.META_KEY: json.dumps({"table": "windows",
                                                                           "format": segments.FORMAT})})
    raw = io.BytesIO()
    pq.write_table(table, raw)
    decoded = segments.decode(raw.getvalue(), "windows")
    assert segments._rows_of(decoded.data, "windows", None) == [(0, 3, 5, 1.0, 2.0, "traces/t.gz", "ok", None, None)]


#: The same loop as one rank of a two-rank job (RANK / WORLD_SIZE from the environment, one run id): no process
#: group, so each rank's pace is its own -- the request's first step has to be shared through the request.
RANK_LOOP = LOOP.replace('run_id="od"', 'run_id="od2"').replace('"stop"', '"stop2"')


def test_the_aligned_step_is_ahead_of_where_the_ranks_are_now_not_where_their_rows_were() -> None:
    """Rows read from a store are a publish round old and reading them took a while (a DDP job asked through
    moto's S3 on a loaded host was read 54 s late: both ranks were ~430 steps past the aligned step).  The step
    is where each rank is now at its pace, plus the lead at the slowest pace."""
    import numpy as np

    from gpulens.profile_request import align_step
    from gpulens.profiler.store.reader import StepTable

    def table(rank: int, last: int, end: float, pace: float) -> StepTable:
        steps = np.arange(last - 29, last + 1)
        t_end = end - pace * (last - steps)
        return StepTable(rank, {"step": steps, "t_start": t_end - pace, "t_end": t_end,
                                "flags": np.zeros(30, dtype=np.int64)})

    fast, slow = table(0, 500, 1000.0, 0.01), table(1, 480, 1000.0, 0.02)
    assert align_step([fast, slow], 2.0, now=1000.0) == 501 + 100  # read as written: 2 s at the slow pace
    # 3 s later: rank 0 made ~300 steps since its last row, rank 1 ~150; the lead stays 100 slow steps
    assert align_step([fast, slow], 2.0, now=1003.0) == 801 + 100
    assert align_step([fast, slow], 2.0, now=990.0) == 501 + 100  # a clock behind the rows': never backwards
    assert align_step([StepTable(0, {"step": np.zeros(0), "t_start": np.zeros(0), "t_end": np.zeros(0),
                                     "flags": np.zeros(0)})]) is None


def test_every_rank_records_the_same_steps(tmp_path: Path, monkeypatch) -> None:
    from gpulens import profile_request

    monkeypatch.setattr(profile_request, "ALIGN_LEAD_S", 6.0)  # room for a loaded host's polls and flushes
    (tmp_path / "loop.py").write_text(RANK_LOOP)
    loops = [subprocess.Popen([sys.executable, str(tmp_path / "loop.py")], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True,
                              env={**_env(), "RANK": str(r), "LOCAL_RANK": str(r), "WORLD_SIZE": "2",
                                   "LOCAL_WORLD_SIZE": "2"}) for r in (0, 1)]
    run_dir = tmp_path / "runs" / "od2"
    try:
        for loop in loops:
            _wait_for_steps(run_dir, loop)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:  # both ranks' databases exist and have steps
            try:
                with open_run(run_dir) as run:
                    if run.ranks == [0, 1] and all(len(run.steps(r)) >= 3 for r in (0, 1)):
                        break
            except Exception:  # a rank's database caught between its creation and its header
                pass
            time.sleep(0.2)
        target = profile_request.check(run_dir, 3, "all", False)
        assert target.ranks == (0, 1) and target.at_step is not None
        request = profile_request.ask(target, 3, False)
        assert profile_request.wait(target, request, timeout=120, out=sys.stdout) == 0
    finally:
        (tmp_path / "stop2").touch()
        for loop in loops:
            loop.communicate(timeout=120)
    with open_run(run_dir) as run:
        got = {w.rank: (w.first_step, w.last_step, w.trigger) for w in run.windows()}
    at = target.at_step
    assert got == {0: (at, at + 2, "on demand"), 1: (at, at + 2, "on demand")}


def test_the_live_pages_button_asks_and_follows_the_answers(tmp_path: Path) -> None:
    """The live page's "Profile next steps" on a run recorded by this process (so it is running): it writes the
    request gpulens profile would, then reports each rank's answer; a dashboard serving other hosts without
    authentication, and a finished run, keep the button off."""
    from gpulens.dashboard import data, on_demand
    from gpulens.dashboard.app import create_app
    from gpulens.dashboard.pages import live
    from gpulens.dashboard.security import Access, allowed_hosts

    run_dir = tmp_path / "live-run"
    writer = RunWriter(run_dir / "rank-0.db", {"name": "live", "status": "running", "start": time.time() - 5,
                                               "host": socket.gethostname(), "pid": os.getpid(), "gpus": []})
    writer.sync()
    app = create_app(tmp_path)
    try:
        with app.server.app_context():
            text, request, off = live.profile_action(True, 3, None, "live-run")
            assert text == "asked: the next 3 steps on rank 0…" and request["ranks"] == [0] and not off
            (asked,) = requests.read_requests(run_dir)
            assert (asked.id, asked.steps, asked.source) == (request["id"], 3, "dashboard")
            assert live.profile_action(False, 3, request, "live-run") == ("rank 0: asked", live.no_update, False)
            requests.write_ack(run_dir, _ack(asked.id, 0, "done", 8, 10, "traces/t.gz"))
            text, after, off = live.profile_action(False, 3, request, "live-run")
            assert text == "rank 0: steps 8-10 recorded" and after["done"] and off  # answered: polling stops
            assert live.profile_action(False, 3, after, "live-run") == (live.no_update, live.no_update, True)
            assert live.profile_action(True, 0, after, "live-run")[0] == "--steps must be 1-50, not 0"
            assert live.profile_action(True, "3", after, "live-run")[0] == "steps must be a whole number 1-50"
        proxied = Access(allowed_hosts=allowed_hosts("127.0.0.1", ["gpulens.example.org"]))
        assert "serves other hosts without authentication" in on_demand.why_not(proxied, run_dir, "running")
        assert on_demand.why_not(Access(allowed_hosts=proxied.allowed_hosts, token="t" * 16), run_dir,
                                 "running") is None
        assert on_demand.why_not(None, run_dir, "finished") == "the run is finished"
    finally:
        writer.close(status="finished")
        data.reset()


def test_a_store_dashboards_button_asks_through_the_store(tmp_path: Path, monkeypatch) -> None:
    """`gpulens dashboard STORE` shows the mirror of a running job: the button writes the request into the store
    (where the job's publishers look) and reads the answers there; without the store's URL it stays off."""
    pytest.importorskip("pyarrow")
    from gpulens.dashboard import data, on_demand
    from gpulens.dashboard.app import create_app
    from gpulens.dashboard.pages import live
    from gpulens.profiler.store.mirror import sync_runs
    from gpulens.profiler.store.publisher import publish_run
    from gpulens.profiler.store.remote import filesystem

    monkeypatch.setenv("GPULENS_CACHE", str(tmp_path / "cache"))
    url = f"file://{tmp_path / 'store'}"
    run_dir = tmp_path / "trainer" / "stored-run"
    writer = RunWriter(run_dir / "rank-0.db", {"name": "stored", "status": "running", "start": time.time() - 5,
                                               "host": socket.gethostname(), "pid": os.getpid(), "gpus": []})
    writer.sync()
    try:
        publish_run(run_dir, url)
        mirror, _ = sync_runs(url)
        assert on_demand.why_not(None, mirror / "stored-run", "running").startswith("a run mirrored from a store")
        app = create_app(mirror, store=url)
        with app.server.app_context():
            text, request, off = live.profile_action(True, 2, None, "stored-run")
            assert text == "asked: the next 2 steps on rank 0…" and not off, text
            box = requests.store_folder(*filesystem(url), "stored-run")
            (asked,) = requests.read_requests(box)
            assert asked.id == request["id"] and asked.source == "dashboard"
            assert not (mirror / "stored-run" / "requests").exists() and not (run_dir / "requests").exists()
            requests.write_ack(box, _ack(asked.id, 0, "profiling", 4, 5))
            assert live.profile_action(False, 2, request, "stored-run")[0] == "rank 0: profiling steps 4-5"
            requests.write_ack(box, _ack(asked.id, 0, "done", 4, 5, "traces/t.gz"))
            text, after, off = live.profile_action(False, 2, request, "stored-run")
            assert text == "rank 0: steps 4-5 recorded" and after["done"] and off
        _, stats = sync_runs(url)  # the requests beside the run's data break nothing in the mirror
        assert not stats.broken
    finally:
        writer.close(status="finished")
        data.reset()


# ---------------------------------------------------------------- automatic capture

def _row(step: int, t: float, d: float, loss: float | None = 0.5, flags: int = 0) -> list:
    from gpulens.profiler.store.schema import STEP_COLUMNS

    row = dict.fromkeys(STEP_COLUMNS)
    row.update(step=step, t_start=t, t_end=t + d, data_wait=0.0, forward=0.0, backward=0.0, optimizer=0.0, other=d,
               loss=loss, flags=flags, samples=8)
    return [row[c] for c in STEP_COLUMNS]


def _feed(capture, steps: range, duration, t: float, clock: float, loss=lambda step: 0.5) -> tuple[float, float]:
    """Step rows with chosen times into an AutoCapture, its watcher polling once a second every 10 steps."""
    for step in steps:
        d = duration(step)
        capture.seen(_row(step, t, d, loss=loss(step), flags=1 if step < 2 else 0))
        t += d
        if step % 10 == 9:
            clock += 1.0
            capture.poll(clock)
    return t, clock


def test_a_lasting_slowdown_and_a_non_finite_loss_each_ask_for_one_window(tmp_path: Path) -> None:
    """Rows with chosen times: 10 ms steps, then 30 ms from step 150; a NaN loss at step 200."""
    from gpulens.hooks.track import auto_capture

    windows, writer = _windows(tmp_path, ProfileConfig(every=0))
    said: list[tuple[str, str]] = []
    capture = auto_capture.AutoCapture(lambda: windows, lambda kind, text: said.append((kind, text)))
    t, clock = _feed(capture, range(260), lambda step: 0.010 if step < 150 else 0.030, 1000.0, 0.0,
                     loss=lambda step: float("nan") if step == 200 else 0.5)
    queued = [(d.trigger, d.steps) for d in windows._queue]
    assert queued == [("slowdown at step 150", 3), ("non-finite loss at step 200", 3)]
    assert said[0] == ("auto_capture", "steps got 3.0x slower at step 150 (median 10.0 -> 30.0 ms, 30 steps so "
                                       "far): profiling the next steps")
    assert said[1][1] == "the loss was nan at step 200: profiling the next steps"
    # the same slowdown, seen again as the run goes on: no second window; a new one later: one more
    _feed(capture, range(260, 520), lambda step: 0.030 if step < 400 else 0.090, t, clock)
    assert [d.trigger for d in windows._queue][2:] == ["slowdown at step 400"]
    windows.close()
    writer.close(status="finished")


def test_what_is_found_during_a_what_if_stretch_is_captured_after_it(tmp_path: Path) -> None:
    """A window inside a measured what-if's stretch would take its steps from the what-if's measurement (a
    loaded host's slowdown did, in a test): the capture waits until the stretch is over."""
    from gpulens.hooks.track import auto_capture

    windows, writer = _windows(tmp_path, ProfileConfig(every=0))
    stretch = {"pending": True}
    capture = auto_capture.AutoCapture(lambda: windows, lambda kind, text: None, lambda: stretch["pending"])
    _, clock = _feed(capture, range(260), lambda step: 0.010 if step < 150 else 0.030, 1000.0, 0.0)
    assert not windows._queue  # found, not asked
    stretch["pending"] = False
    capture.poll(clock + 1.0)
    assert [(d.trigger, d.steps) for d in windows._queue] == [("slowdown at step 150", 3)]
    windows.close()
    writer.close(status="finished")


def test_the_slowdown_finding_links_the_window_captured_while_slow(tmp_path: Path) -> None:
    from gpulens.profiler.analysis.run_analysis import advise

    writer = RunWriter(tmp_path / "rank-0.db", {"name": "slow", "status": "running", "start": 1000.0})
    t = 1000.0
    for step in range(400):
        d = 0.008 if step < 200 else 0.030
        writer.step(tuple(_row(step, t, d)))
        if step == 225:
            t_window = t
        t += d
    writer.window(0, 226, 228, t_window, t_window + 0.1, None, "ok", None, "slowdown at step 200")
    writer.close(status="finished", end=t)
    with open_run(tmp_path) as run:
        s = next(s for s in advise(run).suggestions if s.id == "step_time_shift")
    assert "profiled while slow (window 0, steps 226-228, captured automatically)" in s.finding
    assert any(e.kind == "window" and e.data == {"rank": 0, "index": 0} for e in s.evidence)


#: A loop that slows down (2 ms sleeps, then 40 ms from step 200) under gpulens run, with no windows on a
#: schedule: the slow regime gets a window of its own.
SLOWING = textwrap.dedent("""
    import time, torch
    model = torch.nn.Linear(16, 16)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    for step in range(360):
        model(torch.randn(4, 16)).sum().backward()
        opt.step(); opt.zero_grad()
        time.sleep(0.002 if step < 200 else 0.040)
    print("done")
""")


def test_a_real_loop_that_slows_down_gets_a_window_of_the_slow_steps(tmp_path: Path) -> None:
    script = tmp_path / "slowing.py"
    script.write_text(SLOWING)
    proc = subprocess.run([GPULENS, "run", "--runs-dir", str(tmp_path / "runs"), "--run-id", "s", "--no-advise",
                           "--profile-every", "0", "--no-flops", "--", sys.executable, str(script)],
                          capture_output=True, text=True, timeout=180, env=_env())
    assert proc.returncode == 0 and proc.stdout.strip().endswith("done"), proc.stderr
    with open_run(tmp_path / "runs" / "s") as run:
        captured = [w for w in run.windows() if (w.trigger or "").startswith("slowdown at step")]
        events = [e.message for e in run.events() if e.kind == "auto_capture"]
    assert captured and events, (run.windows(), proc.stderr)
    at = int(captured[0].trigger.rsplit(" ", 1)[1])
    assert 150 <= at <= 260 and captured[0].first_step > at and captured[0].status == "ok"
    assert "slower at step" in proc.stderr  # the user is told, as for every gpulens message
