"""A stand-in training process for the live-page browser test: writes a run at 10 Hz until told to stop.

Run as ``python live_writer.py RUN_DIR SECONDS``.  host.cpu follows a saw
tooth and every 0.2 s a step is recorded, through the real writer (0.3 s
flushes, like a recorded run), so the dashboard reads it exactly as it would
read a training job.
"""
from __future__ import annotations

import os
import socket
import sys
import time
from pathlib import Path

import psutil

from gpulens.profiler.store.schema import STEP_COLUMNS
from gpulens.profiler.store.writer import RunWriter


def main() -> None:
    run_dir, seconds = Path(sys.argv[1]), float(sys.argv[2])
    start = time.time()
    w = RunWriter(run_dir / "rank-0.db", {"name": "live-writer", "status": "running", "start": start,
                                          "host": socket.gethostname(), "pid": os.getpid(),
                                          "pid_create_time": psutil.Process().create_time()}, flush_interval=0.3)
    cpu = w.series("host.cpu", -1, "%")
    step = 0
    t_step = start
    print("ready", flush=True)
    while (now := time.time()) - start < seconds:
        w.point(cpu, now, (now - start) * 10 % 100)
        if now - t_step >= 0.2:
            row = dict.fromkeys(STEP_COLUMNS)
            row.update(step=step, t_start=t_step, t_end=now, data_wait=0.05, forward=0.05, backward=0.08,
                       optimizer=0.01, other=max(now - t_step - 0.19, 0.0), samples=8, flags=0)
            w.step(tuple(row[c] for c in STEP_COLUMNS))
            step += 1
            t_step = now
        time.sleep(0.1)
    w.close(status="finished", end=time.time())


if __name__ == "__main__":
    main()
