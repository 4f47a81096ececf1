"""Reading a PyTorch profiler chrome trace (plain or gzipped JSON) into a :class:`Trace`.

The file is read in chunks (``source``), split into pieces of whole events (``jsonsplit``) and each
piece decoded typed (msgspec: only the fields gpulens reads, as small structs, input shapes kept as raw
JSON until an analyzer asks) and turned into columns at once, so the document is never held whole: a
1 GB trace parses in a fraction of its size (bench/trace_analysis.py).  Anything that is not a readable
PyTorch profiler trace raises :class:`TraceError` with a one-line reason naming the file.
"""
from __future__ import annotations

import json
import re
from operator import attrgetter
from pathlib import Path
from typing import Any

import msgspec
import numpy as np

from gpulens.profiler.analysis.trace.heap import return_freed_heap
from gpulens.profiler.analysis.trace.jsonsplit import EventSplitter, JsonShapeError
from gpulens.profiler.analysis.trace.model import CATEGORY_NAMES, Cat, Trace
from gpulens.profiler.analysis.trace.patterns import SHAPE_OPS
from gpulens.profiler.analysis.trace.source import TraceError as TraceError
from gpulens.profiler.analysis.trace.source import json_chunks


class _Args(msgspec.Struct, gc=False, rename={"ext": "External id", "ext_lower": "external id", "bps": "blocks per SM",
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


class _Event(msgspec.Struct, gc=False):
    ph: Any = None
    cat: Any = None
    name: Any = ""
    pid: int | str = -1
    tid: int | str = -1
    ts: float | None = None
    dur: float | None = None
    args: _Args | None = None


_EVENTS = msgspec.json.Decoder(list[_Event])
_META_KEYS = ("schemaVersion", "deviceProperties", "distributedInfo", "displayTimeUnit", "baseTimeNanoseconds")
_PYTORCH_CATS = {"cpu_op", "operator", "user_annotation", "cuda_runtime", "runtime", "kernel",
                 "python_function", "gpu_memcpy", "gpu_memset", "cuda_driver", "gpu_user_annotation"}
_DIGITS = re.compile(r"(\d+)\s*$")
_BYTE = re.compile(r"\(byte (\d+)\)")
#: Events whose categories decide whether a metadata-less document is a PyTorch trace.
_SNIFF = 5000


def load_trace(path: str | Path, rank: int | None = None) -> Trace:
    """Parse a trace file into columns, holding a few MiB of its JSON at a time (see ``jsonsplit``)."""
    p = Path(path)
    columns = _Columns(p)
    splitter = EventSplitter(columns.add)
    try:
        for chunk in json_chunks(p):
            splitter.feed(chunk)
        found = splitter.finish()
    except JsonShapeError as exc:
        raise TraceError(p, str(exc)) from None
    meta = {k: found[k] for k in _META_KEYS if found.get(k) is not None}
    if not columns.events:
        raise TraceError(p, "empty trace (no events)")
    if not (any(k in meta for k in ("schemaVersion", "deviceProperties", "distributedInfo")) or columns.pytorch):
        raise TraceError(p, "not a PyTorch profiler trace (no PyTorch event categories or metadata)")
    if not isinstance(meta.get("distributedInfo") or {}, dict):
        raise TraceError(p, "distributedInfo is not an object, as the PyTorch profiler writes it")
    props = meta.get("deviceProperties") or []
    if not isinstance(props, list) or not all(isinstance(d, dict) for d in props):
        raise TraceError(p, "deviceProperties is not a list of objects, as the PyTorch profiler writes it")
    trace = columns.trace(meta, rank)
    if len(trace) == 0:
        raise TraceError(p, "empty trace (no complete events)")
    reach = _reach(trace) + abs(trace.epoch_offset_us)
    if not reach < MAX_TIME_US:
        raise TraceError(p, f"timestamps out of range ({reach:.3g} us; a trace spans years since 1970 at most)")
    return trace


def _reach(trace: Trace, chunk: int = 1 << 20) -> float:
    """The largest |end| of any event, a slice at a time (two whole-trace temporaries at 4 GB are ~160 MB)."""
    parts = [np.fmax.reduce(np.abs(trace.ends(slice(i, i + chunk)))) for i in range(0, len(trace), chunk)]
    return float(np.fmax.reduce(np.asarray(parts)))  # fmax: NaN only where every value is NaN, as nanmax


def _decode_events(piece: bytes) -> list[Any]:
    """Typed events of a JSON array; dicts through the generic parser when the types are unusual."""
    try:
        return _EVENTS.decode(piece)
    except msgspec.ValidationError:
        pass  # valid JSON of another shape (string ids, say): the generic parser below
    data = json.loads(piece)
    return [_as_event(e) for e in data if isinstance(e, dict)]


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


class _Columns:
    """Complete ('X') events as columns, built piece by piece (C-level map/attrgetter loops, no per-event
    Python); the pieces' arrays are joined once, column by column, so the peak is one column over the total."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.events = 0  # every event, complete or not
        self.pytorch = False  # a PyTorch category among the first events
        self.name_ids = _Interner()
        self.cat_ids = _Interner()
        self.parts: dict[str, list[np.ndarray]] = {k: [] for k in _COLUMNS}
        self.size = 0
        self.input_dims: dict[int, bytes] = {}
        self.input_types: dict[int, bytes | None] = {}

    def add(self, piece: bytes, offset: int, exact: bool) -> bool:
        try:
            events = _decode_events(piece)
        except RecursionError:
            raise JsonShapeError("not a PyTorch profiler trace (JSON nested too deeply)") from None
        except (msgspec.DecodeError, ValueError) as exc:
            if not exact:
                return False
            if b"N/A" in piece:  # old Kineto wrote bare N/A values
                fixed = re.sub(rb'(?<!")N/A(?!")', b'"N/A"', piece)
                if fixed != piece:
                    return self.add(fixed, offset, exact)
            detail = _BYTE.sub(lambda m: f"(byte {offset + int(m.group(1)) - 1})", str(exc).splitlines()[0])
            raise JsonShapeError(f"not valid JSON ({detail[:120]})") from None
        if not self.pytorch and self.events < _SNIFF:
            self.pytorch = any(str(e.cat or "").lower() in _PYTORCH_CATS for e in events[:_SNIFF - self.events])
        self.events += len(events)
        self._columns(events)
        return True

    def _columns(self, events: list[_Event]) -> None:
        complete = [e for e in events if e.ph == "X" and e.ts is not None and e.dur is not None]
        n = len(complete)
        if not n:
            return
        get = attrgetter
        name_ids = self.name_ids
        try:
            name = np.fromiter(map(name_ids.__getitem__, map(get("name"), complete)), dtype=np.int32, count=n)
        except TypeError:  # unhashable names: stringify
            name = np.fromiter((name_ids[x if type(x) is str else str(x)] for x in map(get("name"), complete)),
                               dtype=np.int32, count=n)
        cat_ids = self.cat_ids
        try:
            cat = np.fromiter(map(cat_ids.__getitem__, map(get("cat"), complete)), dtype=np.int32, count=n)
        except TypeError:  # an unhashable category (a list, say) is no category gpulens knows
            cat = np.fromiter((cat_ids[x if type(x) is str else str(x)] for x in map(get("cat"), complete)),
                              dtype=np.int32, count=n)
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
        for col, values in (("name", name), ("cat", cat), ("pid", ints("pid", complete)),
                            ("tid", ints("tid", complete)), ("ts", floats("ts", complete)),
                            ("dur", floats("dur", complete)), ("corr", ints("correlation", args)), ("ext", ext),
                            ("stream", ints("stream", args)), ("device", ints("device", args)),
                            ("blocks_per_sm", floats("bps", args)), ("occupancy", floats("occ", args)),
                            ("nbytes", floats("bytes", args))):
            self.parts[col].append(values)
        wanted = [name_ids[o] for o in SHAPE_OPS if o in name_ids]
        for i in np.flatnonzero(np.isin(name, wanted)) if wanted else ():
            a = args[i]
            raw = a.dims if len(a.dims) else a.dims_lower
            if len(raw):  # kept as JSON bytes; Trace.shapes() decodes the few an analyzer asks for
                self.input_dims[self.size + int(i)] = bytes(raw)
                self.input_types[self.size + int(i)] = bytes(a.types) if len(a.types) else None
        self.size += n

    def trace(self, meta: dict[str, Any], rank: int | None) -> Trace:
        cols: dict[str, np.ndarray] = {}
        for col, dtype in _COLUMNS.items():
            parts = self.parts[col]
            cols[col] = np.concatenate(parts) if parts else np.empty(0, dtype=dtype)
            parts.clear()  # the pieces go as the column is made: the peak is the columns plus one
            return_freed_heap()
        names = [x if type(x) is str else str(x) for x in self.name_ids]
        lookup = np.asarray([int(CATEGORY_NAMES.get(str(c).lower(), Cat.OTHER)) for c in self.cat_ids] or [0],
                            dtype=np.int8)
        cat = lookup[cols.pop("cat")] if self.size else np.empty(0, dtype=np.int8)
        step_names = np.asarray([nm.startswith("ProfilerStep#") for nm in names] or [False])
        name = cols["name"]
        is_step = step_names[name] & np.isin(cat, (int(Cat.CPU_OP), int(Cat.USER_ANNOTATION)))
        cat[is_step] = int(Cat.PROFILER_STEP)
        dist = meta.get("distributedInfo") or {}
        if rank is None:
            rank = dist.get("rank", 0) if isinstance(dist.get("rank", 0), int) else 0
        return Trace(path=str(self.path), rank=int(rank), meta=meta, names=names, cat=cat, name=name,
                     pid=cols["pid"], tid=cols["tid"], ts=cols["ts"], dur=cols["dur"], corr=cols["corr"],
                     ext=cols["ext"], stream=cols["stream"], device=cols["device"],
                     blocks_per_sm=cols["blocks_per_sm"], occupancy=cols["occupancy"], nbytes=cols["nbytes"],
                     input_dims=self.input_dims, input_types=self.input_types)


_COLUMNS: dict[str, type] = {
    "name": np.int32, "cat": np.int32, "pid": np.int64, "tid": np.int64, "ts": np.float64, "dur": np.float64,
    "corr": np.int64, "ext": np.int64, "stream": np.int64, "device": np.int64, "blocks_per_sm": np.float64,
    "occupancy": np.float64, "nbytes": np.float64,
}
