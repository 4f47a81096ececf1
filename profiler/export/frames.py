"""A run as tables: pandas DataFrames for notebooks, parquet or CSV files for everything else.

Four tables, each with stable columns (docs/run-format.md):

* ``steps``: one row per step and rank, the steps table's columns plus
  ``duration_s``, ``rank`` and the flags spelled out (``warmup``,
  ``profiled``, ``what_if``, ``compiling``) -- what a throughput calculation filters on;
* ``series``: long format, one row per reading: ``rank``, ``metric``,
  ``gpu`` (-1 for host and process), ``unit``, ``t`` (epoch seconds, on
  rank 0's clock), ``value``;
* ``kernels``: the report's kernel table (all profiler windows);
* ``suggestions``: the advisor's ranked suggestions.

Series are read and written one at a time, so exporting a day-long 8-GPU run
never holds all its points in memory.  pandas (and pyarrow for parquet) are
optional: without them the error says which extra to install.
"""
from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from gpulens.profiler.analysis.report import Report
from gpulens.profiler.errors import GpulensError
from gpulens.profiler.store.reader import RunReader
from gpulens.profiler.store.schema import FLAG_COMPILE, FLAG_PROFILED, FLAG_WARMUP, FLAG_WHATIF, STEP_COLUMNS

TABLES = ("steps", "series", "kernels", "suggestions")
FORMATS = ("parquet", "csv")
SERIES_COLUMNS = ("rank", "metric", "gpu", "unit", "t", "value")
KERNEL_COLUMNS = ("name", "calls", "total_us", "mean_us", "max_us", "share", "category", "tensor_core")
SUGGESTION_COLUMNS = ("rank", "id", "severity", "title", "finding", "action", "expected_gain",
                      "expected_gain_fraction", "gain_estimate", "confidence", "overlaps", "change",
                      "predicted_gain_fraction", "predicted_low", "predicted_high", "prediction_basis",
                      "prediction_measure")


def pandas() -> Any:
    try:
        import pandas as pd
    except ImportError:
        raise GpulensError("this needs pandas: pip install 'gpulens[data]' (pandas, pyarrow)") from None
    return pd


def _pyarrow() -> Any:
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise GpulensError("parquet needs pyarrow: pip install 'gpulens[data]' (or --format csv)") from None
    return pa, pq


# ---------------------------------------------------------------------------------------------- columns
def step_columns(run: RunReader) -> dict[str, np.ndarray]:
    """Every rank's steps as columns (ranks one after another)."""
    parts = [(rank, run.steps(rank)) for rank in run.ranks]
    cols: dict[str, list[np.ndarray]] = {name: [] for name in ("rank", *STEP_COLUMNS[:-1], "duration_s")}
    for rank, steps in parts:
        n = len(steps)
        if not n:
            continue
        cols["rank"].append(np.full(n, rank, dtype=np.int64))
        for name in STEP_COLUMNS[:-1]:  # "extra" (JSON of custom phases) is not a column
            cols[name].append(np.asarray(steps.columns[name]))
        cols["duration_s"].append(steps.duration)
    out = {k: (np.concatenate(v) if v else np.zeros(0)) for k, v in cols.items()}
    flags = out["flags"].astype(np.int64) if out["flags"].size else np.zeros(0, dtype=np.int64)
    out["warmup"] = (flags & FLAG_WARMUP) != 0
    out["profiled"] = (flags & FLAG_PROFILED) != 0
    out["what_if"] = (flags & FLAG_WHATIF) != 0
    out["compiling"] = (flags & FLAG_COMPILE) != 0
    return out


def series_parts(run: RunReader) -> Iterator[dict[str, Any]]:
    """One series of one rank at a time: its rows as columns."""
    for info in run.series_list():
        s = run.series(info.metric, info.gpu, rank=info.rank)
        if s is None or not len(s):
            continue
        n = len(s)
        yield {"rank": np.full(n, info.rank, dtype=np.int64), "metric": [info.metric] * n,
               "gpu": np.full(n, info.gpu, dtype=np.int64), "unit": [info.unit] * n, "t": s.t, "value": s.v}


def kernel_rows(report: Report) -> list[dict[str, Any]]:
    return [{k: getattr(row, k) for k in KERNEL_COLUMNS} for row in report.kernels]


