"""A reader follows a run while another process writes it at 100 Hz."""
from __future__ import annotations

import subprocess
import sys
import textwrap
import time

import numpy as np

from gpulens.profiler import RunError, open_run

WRITER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from gpulens.profiler.store.writer import RunWriter
    w = RunWriter(Path(sys.argv[1]) / "rank-0.db", {"name": "live", "status": "running", "start": time.time()},
                  flush_interval=0.1)
    sid = w.series("host.cpu", -1, "%")
    print("ready", flush=True)
    end = time.time() + float(sys.argv[2])
    i = 0
    while time.time() < end:
        t = time.time()
        w.point(sid, t, float(i % 100))
        w.step((i, t - 0.01, t, 0.0, 0.0, 0.0, 0.0, 0.01, 1, None, None, None, None, None, None, None,
                None, None, None, None, 0, None))
        i += 1
        time.sleep(0.01)
    w.close(status="finished", end=time.time())
    print(i, flush=True)
""")


def test_reader_sees_monotonic_growth_and_no_lock_errors(tmp_path):
    run_dir = tmp_path / "live"
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(run_dir), "3"], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready"
    counts, step_counts, last_t = [], [], []
    errors = []
    deadline = time.time() + 2.8
    while time.time() < deadline:
        try:
            with open_run(run_dir) as run:
                assert run.info.status == "running"
                s = run.series("host.cpu")  # None until the first flush declares it
                counts.append(len(s) if s is not None else 0)
                step_counts.append(len(run.steps()))
                if s is not None and len(s):
                    assert np.all(np.diff(s.t) > 0)
                    last_t.append(s.t[-1])
        except RunError as exc:
            errors.append(str(exc))
        time.sleep(0.05)
    written = int(proc.stdout.readline())
    assert proc.wait(timeout=10) == 0
    assert not errors, errors[:3]
    assert len(counts) > 20
    assert counts == sorted(counts) and step_counts == sorted(step_counts)
    assert counts[-1] > counts[0] and last_t == sorted(last_t)
    with open_run(run_dir) as run:
        assert run.info.status == "finished"
        assert len(run.series("host.cpu")) == written == len(run.steps())


def test_one_reader_refreshes_a_live_run(tmp_path):
    run_dir = tmp_path / "live2"
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(run_dir), "1.5"], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready"
    time.sleep(0.3)
    with open_run(run_dir) as run:  # one connection kept open across the writer's whole life
        seen = []
        while proc.poll() is None:
            s = run.series("host.cpu")
            seen.append(len(s) if s is not None else 0)
            time.sleep(0.1)
        proc.wait()
        final = len(run.series("host.cpu"))
        assert run.refresh().status == "finished"
    assert seen == sorted(seen) and final >= seen[-1] > 0
