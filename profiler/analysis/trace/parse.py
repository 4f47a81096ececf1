"""Reading a PyTorch profiler chrome trace (plain or gzipped JSON) into a :class:`Trace`.

Decoding is typed (msgspec): only the fields gpulens reads are materialised,
as small structs instead of dicts, and input shapes stay raw JSON until an
analyzer asks for them.  That is what makes large traces cheap (see
bench/trace_analysis.py).  Anything that is not a readable PyTorch profiler
trace raises :class:`TraceError` with a one-line reason naming the file.
"""
from __future__ import annotations

import json
import os
import re
import zlib
from operator import attrgetter
from pathlib import Path
from typing import Any

import msgspec
import numpy as np

from gpulens.profiler.analysis.trace.model import CATEGORY_NAMES, Cat, Trace
from gpulens.profiler.analysis.trace.patterns import SHAPE_OPS
from gpulens.profiler.errors import RunError


class TraceError(RunError):
    """A trace file that cannot be analysed; the message is one line."""


class _Args(msgspec.Struct, rename={"ext": "External id", "ext_lower": "external id", "bps": "blocks per SM",
                                    "occ": "est. achieved occupancy %", "dims": "Input Dims",
                                    "dims_lower": "Input dims", "types": "Input type"}):
    """The arguments gpulens reads, typed; any other key is skipped while decoding.

    A trace whose values have other types (a string correlation id, say)
    fails validation and goes through the generic parser instead.
    """

    correlation: int = -1
    ext: int = -1
    ext_lower: int = -1
    stream: int | str = -1
    device: int = -1
    bps: float = float("nan")
    occ: float = float("nan")
    bytes: float = float("nan")
    dims: msgspec.Raw = msgspec.Raw()  # decoded only for the few ops that need shapes
    dims_lower: msgspec.Raw = msgspec.Raw()
    types: msgspec.Raw = msgspec.Raw()


class _Event(msgspec.Struct):
    ph: Any = None
    cat: Any = None
    name: Any = ""
    pid: int | str = -1
    tid: int | str = -1
    ts: float | None = None
    dur: float | None = None
    args: _Args | None = None


class _Doc(msgspec.Struct):
    traceEvents: list[_Event]
    schemaVersion: Any = None
    deviceProperties: Any = None
    distributedInfo: Any = None
    displayTimeUnit: Any = None
    baseTimeNanoseconds: Any = None


_DECODER = msgspec.json.Decoder(_Doc)
_META_KEYS = ("schemaVersion", "deviceProperties", "distributedInfo", "displayTimeUnit", "baseTimeNanoseconds")
_PYTORCH_CATS = {"cpu_op", "operator", "user_annotation", "cuda_runtime", "runtime", "kernel",
                 "python_function", "gpu_memcpy", "gpu_memset", "cuda_driver", "gpu_user_annotation"}
_DIGITS = re.compile(r"(\d+)\s*$")


def _read_bytes(p: Path) -> bytes:
    try:
        raw = p.read_bytes()
    except OSError as exc:
        raise TraceError(p, f"cannot read: {exc.strerror or exc}") from None
    if not raw:
        raise TraceError(p, "empty file, not a trace")
    if raw[:2] == b"\x1f\x8b":
        raw = _gunzip(p, raw)
    elif len(raw) > max_trace_bytes():
        raise TraceError(p, f"{len(raw) / 2**20:.0f} MiB of JSON: more than the {max_trace_bytes() / 2**20:.0f} MiB "
                            f"a trace may hold here (set {ENV_MAX_TRACE} to raise it)")
    return raw


#: Environment variable raising the cap on a trace's decompressed size (bytes).
ENV_MAX_TRACE = "GPULENS_MAX_TRACE_BYTES"
#: Real Kineto JSON compresses 10-20x; a "trace" that inflates more than this is a gzip bomb, not a trace.
MAX_RATIO = 100


def max_trace_bytes() -> int:
    """Most bytes of JSON a trace may decompress to (4 GiB, or ``$GPULENS_MAX_TRACE_BYTES``)."""
    try:
        return max(1, int(os.environ.get(ENV_MAX_TRACE, "")))
    except ValueError:
        return 4 << 30


def _gunzip(p: Path, raw: bytes) -> bytes:
    """Decompress in bounded pieces: a small file cannot make us hold gigabytes."""
    limit = min(max_trace_bytes(), max(64 << 20, MAX_RATIO * len(raw)))
    out = bytearray()
    data = raw
    try:
        while data:
            inflater = zlib.decompressobj(wbits=31)  # one gzip member at a time (concatenated members are valid)
            while data:
                out += inflater.decompress(data, 1 << 20)
                if len(out) > limit:
                    raise TraceError(p, f"decompresses to more than {limit / 2**20:.0f} MiB "
                                        f"({len(raw) / 2**20:.1f} MiB compressed): not a profiler trace, or "
                                        f"a larger one than allowed (set {ENV_MAX_TRACE})")
                data = inflater.unconsumed_tail
            if not inflater.eof:
                raise TraceError(p, "truncated gzip file (it ends before the end of the compressed data)")
            data = inflater.unused_data
    except zlib.error as exc:
        raise TraceError(p, f"corrupt gzip file ({exc})") from None
    return bytes(out)


