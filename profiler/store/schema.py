"""The on-disk format of one rank's database, and its version checks.

Time series are stored as chunks: each flush of the writer appends, per
series, one row holding that interval's timestamps and values as float64
blobs.  Reading an hour of a 10 Hz metric is then a few hundred rows and one
``np.frombuffer`` per row instead of 36,000 Python row objects, which is what
lets the dashboard re-aggregate from full resolution on every zoom.
"""
from __future__ import annotations

import sqlite3
from pathlib import Path

from gpulens.profiler.errors import RunError

SCHEMA_VERSION = 1
#: Written to the SQLite header so that a foreign SQLite file is told apart
#: from a gpulens database without guessing from table names ("GPLN").
APPLICATION_ID = 0x47504C4E

#: Columns of the ``steps`` table in order; the writer inserts tuples in
#: exactly this order and the reader returns one numpy array per column.
#: The split of a step's wall time, in this order everywhere (columns, reports, panels, metrics).
PHASES: tuple[str, ...] = ("data_wait", "forward", "backward", "optimizer", "other")

STEP_COLUMNS: tuple[str, ...] = (
    "step",
    "t_start",
    "t_end",
    "data_wait",
    "forward",
    "backward",
    "optimizer",
    "other",
    "samples",
    "tokens",
    "loss",
    "gpu_step",
    "gpu_data_wait",
    "gpu_forward",
    "gpu_backward",
    "gpu_optimizer",
    "gpu_other",
    "mem_allocated",
    "mem_reserved",
    "mem_peak",
    "flags",
    "extra",
)
#: A column's place in a step row (a list in STEP_COLUMNS order, made once per step on the training loop's
#: path): recorders write ``row[LOSS]``, never a bare index that a new column would silently shift.
COLUMN: dict[str, int] = {name: i for i, name in enumerate(STEP_COLUMNS)}
LOSS = COLUMN["loss"]
GPU_STEP = COLUMN["gpu_step"]
GPU_PHASES = slice(COLUMN["gpu_data_wait"], COLUMN["gpu_other"] + 1)  # in PHASES order
MEM_ALLOCATED, MEM_RESERVED, MEM_PEAK = COLUMN["mem_allocated"], COLUMN["mem_reserved"], COLUMN["mem_peak"]

#: Widths (seconds) of the pre-aggregated min/max/mean buckets kept per series, so a day-long
#: run's overview reads ~1,500 buckets instead of ~900,000 points.
ROLLUP_LEVELS = (1, 10, 60, 600)
#: The levels a store's mirror keeps (a database with a ``mirror_applied`` table).  Not the 1 s level: its rows
#: are a tenth as many as the points, and a run read from a store for the first time would wait on them; the
#: reader reads raw points where it would have used them.
MIRROR_ROLLUP_LEVELS = tuple(level for level in ROLLUP_LEVELS if level >= 10)

#: Step flags (bit mask in ``steps.flags``): steps that throughput and
#: step-time statistics leave out.
FLAG_WARMUP = 1
FLAG_PROFILED = 2
#: A measured what-if's stretch and the steps settling after it (hooks/track/whatif.py): not the run's own pace.
FLAG_WHATIF = 4
#: torch.compile compiled during the step (hooks/track/compile_time.py): one-off work, its seconds in ``@compile``.
FLAG_COMPILE = 8

#: meta["nvml"]["reason"] of a rank that leaves the node's GPUs and host to the process sampling them.
SAMPLED_ELSEWHERE = "device sampling off for this rank"

