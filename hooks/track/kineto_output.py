"""Keep Kineto's log lines from our profiler windows out of the user's terminal.

torch.profiler's C++ half (Kineto) writes straight to file descriptor 2:
``USDT:… SyncActivityProfilerHandler.cpp:52] profiler_start`` at every start
and stop, and ``ERROR:… gpuGetDeviceCount failed`` where torch has no GPU to
talk to.  ``KINETO_LOG_LEVEL`` is read once per process, so setting it for
our windows would also silence the user's own profiler.  Instead, while our
window starts and stops, fd 2 points at a temporary file; afterwards every
line that is not Kineto's goes to the real stderr unchanged (other threads'
output is delayed by milliseconds, never lost), Kineto's warnings and errors
are handed to the caller (recorded as run events), and its progress lines
are dropped.
"""
from __future__ import annotations

import contextlib
import os
import re
import sys
import tempfile
from collections.abc import Callable, Iterator

#: ``LEVEL:YYYY-MM-DD HH:MM:SS pid:tid File.cpp:line] message`` -- glog-style lines of libkineto.
_KINETO = re.compile(rb"^(USDT|STAGE|VERBOSE|INFO|WARNING|ERROR):\d{4}-\d\d-\d\d \d\d:\d\d:\d\d \d+:\d+ "
                     rb"[\w./-]+\.(?:cpp|cc|h):\d+\] ?(.*)$")
#: Reported by Kineto on every machine where torch finds no GPU: not news to anyone.
_EXPECTED = (b"gpuGetDeviceCount failed",)


def split_kineto(data: bytes) -> tuple[bytes, list[str]]:
    """(what is not Kineto's, Kineto's warnings and errors) of captured stderr output."""
    kept: list[bytes] = []
    problems: list[str] = []
    for line in data.splitlines(keepends=True):
        match = _KINETO.match(line.rstrip(b"\r\n"))
        if match is None:
            kept.append(line)
        elif match.group(1) in (b"WARNING", b"ERROR") and not any(e in line for e in _EXPECTED):
            problems.append(f"{match.group(1).decode()}: {match.group(2).decode('utf-8', 'replace').strip()}")
    return b"".join(kept), problems


@contextlib.contextmanager
def kineto_quiet(report: Callable[[str], None] | None = None) -> Iterator[None]:
    """Run the block with Kineto's lines on fd 2 filtered out (see the module docstring)."""
    try:
        sys.stderr.flush()
    except Exception:
        pass
    try:
        saved = os.dup(2)
        capture = tempfile.TemporaryFile()
        os.dup2(capture.fileno(), 2)
    except OSError:  # no fd 2, or no temporary directory: leave the output as it is
        yield
        return
    try:
        yield
    finally:
        try:
            sys.stderr.flush()
        except Exception:
            pass
        os.dup2(saved, 2)
        os.close(saved)
        try:
            capture.seek(0)
            kept, problems = split_kineto(capture.read())
        finally:
            capture.close()
        if kept:
            _write_all(2, kept)
        if report is not None:
            for problem in problems:
                report(problem)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        try:
            written = os.write(fd, view)
        except OSError:
            return
        view = view[written:]
