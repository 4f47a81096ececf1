"""Runs roots for the dashboard tests: real sample runs, a broken run, a run with a hostile kernel name."""
from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SAMPLES = REPO / "sample_runs"
HOSTILE = '<img src=x onerror="window.__pwned=1">evil_kernel<script>window.__pwned=2</script>'
BROKEN_ID = "broken-run"
HOSTILE_ID = "hostile-names"


def make_root(root: Path, runs: tuple[str, ...] = ("h100-cnn-input-bound", "h100-gpt-small-batch",
                                                 "cpu-cnn-workers")) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for name in runs:
        shutil.copytree(SAMPLES / name, root / name)
    broken = root / BROKEN_ID
    broken.mkdir()
    (broken / "rank-0.db").write_bytes(b"this is not a database at all" * 10)
    hostile = root / HOSTILE_ID
    shutil.copytree(SAMPLES / "h100-gpt-small-batch", hostile)
    for trace in (hostile / "traces").glob("*.json.gz"):
        doc = json.loads(gzip.decompress(trace.read_bytes()))
        for ev in doc["traceEvents"]:
            if ev.get("cat") == "kernel":
                ev["name"] = HOSTILE  # every kernel: the hostile one is at the top of the table
        trace.write_bytes(gzip.compress(json.dumps(doc).encode()))
    return root