def _json_error(p: Path, raw: bytes, exc: Exception) -> TraceError:
    stripped = raw.rstrip()
    truncated = stripped[:1] in (b"{", b"[") and stripped[-1:] not in (b"}", b"]")
    detail = str(exc).splitlines()[0][:120]
    return TraceError(p, f"{'truncated JSON' if truncated else 'not valid JSON'} ({detail})")


def _decode(p: Path, raw: bytes) -> tuple[dict[str, Any], list[Any]]:
    """(metadata, events); events are typed structs, or dicts for unusual traces."""
    try:
        doc = _DECODER.decode(raw)
        return {k: getattr(doc, k) for k in _META_KEYS if getattr(doc, k) is not None}, doc.traceEvents
    except msgspec.ValidationError:
        pass  # valid JSON of another shape: decide below with the generic parser
    except RecursionError:
        raise TraceError(p, "not a PyTorch profiler trace (JSON nested too deeply)") from None
    except msgspec.DecodeError as exc:
        if b"N/A" in raw:  # old Kineto wrote bare N/A values
            raw = re.sub(rb'(?<!")N/A(?!")', b'"N/A"', raw)
            return _decode(p, raw)
        raise _json_error(p, raw, exc) from None
    try:
        data = json.loads(raw)
    except RecursionError:
        raise TraceError(p, "not a PyTorch profiler trace (JSON nested too deeply)") from None
    except ValueError as exc:
        raise _json_error(p, raw, exc) from None
    if not isinstance(data, dict) or not isinstance(data.get("traceEvents"), list):
        raise TraceError(p, "not a PyTorch profiler trace (no traceEvents list)")
    return {k: v for k, v in data.items() if k != "traceEvents"}, data["traceEvents"]


def _cat_of(e: Any) -> Any:
    return e.get("cat") if isinstance(e, dict) else getattr(e, "cat", None)


def _is_pytorch(meta: dict[str, Any], events: list[Any]) -> bool:
    if any(k in meta for k in ("schemaVersion", "deviceProperties", "distributedInfo")):
        return True
    return any(str(_cat_of(e) or "").lower() in _PYTORCH_CATS for e in events[:5000])


def load_trace(path: str | Path, rank: int | None = None) -> Trace:
    p = Path(path)
    meta, events = _decode(p, _read_bytes(p))
    if not events:
        raise TraceError(p, "empty trace (no events)")
    if not _is_pytorch(meta, events):
        raise TraceError(p, "not a PyTorch profiler trace (no PyTorch event categories or metadata)")
    if not isinstance(meta.get("distributedInfo") or {}, dict):
        raise TraceError(p, "distributedInfo is not an object, as the PyTorch profiler writes it")
    props = meta.get("deviceProperties") or []
    if not isinstance(props, list) or not all(isinstance(d, dict) for d in props):
        raise TraceError(p, "deviceProperties is not a list of objects, as the PyTorch profiler writes it")
    if not isinstance(events[0], _Event):  # came through the generic parser
        events = [_as_event(e) for e in events if isinstance(e, dict)]
    trace = parse_events(events, meta, str(p), rank)
    if len(trace) == 0:
        raise TraceError(p, "empty trace (no complete events)")
    reach = float(np.nanmax(np.abs(trace.end))) + abs(trace.epoch_offset_us)
    if not reach < MAX_TIME_US:
        raise TraceError(p, f"timestamps out of range ({reach:.3g} us; a trace spans years since 1970 at most)")
    return trace


def _as_event(e: dict[str, Any]) -> _Event:
    """A generic-parser dict as a typed event (the slow path for unusual traces)."""
    nan = float("nan")

    def num(v: Any, default: float = nan) -> float:
        return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else default

    def whole(v: Any) -> int:
        cache: dict[Any, int] = {}
        return _int_or(v, cache)

    def ident(v: Any) -> int | str:
        return v if isinstance(v, (int, str)) and not isinstance(v, bool) else -1

    a = e.get("args")
    args = None
    if isinstance(a, dict):
        def raw(key: str) -> msgspec.Raw:
            return msgspec.Raw(json.dumps(a[key]).encode()) if key in a else msgspec.Raw()

        ext = a.get("External id", a.get("external id", -1))
        args = _Args(correlation=whole(a.get("correlation", -1)), ext=whole(ext), ext_lower=-1,
                     stream=ident(a.get("stream", -1)), device=whole(a.get("device", -1)),
                     bps=num(a.get("blocks per SM")), occ=num(a.get("est. achieved occupancy %")),
                     bytes=num(a.get("bytes")), dims=raw("Input Dims"), dims_lower=raw("Input dims"),
                     types=raw("Input type"))
    ts, dur = e.get("ts"), e.get("dur")
    return _Event(ph=e.get("ph"), cat=e.get("cat"), name=e.get("name", ""), pid=ident(e.get("pid", -1)),
                  tid=ident(e.get("tid", -1)), ts=num(ts, None) if ts is not None else None,  # type: ignore[arg-type]
                  dur=num(dur, None) if dur is not None else None, args=args)  # type: ignore[arg-type]


