"""gpulens: why is my GPU not busy, and what do I change?

The public entry point for training code is :func:`track`; notebooks and
scripts read a run with :func:`load` (pandas DataFrames, an inline view) and
:func:`show` (plotly figures); everything else that reads recorded runs lives
in :mod:`gpulens.profiler`.  The training-side names
are imported on first use, so that reading runs (the CLI, the dashboard)
does not pay for the recorder's imports.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from gpulens.lazy import lazy_getattr

__version__ = "0.1.0"

__all__ = ["track", "TrackedRun", "SamplingConfig", "ProfileConfig", "probe_batch_sizes", "load", "show", "Run",
           "__version__"]

if TYPE_CHECKING:  # pragma: no cover
    from gpulens.hooks.track.probe import probe_batch_sizes
    from gpulens.hooks.track.profiling import ProfileConfig
    from gpulens.hooks.track.tracking import TrackedRun, track
    from gpulens.notebook import Run, load, show
    from gpulens.profiler.record.recorder import SamplingConfig

_LAZY = {
    "track": ("gpulens.hooks.track.tracking", "track"),
    "TrackedRun": ("gpulens.hooks.track.tracking", "TrackedRun"),
    "SamplingConfig": ("gpulens.profiler.record.recorder", "SamplingConfig"),
    "ProfileConfig": ("gpulens.hooks.track.profiling", "ProfileConfig"),
    "probe_batch_sizes": ("gpulens.hooks.track.probe", "probe_batch_sizes"),
    "load": ("gpulens.notebook", "load"),
    "show": ("gpulens.notebook", "show"),
    "Run": ("gpulens.notebook", "Run"),
}


__getattr__ = lazy_getattr(__name__, globals(), _LAZY)
