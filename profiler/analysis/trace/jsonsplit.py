"""Splitting a trace's JSON into pieces of whole events, so that no step holds the whole document.

A Kineto trace is one object whose ``traceEvents`` array holds nearly all its bytes (1 GB and more for an
LLM step).  :class:`EventSplitter` is fed the document in chunks and hands ``consume`` JSON arrays of
complete events, each a few MiB, plus the other top-level members (the metadata) at the end.

Two ways to find where an event ends, both exact in what they accept:

- the **fast cut**: the last ``}`` followed by ``,`` and ``{`` in the buffered text (how every writer
  separates events).  It can be wrong (the same bytes inside a string, or between objects nested in an
  event), but then the piece it makes is not a JSON array of whole objects and ``consume`` says so: a
  piece that decodes was cut at event boundaries, because the piece starts at one;
- the **exact scan** (numpy over the bytes: strings by their unescaped quotes, nesting by a running sum
  of brackets), used for the head before ``traceEvents``, the tail after it, and wherever a fast cut
  fails.  It costs about three decodes of the same bytes, so it only sees those parts.

Errors are :class:`JsonShapeError` with a message that fits on one line; the caller names the file.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import msgspec
import numpy as np

#: Most bytes of metadata (everything outside ``traceEvents``) kept for decoding: Kineto's is kilobytes.
MAX_META_BYTES = 64 << 20
#: Most bytes one event may span: beyond it the file is not a trace (and memory stays bounded).
MAX_EVENT_BYTES = 256 << 20

_QUOTE, _BACKSLASH = 0x22, 0x5C
_OPEN_OBJ, _CLOSE_OBJ, _OPEN_ARR, _CLOSE_ARR, _COMMA, _COLON = (ord(c) for c in "{}[],:")
_WS = frozenset(b" \t\r\n")
_STRUCTURAL = np.zeros(256, dtype=bool)
_STRUCTURAL[list(b"{}[],:")] = True
_DEPTH = np.zeros(256, dtype=np.int64)
_DEPTH[[_OPEN_OBJ, _OPEN_ARR]] = 1
_DEPTH[[_CLOSE_OBJ, _CLOSE_ARR]] = -1
_JSON_STARTS = frozenset(b'[{"-0123456789tfn')

_START, _TOP, _EVENTS, _DONE = range(4)


class JsonShapeError(ValueError):
    """The document is not JSON, is cut short, or is JSON of a shape that is not a trace."""


#: ``consume(piece, offset, exact)``: decode a JSON array of events (``offset``: where its first event
#: starts in the document, for messages); False if a fast (not ``exact``) piece is not valid, so the splitter
#: finds the exact boundary; an invalid exact piece raises.
Consumer = Callable[[bytes, int, bool], bool]


class EventSplitter:
    """Feed chunks in order, then :meth:`finish` for the metadata members (decoded)."""

    def __init__(self, consume: Consumer) -> None:
        self._consume = consume
        self._buf = bytearray()
        self._origin = 0  # absolute offset of _buf[0] in the document
        self._mode = _START
        # exact-scan state at absolute offset _scan
        self._scan = 0
        self._depth = 0
        self._in_string = False
        self._escaped = False
        # top level
        self._member_start = 0
        self._value_start = -1
        self._key: str | None = None
        self._meta: list[tuple[str, bytes]] = []
        self._meta_bytes = 0
        self._seen_events = False
        self._members = 0
        # traceEvents
        self._events_start = 0
        self._need_comma = False
        self._events_end = -1
        self._end = -1

    # ------------------------------------------------------------------ feeding
    def feed(self, chunk: bytes) -> None:
        if not chunk:
            return
        if self._mode == _DONE:
            if chunk.strip():
                raise JsonShapeError(f"not valid JSON (data after the end of the document: {chunk.strip()[:20]!r})")
            return
        self._buf += chunk
        if self._mode == _START:
            self._start()
        end = self._origin + len(self._buf)
        step = 64 << 10
        while self._mode == _TOP and self._scan < end:  # the head, in growing blocks: it ends where events begin
            self._exact(min(end, self._scan + step))
            step *= 2
        if self._mode == _EVENTS and not self._fast_cut():
            self._exact(end)
        self._compact()

    def finish(self) -> dict[str, Any]:
        """The decoded top-level members other than ``traceEvents``; raises if the document is incomplete."""
        if self._mode == _START:
            raise JsonShapeError("no JSON in the file")
        if self._mode == _EVENTS:
            while self._fast_cut():  # drain whole events cheaply, leave the tail to the exact scan
                pass
        self._exact(self._origin + len(self._buf))
        if self._mode != _DONE:
            where = "inside traceEvents" if self._mode == _EVENTS else "before the end of the top-level object"
            raise JsonShapeError(f"truncated JSON (the file ends {where})")
        rest = bytes(self._buf[self._end + 1 - self._origin:])
        if rest.strip():
            raise JsonShapeError(f"not valid JSON (data after the end of the document: {rest.strip()[:20]!r})")
        if not self._seen_events:
            raise JsonShapeError("not a PyTorch profiler trace (no traceEvents list)")
        meta: dict[str, Any] = {}
        for key, raw in self._meta:
            try:
                meta[key] = msgspec.json.decode(raw)
            except RecursionError:
                raise JsonShapeError("not a PyTorch profiler trace (JSON nested too deeply)") from None
            except msgspec.DecodeError as exc:
                raise JsonShapeError(f"not valid JSON (in the top-level member {key!r}: {exc})") from None
        return meta

    # ------------------------------------------------------------------ the document's first byte
    def _start(self) -> None:
        i = 0
        buf = self._buf
        if buf[:3] == b"\xef\xbb\xbf":  # a UTF-8 byte order mark
            i = 3
        while i < len(buf) and buf[i] in _WS:
            i += 1
        if i == len(buf):
            return  # only whitespace so far
        first = buf[i]
        if first != _OPEN_OBJ:
            if first in _JSON_STARTS:
                raise JsonShapeError("not a PyTorch profiler trace (no traceEvents list)")
            raise JsonShapeError(f"not valid JSON (it starts with {bytes(buf[i:i + 12])!r})")
        self._mode = _TOP
        self._depth = 1
        self._scan = self._origin + i + 1
        self._member_start = self._scan

    # ------------------------------------------------------------------ fast cut
    def _fast_cut(self) -> bool:
        """Hand over the events up to the last event boundary in the buffer; False if none was accepted."""
        buf = self._buf
        lo = self._events_start - self._origin
        cut = _last_boundary(buf, lo, len(buf))
        if cut < 0:
            return False
        if not self._emit(lo, cut + 1, exact=False):
            return False
        # state right after an event's closing brace: inside traceEvents, outside any string
        self._events_start = self._scan = self._origin + cut + 1
        self._depth, self._in_string, self._escaped = 2, False, False
        self._need_comma = True
        self._compact()
        return True

    def _emit(self, lo: int, hi: int, exact: bool, last: bool = False) -> bool:
        """Give buf[lo:hi] (relative offsets) to the consumer as an array; True when it was taken.

        ``last``: the piece ends where traceEvents does, so a comma must be followed by an event."""
        buf = self._buf
        i = _skip_ws(buf, lo, hi)
        if self._need_comma and i < hi:
            if buf[i] != _COMMA:
                if not exact:
                    return False  # the array may end here: the exact scan decides
                raise JsonShapeError(f"not valid JSON (no comma between events near byte {self._origin + i})")
            i = _skip_ws(buf, i + 1, hi)
            if i == hi and last:
                raise JsonShapeError(f"not valid JSON (a comma before the end of traceEvents near byte "
                                     f"{self._origin + i})")
        j = hi
        while j > i and buf[j - 1] in _WS:
            j -= 1
        if j == i:
            return True
        with memoryview(buf) as view:
            piece = b"".join((b"[", view[i:j], b"]"))  # one copy: fresh pages cost more than the bytes
        return self._consume(piece, self._origin + i, exact)

    # ------------------------------------------------------------------ exact scan
    def _exact(self, stop: int) -> None:
        """Scan [_scan, stop) exactly, acting on top-level members and the traceEvents array."""
        lo = self._scan - self._origin
        hi = stop - self._origin
        if hi <= lo or self._mode == _START:
            return
        data = memoryview(self._buf)[lo:hi]
        b = np.frombuffer(data, dtype=np.uint8)
        quotes = _unescaped_quotes(b, data, self._escaped)
        pos = np.flatnonzero(_STRUCTURAL[b])
        outside = ((np.searchsorted(quotes, pos) + int(self._in_string)) & 1) == 0
        pos = pos[outside]
        chars = b[pos]
        post = self._depth + np.cumsum(_DEPTH[chars])
        pre = post - _DEPTH[chars]
        if post.size and post.min() < 0:
            raise JsonShapeError(f"not valid JSON (a closing bracket without an opening one near byte "
                                 f"{self._scan + int(pos[int(np.argmax(post < 0))])})")
        in_string_end = bool((int(self._in_string) + quotes.size) & 1)
        self._escaped = in_string_end and _trailing_backslashes(data, self._escaped) % 2 == 1
        self._in_string = in_string_end
        self._depth = int(post[-1]) if post.size else self._depth
        del data, b  # the buffer may be resized below (compaction)
        top = np.flatnonzero(np.minimum(pre, post) <= 1)
        closes = pos[(post == 2) & (chars == _CLOSE_OBJ)]  # ends of depth-2 objects: events in traceEvents
        base = self._scan
        done_at = base + hi - lo
        for j in top.tolist():
            at = base + int(pos[j])
            self._top_level(at, int(chars[j]), int(pre[j]), int(post[j]))
        self._scan = done_at
        if self._mode == _EVENTS and closes.size:
            last = base + int(closes[-1])
            if last >= self._events_start:
                self._emit(self._events_start - self._origin, last + 1 - self._origin, exact=True)
                self._events_start = last + 1
                self._need_comma = True
        self._check_sizes()

    def _top_level(self, at: int, char: int, pre: int, post: int) -> None:
        """Act on a bracket, comma or colon at nesting depth 0 or 1 (``pre``/``post``: depth before and after)."""
        mode = self._mode
        if mode == _DONE:
            raise JsonShapeError(f"not valid JSON (data after the end of the document at byte {at})")
        if mode == _EVENTS:
            if char == _CLOSE_ARR and pre == 2 and post == 1:
                self._emit(self._events_start - self._origin, at - self._origin, exact=True, last=True)
                self._events_start = self._member_start = self._events_end = at  # what follows is metadata
                self._mode = _TOP
                return
            raise JsonShapeError(f"not valid JSON (a mismatched bracket near byte {at})")
        # the top-level object
        if char == _COLON and pre == 1:
            raw = bytes(self._buf[self._member_start - self._origin:at - self._origin]).strip()
            try:
                self._key = msgspec.json.decode(raw, type=str)
            except msgspec.MsgspecError:
                raise JsonShapeError(f"not valid JSON (a top-level key that is not a string near byte "
                                     f"{self._member_start})") from None
            self._value_start = at + 1
        elif char == _OPEN_ARR and pre == 1 and self._key == "traceEvents":
            if self._seen_events:
                raise JsonShapeError("not a PyTorch profiler trace (two traceEvents lists)")
            self._seen_events = True
            self._mode = _EVENTS
            self._events_start = at + 1
            self._need_comma = False
        elif (char == _COMMA and pre == 1) or (char == _CLOSE_OBJ and pre == 1 and post == 0):
            self._end_member(at, closing=char == _CLOSE_OBJ)
            if char == _COMMA:
                self._member_start = at + 1
            else:
                self._mode = _DONE
                self._end = at
        elif post == 0:
            raise JsonShapeError(f"not valid JSON (a mismatched bracket near byte {at})")

    def _end_member(self, at: int, closing: bool) -> None:
        key = self._key
        if key is None:
            raw = bytes(self._buf[self._member_start - self._origin:at - self._origin]).strip()
            if raw or not closing or self._members:  # "{}" is an empty object; "{,", "{1}", '{"a":1,}' are not
                raise JsonShapeError(f"not valid JSON (a top-level member without a key near byte "
                                     f"{self._member_start})")
            return
        self._members += 1
        if key == "traceEvents":
            if not self._seen_events:
                raise JsonShapeError("not a PyTorch profiler trace (traceEvents is not a list)")
            if bytes(self._buf[self._events_end + 1 - self._origin:at - self._origin]).strip():
                raise JsonShapeError(f"not valid JSON (data after traceEvents near byte {self._events_end + 1})")
        else:
            raw = bytes(self._buf[self._value_start - self._origin:at - self._origin])
            self._meta.append((key, raw))
            self._meta_bytes += len(raw)
        self._key = None
        self._value_start = -1

    # ------------------------------------------------------------------ memory
    def _compact(self) -> None:
        if self._mode == _EVENTS:
            keep = self._events_start
        elif self._mode == _TOP:
            keep = self._member_start
        elif self._mode == _DONE:
            keep = self._end
        else:
            return
        drop = min(keep, self._scan) - self._origin
        if drop > 1 << 20:
            del self._buf[:drop]
            self._origin += drop

    def _check_sizes(self) -> None:
        if self._mode == _EVENTS and self._origin + len(self._buf) - self._events_start > MAX_EVENT_BYTES:
            raise JsonShapeError(f"not a PyTorch profiler trace (an event longer than {MAX_EVENT_BYTES >> 20} MiB)")
        pending = self._origin + len(self._buf) - self._member_start if self._mode == _TOP else 0
        if self._meta_bytes + pending > MAX_META_BYTES:
            raise JsonShapeError(f"not a PyTorch profiler trace (more than {MAX_META_BYTES >> 20} MiB outside "
                                 f"traceEvents)")


def _skip_ws(buf: bytearray, i: int, hi: int) -> int:
    while i < hi and buf[i] in _WS:
        i += 1
    return i


def _last_boundary(buf: bytearray, lo: int, hi: int, tries: int = 256) -> int:
    """Offset of the ``}`` before the last ``}`` , ``{`` in buf[lo:hi], or -1 (none, or too far back)."""
    pos = hi
    for _ in range(tries):
        j = buf.rfind(b"{", lo, pos)
        if j < 0:
            return -1
        k = j - 1
        while k >= lo and buf[k] in _WS:
            k -= 1
        if k >= lo and buf[k] == _COMMA:
            k -= 1
            while k >= lo and buf[k] in _WS:
                k -= 1
            if k >= lo and buf[k] == _CLOSE_OBJ:
                return k
        pos = j
    return -1


def _unescaped_quotes(b: np.ndarray, data: memoryview, escaped_first: bool) -> np.ndarray:
    """Offsets of the quotes that open or close strings (not ``\\"`` inside one)."""
    quotes = np.flatnonzero(b == _QUOTE)
    if not quotes.size or not (escaped_first or (b == _BACKSLASH).any()):
        return quotes
    after = quotes[quotes > 0]
    candidates = after[b[after - 1] == _BACKSLASH].tolist()
    escaped = [0] if escaped_first and b[0] == _QUOTE else []
    for q in candidates:
        run, i = 0, q - 1
        while i >= 0 and data[i] == _BACKSLASH:
            run, i = run + 1, i - 1
        if i < 0 and escaped_first:
            run += 1
        if run % 2:
            escaped.append(q)
    return quotes[~np.isin(quotes, escaped)] if escaped else quotes


def _trailing_backslashes(data: memoryview, escaped_first: bool) -> int:
    run, i = 0, len(data) - 1
    while i >= 0 and data[i] == _BACKSLASH:
        run, i = run + 1, i - 1
    return run + (1 if i < 0 and escaped_first else 0)