DDL = """
CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL            -- JSON
);
CREATE TABLE IF NOT EXISTS series (
    id     INTEGER PRIMARY KEY,
    metric TEXT NOT NULL,          -- catalog name, e.g. gpu.util
    gpu    INTEGER NOT NULL,       -- visible GPU index, -1 for host/process
    unit   TEXT NOT NULL,
    status TEXT NOT NULL,          -- ok | unsupported | failed
    reason TEXT,                   -- why it is not available (NVML error)
    UNIQUE (metric, gpu)
);
CREATE TABLE IF NOT EXISTS chunks (
    series_id INTEGER NOT NULL REFERENCES series(id),
    t0 REAL NOT NULL,
    t1 REAL NOT NULL,
    n  INTEGER NOT NULL,
    t  BLOB NOT NULL,              -- float64 epoch seconds, ascending
    v  BLOB NOT NULL               -- float64 values
);
CREATE INDEX IF NOT EXISTS chunks_by_series ON chunks (series_id, t1);
CREATE TABLE IF NOT EXISTS rollups (
    series_id INTEGER NOT NULL,
    level INTEGER NOT NULL,         -- bucket width in seconds (ROLLUP_LEVELS)
    bucket INTEGER NOT NULL,        -- floor(t / level)
    vmin REAL NOT NULL,
    vmax REAL NOT NULL,
    vsum REAL NOT NULL,
    n INTEGER NOT NULL,
    PRIMARY KEY (series_id, level, bucket)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS step_rollups (
    level INTEGER NOT NULL,         -- bucket width in seconds (ROLLUP_LEVELS), by step end time
    bucket INTEGER NOT NULL,
    n INTEGER NOT NULL,
    dur_sum REAL NOT NULL,
    dur_min REAL NOT NULL,
    dur_max REAL NOT NULL,
    data_wait REAL NOT NULL,        -- phase sums (seconds)
    forward REAL NOT NULL,
    backward REAL NOT NULL,
    optimizer REAL NOT NULL,
    other REAL NOT NULL,
    samples REAL NOT NULL,
    PRIMARY KEY (level, bucket)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS steps (
    step INTEGER PRIMARY KEY,
    t_start REAL NOT NULL,
    t_end REAL NOT NULL,
    data_wait REAL NOT NULL,
    forward REAL NOT NULL,
    backward REAL NOT NULL,
    optimizer REAL NOT NULL,
    other REAL NOT NULL,
    samples INTEGER,
    tokens INTEGER,
    loss REAL,
    gpu_step REAL,
    gpu_data_wait REAL,
    gpu_forward REAL,
    gpu_backward REAL,
    gpu_optimizer REAL,
    gpu_other REAL,
    mem_allocated INTEGER,
    mem_reserved INTEGER,
    mem_peak INTEGER,
    flags INTEGER NOT NULL DEFAULT 0,
    extra TEXT
);
CREATE INDEX IF NOT EXISTS steps_by_time ON steps (t_end);
CREATE TABLE IF NOT EXISTS windows (
    id INTEGER PRIMARY KEY,         -- window index within the rank
    first_step INTEGER NOT NULL,    -- first and last recorded (active) step
    last_step INTEGER NOT NULL,
    t_start REAL NOT NULL,
    t_end REAL NOT NULL,
    path TEXT,                      -- gzipped chrome trace, relative to the run directory
    status TEXT NOT NULL,           -- ok | failed | imported
    error TEXT,
    trigger TEXT                    -- NULL: the schedule; "on demand", "slowdown at step S", ... (newer runs)
);
CREATE TABLE IF NOT EXISTS flops (
    step INTEGER PRIMARY KEY,       -- the step whose FLOPs were counted
    total REAL NOT NULL,            -- FLOPs of one step
    by_dtype TEXT NOT NULL,         -- JSON {"bf16": ..., "tf32": ...}
    source TEXT NOT NULL            -- FlopCounterMode | user
);
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY,
    t REAL NOT NULL,
    kind TEXT NOT NULL,
    gpu INTEGER NOT NULL,
    message TEXT NOT NULL,
    data TEXT
);
"""

SQLITE_MAGIC = b"SQLite format 3\x00"


def create(conn: sqlite3.Connection) -> None:
    """Create the schema in a new, empty database."""
    conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
    conn.executescript(DDL)


def check_header(path: Path) -> None:
    """Reject files that are not SQLite before SQLite sees them.

    SQLite happily "opens" any file and only fails at the first query, with a
    message that does not say which file; this check gives the user the file
    name and the reason up front.
    """
    try:
        with open(path, "rb") as fh:
            head = fh.read(100)
    except OSError as exc:
        raise RunError(path, f"cannot read: {exc.strerror or exc}") from None
    if len(head) == 0:
        raise RunError(path, "empty file, not a gpulens database")
    if not head.startswith(SQLITE_MAGIC):
        raise RunError(path, "not a gpulens database (not an SQLite file)")
    if len(head) < 100:
        raise RunError(path, "truncated database (shorter than its header)")


def check_version(conn: sqlite3.Connection, path: Path) -> int:
    """Verify that ``conn`` is a gpulens database this version can read."""
    app_id = conn.execute("PRAGMA application_id").fetchone()[0]
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    if app_id != APPLICATION_ID:
        raise RunError(path, "not a gpulens database (foreign SQLite file)")
    if version > SCHEMA_VERSION:
        raise RunError(
            path,
            f"written by a newer gpulens (schema {version}, this one reads up to "
            f"{SCHEMA_VERSION}); upgrade gpulens to read it",
        )
    if version < 1:
        raise RunError(path, f"unknown gpulens schema version {version}")
    return int(version)
