"""The streaming trace parser: the splitter agrees with a whole-document json.loads on every document, cut
into chunks of every size; large traces parse in memory far below their size; bad files are one line."""
from __future__ import annotations

import gzip
import json
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from gpulens.profiler.analysis.trace import TraceError, load_trace
from gpulens.profiler.analysis.trace.jsonsplit import EventSplitter, JsonShapeError

TRACES = Path(__file__).parent / "data" / "traces"
CONTROL = TRACES / "hta__trace_diff__control__control.json.gz"
HARD_STRINGS = ['}, {', '},{', '"', '\\', '\\"', ']', '[{"a": 1}]', 'x\\\\', '\\\\"}', 'ü ☃', '{', '\n']


def _split(doc: bytes, chunk: int) -> tuple[list, dict]:
    """(events, metadata) as the splitter hands them over, with json.loads deciding each piece."""
    events: list = []

    def consume(piece: bytes, offset: int, exact: bool) -> bool:
        try:
            events.extend(json.loads(piece))
        except ValueError:
            if exact:
                raise JsonShapeError("not valid JSON (piece)") from None
            return False
        return True

    splitter = EventSplitter(consume)
    for i in range(0, len(doc), chunk):
        splitter.feed(doc[i:i + chunk])
    return events, splitter.finish()


def _reference(doc: bytes) -> tuple[list, dict] | None:
    try:
        data = json.loads(doc)
    except ValueError:
        return None
    if not isinstance(data, dict) or not isinstance(data.get("traceEvents"), list):
        return None
    return data["traceEvents"], {k: v for k, v in data.items() if k != "traceEvents"}


def _event(rng: random.Random, i: int) -> dict:
    e = {"ph": "X", "cat": rng.choice(["kernel", "cpu_op", "cuda_runtime"]), "name": f"op{i}", "pid": 1,
         "tid": rng.choice([1, "7", "stream 7"]), "ts": i * 10, "dur": rng.random() * 5}
    if rng.random() < 0.5:
        e["name"] = f"{rng.choice(HARD_STRINGS)}{i}{rng.choice(HARD_STRINGS)}"
    if rng.random() < 0.5:
        e["args"] = {"External id": i, "Input Dims": [[i, 2], []],
                     "nested": [{"k": rng.choice(HARD_STRINGS)}, {"k": [{}]}]}
    return e


def _document(rng: random.Random) -> bytes:
    events = [_event(rng, i) for i in range(rng.randint(0, 40))]
    meta = {"schemaVersion": 1, "deviceProperties": [{"id": 0, "name": "H100 }, {"}, {"id": 1}],
            "distributedInfo": {"rank": 0}, "traceName": rng.choice(HARD_STRINGS)}
    keys = list(meta)
    rng.shuffle(keys)
    at = rng.randint(0, len(keys))
    order = keys[:at] + ["traceEvents"] + keys[at:]
    doc = {k: (events if k == "traceEvents" else meta[k]) for k in order}
    style = rng.choice([{}, {"indent": 2}, {"separators": (",", ":")}, {"indent": 0}])
    text = json.dumps(doc, ensure_ascii=rng.random() < 0.5, **style)
    return (text + rng.choice(["", "\n", "  \n"])).encode()


@pytest.mark.parametrize("seed", range(2))
def test_the_splitter_agrees_with_a_whole_document_parse_at_every_chunk_size(seed):
    rng = random.Random(seed)
    for n in range(60):
        doc = _document(rng)
        want = _reference(doc)
        for chunk in ((1, 3) if n < 5 else ()) + (7, 64, rng.randint(1, len(doc)), len(doc)):
            assert _split(doc, chunk) == want, (chunk, doc[:200])


