"""Runs roots for the dashboard tests: real sample runs, a broken run, a run with a hostile kernel name."""
from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SAMPLES = REPO / "sample_runs"
HOSTILE = '<img src=x onerror="window.__pwned=1">evil_kernel<script>window.__pwned=2</script>'
#: Put before every CPU operator's name in the hostile run: Markdown and HTML that must show as these characters
#: (its tables of operators are Markdown: components.text_table).
HOSTILE_OP = ('*em* __b__ `c` ~~s~~ [a](javascript:window.__pwned=3) <img src=x onerror="window.__pwned=4"> '
              '&lt; | \\| # http://x.org | ')
BROKEN_ID = "broken-run"
SLOW_ID = "slow-stretch"
#: The slow stretch of :func:`write_slow_stretch`: steps 200-251 take 290 ms, the others 8 ms.
SLOW_STEPS = range(200, 252)
HOSTILE_ID = "hostile-names"


def make_root(root: Path, runs: tuple[str, ...] = ("h100-cnn-input-bound", "h100-gpt-small-batch",
                                                 "cpu-cnn-workers")) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for name in runs:
        shutil.copytree(SAMPLES / name, root / name)
    broken = root / BROKEN_ID
    broken.mkdir()
    (broken / "rank-0.db").write_bytes(b"this is not a database at all" * 10)
    write_slow_stretch(root / SLOW_ID)
    hostile = root / HOSTILE_ID
    shutil.copytree(SAMPLES / "h100-gpt-small-batch", hostile)
    for trace in (hostile / "traces").glob("*.json.gz"):
        doc = json.loads(gzip.decompress(trace.read_bytes()))
        for ev in doc["traceEvents"]:
            if ev.get("cat") == "kernel":
                ev["name"] = HOSTILE  # every kernel: the hostile one is at the top of the table
            elif ev.get("cat") == "cpu_op":
                ev["name"] = HOSTILE_OP + ev["name"]
        trace.write_bytes(gzip.compress(json.dumps(doc).encode()))
    return root


def write_slow_stretch(run_dir: Path) -> Path:
    """A finished run through the real writer: 8 ms steps with 52 consecutive 290 ms steps in the middle
    (a slowdown that stays dense in steps but is 36x sparser in time than its neighbours)."""
    from gpulens.profiler.store.schema import STEP_COLUMNS
    from gpulens.profiler.store.writer import RunWriter

    start = 1_700_000_000.0
    w = RunWriter(run_dir / "rank-0.db", {"name": SLOW_ID, "status": "running", "start": start, "host": "test",
                                          "pid": 1})
    cpu = w.series("host.cpu", -1, "%")
    t = start
    for step in range(452):
        d = 0.290 if step in SLOW_STEPS else 0.008
        row = dict.fromkeys(STEP_COLUMNS)
        row.update(step=step, t_start=t, t_end=t + d, data_wait=0.001, forward=d * 0.3, backward=d * 0.5,
                   optimizer=d * 0.2 - 0.001, other=0.0, samples=32, flags=0)
        w.step(tuple(row[c] for c in STEP_COLUMNS))
        w.point(cpu, t, 50.0)
        t += d
    w.close(status="finished", end=t)
    return run_dir
