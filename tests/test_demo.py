"""``gpulens demo``: a busy port fails before anything starts; the end of training is said, and reaped."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil

GPULENS = str(Path(sys.executable).with_name("gpulens"))


def _env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GPULENS_")}
    env["TMPDIR"] = str(tmp_path)  # where the demo's temporary runs folder goes
    return env


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_busy_port_fails_in_one_line_and_leaves_no_folder(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = subprocess.run([GPULENS, "demo", "--port", str(port), "--seconds", "5"], capture_output=True,
                              text=True, timeout=120, env=_env(tmp_path))
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().count("\n") == 0 and f"cannot listen on 127.0.0.1:{port}" in proc.stderr
    assert not list(tmp_path.glob("gpulens-demo-*"))  # no trainer ran, no folder left


def test_the_demo_says_training_ended_and_leaves_no_defunct_trainer(tmp_path):
    proc = subprocess.Popen([GPULENS, "demo", "--port", str(_free_port()), "--seconds", "3"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=_env(tmp_path))
    try:
        lines = []
        deadline = time.monotonic() + 600  # the demo waits while a busy host imports torch (it says so)
        while time.monotonic() < deadline:
            line = proc.stderr.readline()
            lines.append(line)
            if "training ended" in line or not line:
                break
        assert "training ended after 3 s" in lines[-1], lines
        time.sleep(0.5)
        children = psutil.Process(proc.pid).children(recursive=True)
        assert not [c for c in children if c.status() == psutil.STATUS_ZOMBIE]
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=120) == 130  # as every command after Ctrl-C (generous: a busy host is slow)
        (folder,) = tmp_path.glob("gpulens-demo-*")
        assert list(folder.glob("demo-*/rank-0.db"))  # the demo's run is kept, as the first line said
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