@pytest.mark.parametrize("seed", range(2))
def test_a_damaged_document_is_refused_exactly_when_json_refuses_it(seed):
    """Delete, insert or swap one byte of a valid trace: the splitter and json.loads agree on whether it is
    a trace, and on its events when it is -- at any chunk size."""
    rng = random.Random(100 + seed)
    for _ in range(300):
        doc = bytearray(_document(rng))
        at = rng.randrange(len(doc))
        how = rng.choice(["delete", "insert", "replace"])
        byte = rng.choice(b'{}[],:"\\ 0a')
        if how == "delete":
            del doc[at]
        elif how == "insert":
            doc.insert(at, byte)
        else:
            doc[at] = byte
        want = _reference(bytes(doc))
        chunk = rng.choice([5, 33, len(doc)])
        try:
            got = _split(bytes(doc), chunk)
        except JsonShapeError:
            got = None
        assert got == want, (how, at, chr(byte), chunk, bytes(doc[max(0, at - 40):at + 40]))


def test_every_prefix_of_a_trace_is_refused_as_truncated():
    rng = random.Random(7)
    doc = min((_document(rng) for _ in range(20)), key=len)  # every prefix of a short one (~1 KB)
    assert len(doc) > 300
    for cut in range(len(doc.rstrip())):
        with pytest.raises(JsonShapeError):
            _split(doc[:cut], 16)


@pytest.mark.parametrize("trace, chunk, events", [(CONTROL, 1 << 16, 74937),
                                                   (TRACES / "hta__timeline_analysis__sampled_rank-0.json.gz", 1 << 10,
                                                    4811)])
def test_a_real_trace_parses_to_the_same_columns_at_any_chunk_size(trace, chunk, events, monkeypatch):
    from gpulens.profiler.analysis.trace import source

    whole = load_trace(trace)
    monkeypatch.setattr(source, "CHUNK", chunk)
    cut = load_trace(trace)
    assert len(cut) == len(whole) == events and cut.names == whole.names and cut.meta == whole.meta
    for col in ("cat", "name", "pid", "tid", "ts", "dur", "corr", "ext", "stream", "device", "blocks_per_sm",
                "occupancy", "nbytes"):
        assert np.array_equal(getattr(cut, col), getattr(whole, col), equal_nan=True), col
    assert cut.input_dims == whole.input_dims and cut.input_types == whole.input_types


