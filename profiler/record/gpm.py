"""GPM (GPU Performance Monitoring) metrics on Hopper and newer.

A GPM metric is a rate between two hardware samples taken more than 100 ms
apart.  Each device keeps two sample buffers and alternates between them, so
every tick yields one value per metric averaged over the interval since the
previous tick; the value is stamped at the end of that interval.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from types import ModuleType
from typing import Any

from gpulens.profiler.record.nvml import PERMANENT_ERRORS, describe_error, error_code

#: pynvml constant -> gpulens metric.  Values are 0-100 for all of these.
GPM_METRICS: tuple[tuple[str, str], ...] = (
    ("NVML_GPM_METRIC_GRAPHICS_UTIL", "gpm.graphics_active"),
    ("NVML_GPM_METRIC_SM_UTIL", "gpm.sm_active"),
    ("NVML_GPM_METRIC_SM_OCCUPANCY", "gpm.sm_occupancy"),
    ("NVML_GPM_METRIC_ANY_TENSOR_UTIL", "gpm.tensor_active"),
    ("NVML_GPM_METRIC_HMMA_TENSOR_UTIL", "gpm.hmma_active"),
    ("NVML_GPM_METRIC_IMMA_TENSOR_UTIL", "gpm.imma_active"),
    ("NVML_GPM_METRIC_DFMA_TENSOR_UTIL", "gpm.dfma_active"),
    ("NVML_GPM_METRIC_DRAM_BW_UTIL", "gpm.dram_bw"),
    ("NVML_GPM_METRIC_FP16_UTIL", "gpm.fp16_active"),
    ("NVML_GPM_METRIC_FP32_UTIL", "gpm.fp32_active"),
    ("NVML_GPM_METRIC_FP64_UTIL", "gpm.fp64_active"),
)

MIN_SAMPLE_GAP_S = 0.1

Mark = Callable[[str, str, str], None]  # (metric, status, reason)
Emit = Callable[[str, float, float], None]  # (metric, t, value)


class GpmDevice:
    """GPM sampling for one GPU; ``tick`` is called from the sampler thread."""

    def __init__(self, nvml: ModuleType, handle: Any, emit: Emit, mark: Mark) -> None:
        self.nvml = nvml
        self.handle = handle
        self._emit = emit
        self._mark = mark
        self._metrics: list[tuple[int, str]] = []
        for const, metric in GPM_METRICS:
            mid = getattr(nvml, const, None)
            if mid is None:
                mark(metric, "unsupported", f"this nvidia-ml-py does not define {const}")
            else:
                self._metrics.append((int(mid), metric))
        self._samples: list[Any] = []
        self._prev: Any = None
        self._prev_t = 0.0
        self._request: Any = None
        self.active = False

    def start(self) -> None:
        """Allocate the sample buffers and take the first sample (no value yet)."""
        try:
            self._samples = [self.nvml.nvmlGpmSampleAlloc(), self.nvml.nvmlGpmSampleAlloc()]
            self.nvml.nvmlGpmSampleGet(self.handle, self._samples[0])
        except Exception as exc:
            self.fail_all("unsupported", f"GPM sampling refused ({describe_error(exc)})")
            self.close()
            return
        self._prev = self._samples[0]
        self._prev_t = time.perf_counter()
        self._request = self.nvml.c_nvmlGpmMetricsGet_t()
        self.active = True

    def fail_all(self, status: str, reason: str) -> None:
        for _, metric in self._metrics:
            self._mark(metric, status, reason)
        self._metrics = []
        self.active = False

    def tick(self, t: float) -> None:
        if not self.active or not self._metrics:
            return
        now = time.perf_counter()
        if now - self._prev_t <= MIN_SAMPLE_GAP_S:
            return
        cur = self._samples[1] if self._prev is self._samples[0] else self._samples[0]
        self.nvml.nvmlGpmSampleGet(self.handle, cur)
        req = self._request
        req.version = self.nvml.NVML_GPM_METRICS_GET_VERSION
        req.numMetrics = len(self._metrics)
        req.sample1 = self._prev
        req.sample2 = cur
        for i, (mid, _) in enumerate(self._metrics):
            req.metrics[i].metricId = mid
        self._prev, self._prev_t = cur, now
        self.nvml.nvmlGpmMetricsGet(req)
        dropped = []
        for i, (_mid, metric) in enumerate(self._metrics):
            ret = int(req.metrics[i].nvmlReturn)
            if ret == 0:
                self._emit(metric, t, float(req.metrics[i].value))
            elif ret in PERMANENT_ERRORS:
                dropped.append(i)
                self._mark(metric, "unsupported", _return_text(self.nvml, ret))
        for i in reversed(dropped):
            del self._metrics[i]

    def close(self) -> None:
        for sample in self._samples:
            try:
                self.nvml.nvmlGpmSampleFree(sample)
            except Exception:
                pass
        self._samples = []
        self.active = False


def _return_text(nvml: ModuleType, ret: int) -> str:
    try:
        return describe_error(nvml.NVMLError(ret))
    except Exception:
        return f"NVML return code {ret}"


def is_permanent(exc: BaseException) -> bool:
    return error_code(exc) in PERMANENT_ERRORS
