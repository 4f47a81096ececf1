"""gpulens: why is my GPU not busy, and what do I change?

The public entry point for training code is :func:`track`; everything that
reads recorded runs lives in :mod:`gpulens.profiler`.
"""
from __future__ import annotations

__version__ = "0.1.0"

from gpulens.hooks.tracking import TrackedRun, track  # noqa: E402
from gpulens.hooks.profiling import ProfileConfig  # noqa: E402
from gpulens.profiler.recorder import SamplingConfig  # noqa: E402

__all__ = ["track", "TrackedRun", "SamplingConfig", "ProfileConfig", "__version__"]
