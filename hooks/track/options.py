"""Every option of a recorded run, in one record shared by ``track()``, ``gpulens run`` and the callbacks."""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from gpulens.hooks.track.profiling import ProfileConfig
from gpulens.profiler.record.recorder import SamplingConfig

#: Without profiler windows, FLOPs are counted at this step (after start-up effects).
DEFAULT_FLOPS_STEP = 5
#: The options ``gpulens run`` can pass down (as JSON, so plain values only).
JSON_OPTIONS = frozenset({"runs_dir", "run_id", "batch_size", "profile_every", "profile_steps", "count_flops",
                          "warmup_steps", "quiet", "advise", "prometheus_port", "prometheus_addr", "sync_phases",
                          "what_if", "nvtx", "auto_capture"})


def track_kwargs(options: dict[str, Any]) -> dict[str, Any]:
    """The ``track()`` keyword arguments among ``gpulens run``'s options (the rest are its own)."""
    return {k: v for k, v in options.items() if k in JSON_OPTIONS}


@dataclass
class RunOptions:
    """What :func:`gpulens.track` accepts (see its docstring for each).  ``gpulens run`` passes
    :data:`JSON_OPTIONS` down as JSON; framework callbacks pass theirs through ``track()``."""

    name: str | None = None
    runs_dir: str | os.PathLike[str] | None = None
    run_id: str | None = None
    batch_size: int | None = None
    config: dict[str, Any] | None = None
    sampling: SamplingConfig | None = None
    sync_phases: bool = False
    cuda_timing_interval: float = 0.1
    warmup_steps: int = 2
    quiet: bool = False
    nvml: ModuleType | None = None
    profile: ProfileConfig | bool | None = None
    profile_every: int | None = None
    profile_steps: int | None = None
    count_flops: bool = True
    flops_step: int | None = None
    flops_per_step: float | None = None
    flops_per_sample: float | None = None
    flops_per_token: float | None = None
    flops_dtype: str | None = None
    model: Any = None
    optimizer: Any = None
    target_batch: int | None = None
    advise: bool = True
    auto: bool = False
    prometheus_port: int | None = None
    prometheus_addr: str = "127.0.0.1"
    what_if: str | None = None  # a measured what-if (hooks/track/whatif.py): "synthetic-data", "num-workers=N", …
    auto_capture: bool = True  # a window of a lasting slowdown and of the first non-finite loss (auto_capture.py)
    nvtx: bool | None = None  # phases as NVTX ranges too (None: when Nsight Systems runs the process)
    store: str | None = None  # publish to this run store too (else $GPULENS_STORE): profiler.store.publisher
    child: dict[str, Any] | None = None  # set for a child process of the recording one (hooks/children.py)

    def __post_init__(self) -> None:
        self.name = self.name or default_name()

    def profile_config(self) -> ProfileConfig:
        """The profiler-window schedule from ``profile`` / ``profile_every`` / ``profile_steps`` (validated)."""
        if isinstance(self.profile, ProfileConfig):
            cfg = self.profile
        elif self.profile is False:
            cfg = ProfileConfig(every=0)
        else:
            cfg = ProfileConfig()
        if self.profile_every is not None:
            cfg.every = self.profile_every
        if self.profile_steps is not None:
            cfg.active = self.profile_steps
        cfg.validate()
        return cfg

    @property
    def user_flops(self) -> dict[str, Any]:
        return {"flops_per_step": self.flops_per_step, "flops_per_sample": self.flops_per_sample,
                "flops_per_token": self.flops_per_token, "flops_dtype": self.flops_dtype}

    @property
    def flops_given(self) -> bool:
        return any((self.flops_per_step, self.flops_per_sample, self.flops_per_token))

    def flops_at(self) -> int:
        """The first step whose FLOPs may be counted (the first one after it outside profiler windows).

        Counting runs a meta-device copy of the model at the step's end, a
        moment in that step's time: the step is flagged and left out of
        throughput, as profiled steps are.
        """
        return self.flops_step if self.flops_step is not None else DEFAULT_FLOPS_STEP


def default_name() -> str:
    """The script's name (``train`` for ``python train.py``)."""
    script = Path(sys.argv[0]).stem if sys.argv and sys.argv[0] not in ("", "-c") else "python"
    return script or "run"