def suggestion_rows(advice: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for i, s in enumerate(advice.get("suggestions") or [], 1):
        row = {k: s.get(k) for k in SUGGESTION_COLUMNS if k != "rank"}
        row["rank"] = i
        row["overlaps"] = ",".join(s.get("overlaps") or [])
        row["change"] = json.dumps(s["change"], sort_keys=True) if s.get("change") else None
        p = s.get("prediction") or {}
        row["predicted_gain_fraction"], row["predicted_low"], row["predicted_high"], row["prediction_basis"] = (
            p.get("gain_fraction"), p.get("low"), p.get("high"), p.get("basis"))
        row["prediction_measure"] = p.get("measure")
        rows.append({k: row[k] for k in SUGGESTION_COLUMNS})
    return rows


# ---------------------------------------------------------------------------------------------- DataFrames
def steps_frame(run: RunReader) -> Any:
    return pandas().DataFrame(step_columns(run))


def series_frame(run: RunReader) -> Any:
    pd = pandas()
    frames = [pd.DataFrame(part) for part in series_parts(run)]
    if not frames:
        return pd.DataFrame({c: [] for c in SERIES_COLUMNS})
    out = pd.concat(frames, ignore_index=True)
    out["metric"] = out["metric"].astype("category")
    out["unit"] = out["unit"].astype("category")
    return out


def rows_frame(rows: list[dict[str, Any]], columns: tuple[str, ...]) -> Any:
    pd = pandas()
    return pd.DataFrame(rows, columns=list(columns))


# ---------------------------------------------------------------------------------------------- files
def export(run: RunReader, analysis: Any, out_dir: Path, fmt: str,
           tables: tuple[str, ...]) -> dict[str, tuple[Path, int]]:
    """Write the asked tables as ``<table>.<fmt>`` under ``out_dir``; returns {table: (path, rows)}."""
    if fmt not in FORMATS:
        raise GpulensError(f"--format {fmt}: one of {', '.join(FORMATS)}")
    unknown = [t for t in tables if t not in TABLES]
    if unknown:
        raise GpulensError(f"--what {','.join(unknown)}: tables are {', '.join(TABLES)}")
    pandas()  # both formats go through pandas: say so before any file is written
    if fmt == "parquet":
        _pyarrow()
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise GpulensError(f"--out {out_dir}: cannot make the folder ({exc.strerror or exc})") from None
    written: dict[str, tuple[Path, int]] = {}
    for table in tables:
        path = out_dir / f"{table}.{fmt}"
        tmp = path.with_name(path.name + ".tmp")
        try:
            rows = _write_table(run, analysis, table, tmp, fmt)
            tmp.replace(path)  # a reader never sees half a file
        except OSError as exc:  # unwritable, or the disk filled: no half file left behind
            tmp.unlink(missing_ok=True)
            raise GpulensError(f"cannot write {path} ({exc.strerror or exc}); "
                               f"{len(written)} of {len(tables)} tables written") from None
        written[table] = (path, rows)
    return written


def _write_table(run: RunReader, analysis: Any, table: str, tmp: Path, fmt: str) -> int:
    if table == "series":
        return _write_series(run, tmp, fmt)
    if table == "steps":
        frame = steps_frame(run)
    elif table == "kernels":
        frame = rows_frame(kernel_rows(analysis.report(suggestions=False)), KERNEL_COLUMNS)
    else:
        frame = rows_frame(suggestion_rows(analysis.advice.as_dict()), SUGGESTION_COLUMNS)
    if fmt == "parquet":
        frame.to_parquet(tmp, index=False)
    else:
        frame.to_csv(tmp, index=False)
    return len(frame)


def _write_series(run: RunReader, path: Path, fmt: str) -> int:
    rows = 0
    if fmt == "parquet":
        pa, pq = _pyarrow()
        schema = pa.schema([("rank", pa.int64()), ("metric", pa.dictionary(pa.int32(), pa.string())),
                            ("gpu", pa.int64()), ("unit", pa.dictionary(pa.int32(), pa.string())),
                            ("t", pa.float64()), ("value", pa.float64())])
        with pq.ParquetWriter(path, schema) as writer:
            for part in series_parts(run):
                table = pa.table({"rank": part["rank"], "metric": pa.array(part["metric"]).dictionary_encode(),
                                  "gpu": part["gpu"], "unit": pa.array(part["unit"]).dictionary_encode(),
                                  "t": part["t"], "value": part["value"]}, schema=schema)
                writer.write_table(table)
                rows += table.num_rows
        return rows
    with open(path, "w", newline="") as fh:
        out = csv.writer(fh)
        out.writerow(SERIES_COLUMNS)
        for part in series_parts(run):
            t, v = part["t"], part["value"]
            rank, metric, gpu, unit = int(part["rank"][0]), part["metric"][0], int(part["gpu"][0]), part["unit"][0]
            out.writerows((rank, metric, gpu, unit, repr(float(a)), repr(float(b))) for a, b in zip(t, v))
            rows += len(t)
    return rows