class _Interner(dict[Any, int]):
    """value -> dense id; lookups of known values stay in C (dict.__getitem__)."""

    def __missing__(self, key: Any) -> int:
        value = self[key] = len(self)
        return value


_INT64 = 2**63 - 1
MAX_TIME_US = 1e17  # ~3,000 years of microseconds: beyond it a timestamp is garbage, not a time


class _IntCache(dict[Any, int]):
    """value -> int for identifier columns mixing ints and strings, each distinct value converted once."""

    def __missing__(self, key: Any) -> int:
        value = self[key] = _int_or(key, {})
        return value


def _int_or(value: Any, cache: dict[Any, int]) -> int:
    if type(value) is int:
        return value if -_INT64 <= value <= _INT64 else -1  # an id beyond int64 identifies nothing here
    got = cache.get(value)
    if got is None:
        if isinstance(value, float) and value.is_integer():
            got = int(value)
        elif isinstance(value, str):
            s = value.strip()
            if s.lstrip("-").isdigit():
                got = int(s)
            else:
                m = _DIGITS.search(s)  # "stream 7" in old Kineto traces
                got = int(m.group(1)) if m and s.startswith("stream") else -1
        else:
            got = -1
        if not -_INT64 <= got <= _INT64:
            got = -1
        cache[value] = got
    return got


def parse_events(events: list[_Event], meta: dict[str, Any], path: str = "<memory>",
                 rank: int | None = None) -> Trace:
    """Keep complete ('X') events as columns (C-level map/attrgetter loops, no per-event Python)."""
    complete = [e for e in events if e.ph == "X" and e.ts is not None and e.dur is not None]
    n = len(complete)
    get = attrgetter
    name_ids = _Interner()
    try:
        name = np.fromiter(map(name_ids.__getitem__, map(get("name"), complete)), dtype=np.int32, count=n)
    except TypeError:  # unhashable names: stringify
        name_ids = _Interner()
        name = np.fromiter((name_ids[str(x)] for x in map(get("name"), complete)), dtype=np.int32, count=n)
    names = [x if type(x) is str else str(x) for x in name_ids]
    cat_ids = _Interner()
    cat_codes = np.fromiter(map(cat_ids.__getitem__, map(get("cat"), complete)), dtype=np.int32, count=n)
    lookup = np.asarray([int(CATEGORY_NAMES.get(str(c).lower(), Cat.OTHER)) for c in cat_ids] or [0],
                        dtype=np.int8)
    cat = lookup[cat_codes] if n else np.empty(0, dtype=np.int8)
    step_names = np.asarray([nm.startswith("ProfilerStep#") for nm in names] or [False])
    is_step = step_names[name] & np.isin(cat, (int(Cat.CPU_OP), int(Cat.USER_ANNOTATION)))
    cat[is_step] = int(Cat.PROFILER_STEP)

    none = _Args()
    args = [e.args or none for e in complete]

    def ints(attr: str, src: list[Any]) -> np.ndarray:
        try:
            return np.fromiter(map(get(attr), src), dtype=np.int64, count=n)
        except (TypeError, ValueError, OverflowError):  # "stream 7", "Spans", ids beyond int64 in some traces
            return np.fromiter(map(_IntCache().__getitem__, map(get(attr), src)), dtype=np.int64, count=n)

    def floats(attr: str, src: list[Any]) -> np.ndarray:
        return np.fromiter(map(get(attr), src), dtype=np.float64, count=n)

    ext = ints("ext", args)
    lower = ext < 0
    if lower.any():
        ext[lower] = ints("ext_lower", args)[lower]
    input_dims: dict[int, Any] = {}
    input_types: dict[int, Any] = {}
    wanted = [name_ids[o] for o in SHAPE_OPS if o in name_ids]
    for i in np.flatnonzero(np.isin(name, wanted)) if wanted else ():
        a = args[i]
        raw = a.dims if len(a.dims) else a.dims_lower
        if len(raw):  # kept as JSON bytes; Trace.shapes() decodes the few an analyzer asks for
            input_dims[int(i)] = bytes(raw)
            input_types[int(i)] = bytes(a.types) if len(a.types) else None
    dist = meta.get("distributedInfo") or {}
    if rank is None:
        rank = dist.get("rank", 0) if isinstance(dist.get("rank", 0), int) else 0
    return Trace(
        path=path, rank=int(rank), meta=meta, names=names, cat=cat, name=name,
        pid=ints("pid", complete), tid=ints("tid", complete),
        ts=floats("ts", complete), dur=floats("dur", complete),
        corr=ints("correlation", args), ext=ext,
        stream=ints("stream", args), device=ints("device", args),
        blocks_per_sm=floats("bps", args), occupancy=floats("occ", args), nbytes=floats("bytes", args),
        input_dims=input_dims, input_types=input_types,
    )
