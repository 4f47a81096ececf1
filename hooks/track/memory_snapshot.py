"""A CUDA allocator snapshot asked for on demand (``gpulens profile --memory``), saved in the run.

``torch.cuda.memory._snapshot()`` returns the caching allocator's segments and
blocks (and, where the script turned allocation history on with
``torch.cuda.memory._record_memory_history()``, each block's stack).  It is
saved as the pickle PyTorch's own viewer (https://pytorch.org/memory_viz)
opens, under ``memory/`` in the run folder.  Size-capped: a snapshot with a
long allocation history can be hundreds of megabytes; over the cap the
history (``device_traces``) is dropped first, and a snapshot still over it is
not saved, with the reason.
"""
from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Any

MEMORY_DIR = "memory"
#: The largest snapshot file written (the disk is the user's, and the viewer loads it in a browser tab).
MAX_BYTES = 128 * 2**20


def write_snapshot(run_dir: Path, rank: int, request: str, snapshot: Any,
                   max_bytes: int = MAX_BYTES) -> tuple[str | None, str | None]:
    """(path relative to the run folder, None), or (None, why it was not saved).  Never raises."""
    try:
        data = pickle.dumps(snapshot, protocol=pickle.HIGHEST_PROTOCOL)
        note = None
        if len(data) > max_bytes and isinstance(snapshot, dict) and snapshot.get("device_traces"):
            data = pickle.dumps({**snapshot, "device_traces": [[] for _ in snapshot["device_traces"]]},
                                protocol=pickle.HIGHEST_PROTOCOL)
            note = "allocation history dropped to stay under the size cap"
        if len(data) > max_bytes:
            return None, f"memory snapshot of {len(data) / 2**20:.0f} MiB is over the {max_bytes / 2**20:.0f} MiB cap"
        folder = run_dir / MEMORY_DIR
        folder.mkdir(exist_ok=True)
        final = folder / f"rank-{rank}.request-{request}.pickle"
        part = final.with_name(final.name + ".part")
        part.write_bytes(data)
        os.replace(part, final)
        return f"{MEMORY_DIR}/{final.name}", note
    except Exception as exc:
        return None, f"memory snapshot not saved ({type(exc).__name__}: {exc})"
