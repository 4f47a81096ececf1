"""Number formatting inside findings (kept tiny: findings must read as one line)."""
from __future__ import annotations


def pct(x: float | None, digits: int = 1) -> str:
    return "n/a" if x is None else f"{100 * x:.{digits}f}%"


def ms(seconds: float | None) -> str:
    return "n/a" if seconds is None else f"{seconds * 1e3:.1f} ms"


def gib(b: float | None) -> str:
    return "n/a" if b is None else f"{b / 2**30:.1f} GiB"


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