def _big_trace(path: Path, target_bytes: int) -> int:
    """A trace of ``target_bytes`` or more: the control trace's events written again and again (the same
    times: parsing does not care, and writing stays a second)."""
    doc = json.loads(gzip.open(CONTROL).read())
    events = doc.pop("traceEvents")
    body = ",\n".join(json.dumps(e) for e in events).encode()
    copies = -(-target_bytes // len(body))
    with open(path, "wb") as f:
        f.write(json.dumps(doc)[:-1].encode() + b', "traceEvents": [\n')
        for i in range(copies):
            f.write((b",\n" if i else b"") + body)
        f.write(b"\n]}\n")
    return copies


@pytest.mark.slow
def test_a_large_trace_parses_in_a_fraction_of_its_size(tmp_path):
    """400 MB of JSON parse in well under the document's size (a whole-document parse holds it, and needed
    ~4.4x), and parse and analysis together stay under it: 171 MiB and 237 MiB measured (0.42x and 0.58x),
    of which 96 MiB are the columns.  Cut in the middle, it is one line."""
    big = tmp_path / "big.json"
    copies = _big_trace(big, 400 << 20)
    size = big.stat().st_size
    # VmHWM, not ru_maxrss: Linux carries the forking parent's peak (this pytest worker's) across exec
    peak = "re.search(r'VmHWM:\\s*(\\d+)', open('/proc/self/status').read()).group(1)"
    code = ("import sys, re; from gpulens.profiler.analysis.trace import load_trace; t = load_trace(sys.argv[1]); "
            f"parsed = {peak}; from gpulens.profiler.analysis.trace.analysis import analyze; a = analyze(t); "
            f"print(len(t), parsed, {peak})")
    out = subprocess.run([sys.executable, "-c", code, str(big)], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    events, parsed_kib, analysed_kib = map(int, out.stdout.split())
    assert events == 74937 * copies
    assert parsed_kib * 1024 < 0.6 * size and analysed_kib * 1024 < 0.8 * size, (parsed_kib >> 10,
                                                                                 analysed_kib >> 10, size >> 20)
    # cut off in the middle (a copy that stopped, a full disk): one line, exit 2, nothing half-imported
    with open(big, "r+b") as f:
        f.truncate(size * 6 // 10)
    gpulens = str(Path(sys.executable).with_name("gpulens"))
    proc = subprocess.run([gpulens, "import", str(big), "--runs-dir", str(tmp_path / "runs")], capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert "truncated JSON (the file ends inside traceEvents)" in proc.stderr
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


@pytest.mark.parametrize("name, content, fragment", [
    ("after.json", b'{"traceEvents": [{"ph": "X", "cat": "kernel", "ts": 1, "dur": 1}]} x', "data after the end"),
    ("comma.json", b'{"traceEvents": [{"ph": "X", "cat": "kernel", "ts": 1, "dur": 1},]}', "not valid JSON"),
    ("twice.json", b'{"traceEvents": [], "traceEvents": []}', "two traceEvents lists"),
    ("notlist.json", b'{"traceEvents": {"a": 1}}', "traceEvents is not a list"),
    ("array.json", b'[{"ph": "X"}]', "no traceEvents list"),
    ("mismatch.json", b'{"traceEvents": [{"ph": "X", "cat": "kernel", "ts": 1, "dur": 1}}', "mismatched bracket"),
    ("bad.json", b'{"traceEvents": [{"ph": "X", "cat": "kernel", "ts": 1, "dur": 1}, {"ph": X}]}', "byte 73"),
])
def test_more_bad_documents_are_one_line(tmp_path, name, content, fragment):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(TraceError) as err:
        load_trace(path)
    assert fragment in str(err.value) and name in str(err.value) and "\n" not in str(err.value)


def test_one_malformed_event_in_the_middle_of_a_large_trace_names_its_place(tmp_path):
    events = [{"ph": "X", "cat": "kernel", "name": f"k{i}", "ts": i, "dur": 1, "pid": 0, "tid": 7}
              for i in range(200_000)]
    text = json.dumps({"schemaVersion": 1, "traceEvents": events})
    at = text.index('"k100000"')
    path = tmp_path / "hole.json"
    path.write_text(text[:at] + "k100000" + text[at + 9:])  # a bare word where a string was
    with pytest.raises(TraceError) as err:
        load_trace(path)
    assert "not valid JSON" in str(err.value) and f"byte {at}" in str(err.value)


@pytest.mark.slow
def test_a_multi_rank_import_holds_one_rank_at_a_time(tmp_path):
    """Three 100 MB rank traces import in about the memory of one: each rank is parsed, analysed and
    dropped before the next (holding them all cost a trace's columns per extra rank)."""
    gpulens = str(Path(sys.executable).with_name("gpulens"))
    ranks = []
    for r in range(3):
        path = tmp_path / f"rank{r}.json"
        _big_trace(path, 100 << 20)
        text = path.read_bytes()
        assert b'"rank": 3' in text[:10_000]  # the control trace is rank 3 of 8
        path.write_bytes(text.replace(b'"rank": 3', f'"rank": {r}'.encode(), 1))
        ranks.append(path)

    def peak(paths: list[Path], runs: str) -> tuple[int, str]:
        proc = subprocess.run(["/usr/bin/time", "-f", "%M", gpulens, "import", *map(str, paths), "--runs-dir",
                               str(tmp_path / runs)], capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr
        return int(proc.stderr.strip().splitlines()[-1]), proc.stdout.strip()

    one, _ = peak(ranks[:1], "one")
    three, run = peak(ranks, "three")
    assert sorted(p.name for p in (Path(run) / "traces").glob("*.gz")) == [
        f"rank-{r}.imported.pt.trace.json.gz" for r in range(3)]
    print(f"peak RSS: one rank {one >> 10} MiB, three {three >> 10} MiB")
    assert three < one + 30 * 1024, (one >> 10, three >> 10)  # KiB: a rank's columns are ~25 MiB here
