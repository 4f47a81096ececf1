"""Helpers the rules share (numbers are formatted by :mod:`gpulens.fmt`)."""
from __future__ import annotations


def how(m, in_track: str, in_run: str) -> str:  # noqa: ANN001 - Measurements, avoiding a cycle
    """The hint that fits how the run was recorded: code calling gpulens, or ``gpulens run`` without code."""
    return in_run if m.recorded_by == "gpulens run" else in_track


def busy_fraction(m) -> float:  # noqa: ANN001 - Measurements, avoiding a cycle
    """Share of time the GPU runs kernels (kernel view if present, else NVML), 1.0 on CPU runs."""
    if m.kernel_util is not None:
        return m.kernel_util / 100.0
    if m.gpu_util is not None and m.device == "cuda":
        return m.gpu_util / 100.0
    return 1.0
