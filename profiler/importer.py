"""``gpulens import``: PyTorch profiler traces from elsewhere become a run.

Each trace file is one rank (as ``tensorboard_trace_handler`` writes them);
the run gets one database per rank with the steps found in the trace
(``ProfilerStep#N`` spans, data wait from DataLoader spans, optimizer time
from ``Optimizer.step#`` spans, the rest as "other"; a window gpulens wrote has
its own ``gpulens.<phase>`` ranges, which give all four phases), the GPUs named in the
trace's ``deviceProperties``, and the trace itself, gzipped, as the run's one
profiler window -- so the report, the advisor and the dashboard show it like
a recorded run.  It has no NVML or host samples, and says so.
"""
from __future__ import annotations

import gzip
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from gpulens.profiler.analysis import window_cache
from gpulens.profiler.analysis.trace import intervals as iv
from gpulens.profiler.analysis.trace.analysis import analyze
from gpulens.profiler.analysis.trace.model import Cat, Trace
from gpulens.profiler.analysis.trace.parse import load_trace
from gpulens.profiler.analysis.trace.result import TraceAnalysis
from gpulens.profiler.errors import GpulensError
from gpulens.profiler.store.runstore import new_run_id, rank_db_name, run_dir_in, slug
from gpulens.profiler.store.schema import STEP_COLUMNS
from gpulens.profiler.store.writer import MAX_PENDING, RunWriter, describe_lost

IMPORT_CHUNK = MAX_PENDING["steps"] // 4  # steps handed to the writer before waiting for their commit
INT64 = 2**63 - 1


def _gpus(trace: Trace) -> list[dict[str, Any]]:
    """GPUs the trace ran on (deviceProperties lists every GPU of the machine)."""
    used = set(np.unique(trace.device[trace.gpu_work()]).tolist())
    out: list[dict[str, Any]] = []
    for prop in trace.device_properties:
        if used and int(prop.get("id", -1)) not in used:
            continue
        major, minor = prop.get("computeMajor"), prop.get("computeMinor")
        out.append({"index": int(prop.get("id", len(out))), "nvml_index": None, "name": prop.get("name"),
                    "uuid": None, "pci_bus_id": None, "memory_total": prop.get("totalGlobalMem"),
                    "compute_capability": f"{major}.{minor}" if major is not None else None,
                    "sm_count": prop.get("numSms"), "power_limit_w": None, "max_sm_clock_mhz": None,
                    "mig_enabled": None, "gpm_supported": None, "gpm_reason": "imported trace: no GPM samples"})
    return out


def _step_rows(trace: Trace) -> list[tuple[Any, ...]]:
    steps = np.flatnonzero(trace.mask(Cat.PROFILER_STEP))
    if steps.size == 0:
        return []
    steps = steps[np.argsort(trace.ts[steps], kind="stable")]
    ops = trace.mask(Cat.CPU_OP, Cat.USER_ANNOTATION)
    op_ts, op_end = trace.ts[ops], trace.ends(ops)
    a, b = trace.ts[steps], trace.ends(steps)

    def spans(match: Any) -> np.ndarray:  # operator spans whose name matches (judged once per distinct name)
        return np.asarray(trace.name_flags(match)[ops])

    def time_in(match: Any) -> np.ndarray:  # per step, microseconds inside spans whose name matches
        hit = spans(match)
        return iv.overlap(iv.merge(op_ts[hit], op_end[hit]), a, b)

    fwd = bwd = np.zeros(steps.size)
    if spans(lambda n: n == "gpulens.forward").any():  # a gpulens window: its own phase ranges give all four
        own = {p: time_in(lambda n, want=f"gpulens.{p}": n == want)
               for p in ("data_wait", "forward", "backward", "optimizer")}
        data, fwd, bwd, opt = own["data_wait"], own["forward"], own["backward"], own["optimizer"]
    else:
        data = time_in(lambda n: n.startswith("enumerate(DataLoader)#") or n.startswith("enumerate(DataPipe)#"))
        opt = time_in(lambda n: n.startswith("Optimizer.step#"))
    off = trace.epoch_offset_us
    rows = []
    for j, i in enumerate(steps):
        name = trace.names[trace.name[i]]
        try:
            number = int(name.split("#", 1)[1])
        except (IndexError, ValueError):
            number = j
        if not -INT64 <= number <= INT64:
            raise ValueError(f"step number {name.split('#', 1)[1][:30]} is out of range")
        dur = (b[j] - a[j]) / 1e6
        d, f, k, o = data[j] / 1e6, fwd[j] / 1e6, bwd[j] / 1e6, opt[j] / 1e6
        row = [number, (a[j] + off) / 1e6, (b[j] + off) / 1e6, d, f, k, o, max(0.0, dur - d - f - k - o)]
        row += [None] * (len(STEP_COLUMNS) - len(row) - 2) + [0, None]
        rows.append(tuple(row))
    return rows


