"""A trace file's JSON as a stream of chunks, plain or gzipped, within the sizes a trace can have.

Reading in chunks is what lets a 1 GB trace parse in a fraction of its size (the splitter and the column
builder hold pieces, never the document).  A gzip file is inflated one bounded piece at a time, so a small
file that expands to gigabytes (a bomb) is refused before it is held.
"""
from __future__ import annotations

import os
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from gpulens.profiler.errors import RunError


class TraceError(RunError):
    """A trace file that cannot be analysed; the message is one line."""


#: Environment variable raising the cap on a trace's decompressed size (bytes).
ENV_MAX_TRACE = "GPULENS_MAX_TRACE_BYTES"
#: Real Kineto JSON compresses 10-20x; a "trace" that inflates more than this is a gzip bomb, not a trace.
MAX_RATIO = 100
#: Bytes of JSON handed on at a time: large enough that per-piece costs vanish, small enough to hold many.
CHUNK = 4 << 20
_READ = 1 << 20


def max_trace_bytes() -> int:
    """Most bytes of JSON a trace may decompress to (4 GiB, or ``$GPULENS_MAX_TRACE_BYTES``)."""
    try:
        return max(1, int(os.environ.get(ENV_MAX_TRACE, "")))
    except ValueError:
        return 4 << 30


def json_chunks(p: Path, chunk: int | None = None) -> Iterator[bytes]:
    """The decompressed bytes of ``p`` in order, at most ``chunk`` (default :data:`CHUNK`) at a time."""
    chunk = chunk or CHUNK
    try:
        f = open(p, "rb")  # noqa: SIM115 - closed below, around the generator's whole life
    except OSError as exc:
        raise TraceError(p, f"cannot read: {exc.strerror or exc}") from None
    with f:
        try:
            size = os.fstat(f.fileno()).st_size
            head = f.read(2)
        except OSError as exc:
            raise TraceError(p, f"cannot read: {exc.strerror or exc}") from None
        if not head:
            raise TraceError(p, "empty file, not a trace")
        f.seek(0)
        if head == b"\x1f\x8b":
            yield from _gunzip(p, f, size, chunk)
            return
        if size > max_trace_bytes():
            raise TraceError(p, f"{size / 2**20:.0f} MiB of JSON: more than the {max_trace_bytes() / 2**20:.0f} MiB "
                                f"a trace may hold here (set {ENV_MAX_TRACE} to raise it)")
        while True:
            try:
                data = f.read(chunk)
            except OSError as exc:
                raise TraceError(p, f"cannot read: {exc.strerror or exc}") from None
            if not data:
                return
            yield data


def _gunzip(p: Path, f: BinaryIO, compressed: int, chunk: int) -> Iterator[bytes]:
    """Inflate member after member (concatenated gzip members are one valid file), refusing a bomb."""
    read = f.read
    limit = min(max_trace_bytes(), max(64 << 20, MAX_RATIO * compressed))
    total = 0
    inflater = zlib.decompressobj(wbits=31)
    data = b""
    try:
        while True:
            if not data:
                data = read(_READ)
                if not data:
                    # zlib may still hold output that did not fit the last call's cap
                    while not inflater.eof and (out := inflater.decompress(b"", chunk)):
                        total = _counted(p, total + len(out), limit, compressed)
                        yield out
                    if not inflater.eof:
                        raise TraceError(p, "truncated gzip file (it ends before the end of the compressed data)")
                    return
                if inflater.eof:  # another member follows
                    inflater = zlib.decompressobj(wbits=31)
            out = inflater.decompress(data, chunk)
            total = _counted(p, total + len(out), limit, compressed)
            if out:
                yield out
            if inflater.eof:
                data = inflater.unused_data
                if data:
                    inflater = zlib.decompressobj(wbits=31)
            else:
                data = inflater.unconsumed_tail
    except zlib.error as exc:
        raise TraceError(p, f"corrupt gzip file ({exc})") from None
    except OSError as exc:
        raise TraceError(p, f"cannot read: {exc.strerror or exc}") from None


def _counted(p: Path, total: int, limit: int, compressed: int) -> int:
    if total > limit:
        raise TraceError(p, f"decompresses to more than {limit / 2**20:.0f} MiB "
                            f"({compressed / 2**20:.1f} MiB compressed): not a profiler trace, or "
                            f"a larger one than allowed (set {ENV_MAX_TRACE})")
    return total
