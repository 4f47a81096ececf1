"""What a run says once it has ended: the top suggestions, the ranks its child processes recorded, the
notebook view. The one module of hooks/ that reads a run back -- after recording, never during it (the
import contracts in pyproject.toml hold the rest of hooks/ to that)."""
from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Any

log = logging.getLogger("gpulens")


def child_ranks(path: Path | None) -> dict[int, int]:
    """Rank -> steps of the ranks this process' children recorded (asked when this process trained nothing)."""
    if path is None:
        return {}
    from gpulens.profiler.store.reader import open_run  # here: recording never pays for the reader's imports

    try:
        with open_run(path) as reader:
            return {rank: len(reader.steps(rank)) for rank in reader.ranks
                    if (reader.meta(rank).get("child") or {}).get("parent_pid") == os.getpid()}
    except Exception as exc:
        log.debug("gpulens: could not look for child ranks: %s", exc)
        return {}


def print_top_advice(path: Path | None, limit: int = 3) -> None:
    """The three most important suggestions, in a short block at the end of the run."""
    if path is None:
        return
    try:
        from gpulens.profiler.analysis.run_analysis import RunAnalysis
        from gpulens.profiler.store.reader import open_run

        with open_run(path) as reader:
            advice = RunAnalysis(reader).advice  # also keeps the windows' analyses for later reports
    except Exception as exc:  # advice is a courtesy; it must never fail the program at exit
        log.info("gpulens: no advice: %s", exc)
        return
    top = advice.suggestions[:limit]
    if not top:
        print("gpulens: no suggestions: nothing in this run calls for a change", file=sys.stderr)
        return
    print("gpulens: top suggestions (gpulens advise for all, with actions):", file=sys.stderr)
    for s in top:
        print(f"  [{s.severity}] {s.title}: {s.finding}", file=sys.stderr)


def html_view(run: Any) -> str:
    """A run in a notebook: cards, top suggestions, a step-time sparkline (``TrackedRun._repr_html_``)."""
    from gpulens.notebook import load

    return load(run)._repr_html_()