@dataclass
class _Rank:
    """One trace, checked and turned into what its rank database will hold, before anything is written.

    It keeps what the run needs (steps, GPUs, the analysis), not the trace: ranks are read one at a time,
    so eight 500 MB traces import in the memory of one."""

    path: Path
    rank: int
    gpus: list[dict[str, Any]]
    steps: list[tuple[Any, ...]]
    world: int
    analysis: TraceAnalysis
    start: float
    end: float


def _checked(path: str | Path, trace: Trace) -> _Rank:
    """The trace's metadata as the PyTorch profiler writes it, or a one-line error naming the file."""
    try:
        dist = trace.meta.get("distributedInfo") or {}
        if not isinstance(dist, dict):
            raise TypeError(f"distributedInfo is a {type(dist).__name__}, not an object")
        if not isinstance(trace.device_properties, list) or not all(isinstance(p, dict)
                                                                    for p in trace.device_properties):
            raise TypeError("deviceProperties is not a list of objects")
        world = int(dist.get("world_size", 1) or 1)
        gpus, steps = _gpus(trace), _step_rows(trace)
    except (TypeError, ValueError, AttributeError, KeyError, OverflowError) as exc:
        raise GpulensError(f"{path}: not a PyTorch profiler trace gpulens can import ({exc})") from None
    off = trace.epoch_offset_us
    start, end = (float(trace.ts.min()) + off) / 1e6, (float(trace.end.max()) + off) / 1e6
    # analysed now, from the trace in memory: reports never parse it again
    return _Rank(Path(path), trace.rank, gpus, steps, world, analyze(trace), start, end)


def import_traces(paths: list[str | Path], root: Path, name: str | None = None) -> Path:
    """Create a run under ``root`` from trace files; returns its directory.

    Every file is read and checked first; the run is written into a hidden
    directory and renamed into place at the end, so bad input leaves nothing
    behind, and a run appears complete or not at all.
    """
    if not paths:
        raise GpulensError("no trace files given")
    if root.exists() and not root.is_dir():
        raise GpulensError(f"{root}: not a directory (the runs root)")
    checked = [_checked(p, load_trace(p)) for p in paths]  # one trace in memory at a time
    if len({c.rank for c in checked}) != len(checked):
        for i, c in enumerate(checked):
            c.rank = i
    base = name or Path(str(paths[0])).name.split(".")[0]
    run_id = new_run_id(f"imported-{slug(base)}")
    run_dir = run_dir_in(root, run_id) if root.exists() else root / run_id
    staging = root / f".importing-{run_id}"
    try:
        (staging / "traces").mkdir(parents=True)
        _write(checked, staging, run_id, base, max([len(checked), *(c.world for c in checked)]))
        os.rename(staging, run_dir)
    except OSError as exc:
        shutil.rmtree(staging, ignore_errors=True)
        raise GpulensError(f"cannot write the run under {root}: {exc.strerror or exc}") from None
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return run_dir


def _write(checked: list[_Rank], run_dir: Path, run_id: str, base: str, world: int) -> None:
    first = checked[0].rank
    for item in checked:
        rank, src, start, end = item.rank, item.path, item.start, item.end
        dest = run_dir / "traces" / f"rank-{rank}.imported.pt.trace.json.gz"
        with open(src, "rb") as fin:
            gzipped = fin.read(2) == b"\x1f\x8b"
        if gzipped:
            shutil.copyfile(src, dest)
        else:  # level 1: a gigabyte in seconds, not a minute (the copy is kept for re-analysis, not archived)
            with open(src, "rb") as fin, gzip.open(dest, "wb", compresslevel=1) as fout:
                shutil.copyfileobj(fin, fout, 4 << 20)
        window_cache.store(dest, rank, item.analysis)
        meta = {
            "run_id": run_id, "name": base, "status": "finished", "start": start, "end": end,
            "rank": rank, "local_rank": rank, "world_size": world, "imported_from": str(src.resolve()),
            "gpus": item.gpus if rank == first else [],
            "nvml": {"available": False, "reason": "imported trace: no NVML samples"},
            "host": None, "host_info": {}, "command": None, "torch_version": None, "replay": False,
            "imported": True, "warmup_steps": 0, "pid": None,
        }
        writer = RunWriter(run_dir / rank_db_name(rank), meta)
        # The writer bounds what waits in memory for a live run (a stalled disk must not grow the training
        # process); an import has no loop to protect, so it waits for each piece to be committed instead.
        for i in range(0, len(item.steps), IMPORT_CHUNK):
            for row in item.steps[i:i + IMPORT_CHUNK]:
                writer.step(row)
            writer.sync(timeout=600)
        steps = [r[0] for r in item.steps]
        writer.window(0, min(steps) if steps else 0, max(steps) if steps else 0, start, end,
                      f"traces/{dest.name}", "imported", None)
        lost = writer.lost()
        writer.close(status="finished", end=end, steps=len(steps))
        lost = lost or writer.lost()
        if lost:
            raise GpulensError(f"{src}: rank {rank} of run {run_id} could not be written whole "
                               f"({describe_lost(lost)}); nothing was imported")
