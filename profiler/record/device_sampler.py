"""NVML polling of every visible GPU.

Each reading is a *probe*: one NVML call giving one or more metrics.  The
first failure with a permanent error (not supported, no permission, function
missing) marks the probe's metrics unsupported with the NVML error and the
probe is never called again; transient errors leave a gap and are retried; a
GPU that reports "GPU is lost" leaves a gap and an event and is re-checked
every few seconds.  Nothing here raises into the caller's thread.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

from gpulens.profiler.record.gpm import GpmDevice
from gpulens.profiler.record.nvml import GPU_IS_LOST, PERMANENT_ERRORS, TIMEOUT, describe_error, error_code
from gpulens.profiler.store.metrics import unit_of
from gpulens.profiler.store.sink import SampleSink

#: After this many consecutive transient failures a probe is given up as failed.
MAX_TRANSIENT_FAILURES = 20
LOST_RECHECK_S = 5.0


@dataclass(frozen=True)
class Probe:
    key: str
    metrics: tuple[str, ...]
    group: str  # fast | util | slow
    read: Callable[[ModuleType, Any], tuple[float, ...]]


def _throttle(n: ModuleType, h: Any) -> tuple[float, ...]:
    fn = getattr(n, "nvmlDeviceGetCurrentClocksEventReasons", None)
    if fn is None:
        fn = n.nvmlDeviceGetCurrentClocksThrottleReasons
    return (float(fn(h)),)


PROBES: tuple[Probe, ...] = (
    Probe("memory", ("gpu.mem_used",), "fast",
          lambda n, h: (float(n.nvmlDeviceGetMemoryInfo(h).used),)),
    Probe("power", ("gpu.power",), "fast",
          lambda n, h: (n.nvmlDeviceGetPowerUsage(h) / 1000.0,)),
    # a cumulative counter: exact at any rate, and 1-3 ms per call on an H100
    Probe("energy", ("gpu.energy",), "slow",
          lambda n, h: (n.nvmlDeviceGetTotalEnergyConsumption(h) / 1000.0,)),
    Probe("temperature", ("gpu.temp",), "fast",
          lambda n, h: (float(n.nvmlDeviceGetTemperature(h, n.NVML_TEMPERATURE_GPU)),)),
    Probe("sm_clock", ("gpu.sm_clock",), "fast",
          lambda n, h: (float(n.nvmlDeviceGetClockInfo(h, n.NVML_CLOCK_SM)),)),
    Probe("mem_clock", ("gpu.mem_clock",), "fast",
          lambda n, h: (float(n.nvmlDeviceGetClockInfo(h, n.NVML_CLOCK_MEM)),)),
    Probe("throttle", ("gpu.throttle",), "fast", _throttle),
    Probe("utilization", ("gpu.util", "gpu.mem_util"), "util",
          lambda n, h: (lambda u: (float(u.gpu), float(u.memory)))(n.nvmlDeviceGetUtilizationRates(h))),
    Probe("power_limit", ("gpu.power_limit",), "slow",
          lambda n, h: (n.nvmlDeviceGetEnforcedPowerLimit(h) / 1000.0,)),
    # nvmlDeviceGetPcieThroughput measures for 20 ms inside the call: slow group only.
    Probe("pcie_rx", ("gpu.pcie_rx",), "slow",
          lambda n, h: (n.nvmlDeviceGetPcieThroughput(h, n.NVML_PCIE_UTIL_RX_BYTES) * 1024.0,)),
    Probe("pcie_tx", ("gpu.pcie_tx",), "slow",
          lambda n, h: (n.nvmlDeviceGetPcieThroughput(h, n.NVML_PCIE_UTIL_TX_BYTES) * 1024.0,)),
    Probe("ecc", ("gpu.ecc_uncorrected", "gpu.ecc_corrected"), "slow",
          lambda n, h: (
              float(n.nvmlDeviceGetTotalEccErrors(h, n.NVML_MEMORY_ERROR_TYPE_UNCORRECTED, n.NVML_VOLATILE_ECC)),
              float(n.nvmlDeviceGetTotalEccErrors(h, n.NVML_MEMORY_ERROR_TYPE_CORRECTED, n.NVML_VOLATILE_ECC)),
          )),
)


@dataclass
class GpuState:
    index: int
    nvml_index: int
    uuid: str
    handle: Any
    lost: bool = False
    lost_checked: float = 0.0
    disabled: set[str] = field(default_factory=set)
    failures: dict[str, int] = field(default_factory=dict)
    reported: set[str] = field(default_factory=set)
    nvlink_prev: tuple[float, float, float] | None = None
    gpm: GpmDevice | None = None


class DeviceSampler:
    """Reads NVML (and GPM) for a set of GPUs into a :class:`RunWriter`."""

    def __init__(self, writer: SampleSink, nvml: ModuleType, gpus: list[GpuState],
                 pids: Callable[[], set[int]] | None = None, gpm: bool = True) -> None:
        self.writer = writer
        self.nvml = nvml
        self.gpus = gpus
        self._pids = pids
        self._sid: dict[tuple[str, int], int] = {}
        self._groups: dict[str, list[Probe]] = {}
        for probe in PROBES:
            self._groups.setdefault(probe.group, []).append(probe)
        self._event_set = None
        self._proc_note_done = False
        if gpm:
            for gpu in gpus:
                self._start_gpm(gpu)
        self._register_xid_events()

    # ------------------------------------------------------------------ plumbing
    def _emit(self, gpu: int, metric: str, t: float, value: float) -> None:
        key = (metric, gpu)
        sid = self._sid.get(key)
        if sid is None:
            sid = self._sid[key] = self.writer.series(metric, gpu, unit_of(metric))
        self.writer.point(sid, t, value)

    def _mark(self, gpu: int, metric: str, status: str, reason: str) -> None:
        self.writer.mark_series(metric, gpu, status, reason, unit_of(metric))

    def _start_gpm(self, gpu: GpuState) -> None:
        index = gpu.index

        def emit(metric: str, t: float, value: float) -> None:
            self._emit(index, metric, t, value)

        def mark(metric: str, status: str, reason: str) -> None:
            self._mark(index, metric, status, reason)

        dev = GpmDevice(self.nvml, gpu.handle, emit=emit, mark=mark)
        from gpulens.profiler.record.nvml import gpm_support

        ok, reason = gpm_support(self.nvml, gpu.handle)
        if not ok:
            dev.fail_all("unsupported", reason or "GPM not supported")
            return
        dev.start()
        gpu.gpm = dev if dev.active else None

    def _failed(self, gpu: GpuState, key: str, metrics: tuple[str, ...], exc: BaseException) -> None:
        code = error_code(exc)
        reason = describe_error(exc)
        if code == GPU_IS_LOST:
            self._lose(gpu, reason)
            return
        if code in PERMANENT_ERRORS:
            gpu.disabled.add(key)
            for metric in metrics:
                self._mark(gpu.index, metric, "unsupported", reason)
            return
        count = gpu.failures.get(key, 0) + 1
        gpu.failures[key] = count
        if reason not in gpu.reported:
            gpu.reported.add(reason)
            self.writer.event("sampler_error", f"GPU {gpu.index}: {key} failed: {reason}", gpu.index,
                              {"probe": key, "error": reason})
        if count >= MAX_TRANSIENT_FAILURES:
            gpu.disabled.add(key)
            for metric in metrics:
                self._mark(gpu.index, metric, "failed", f"{count} consecutive errors, last: {reason}")

    def _lose(self, gpu: GpuState, reason: str) -> None:
        if gpu.lost:
            return
        gpu.lost = True
        gpu.lost_checked = time.monotonic()
        self.writer.event("gpu_lost", f"GPU {gpu.index} ({gpu.uuid}) fell off the bus: {reason}",
                          gpu.index, {"uuid": gpu.uuid, "error": reason})

    def _recheck_lost(self, gpu: GpuState) -> None:
        now = time.monotonic()
        if now - gpu.lost_checked < LOST_RECHECK_S:
            return
        gpu.lost_checked = now
        try:
            handle = self.nvml.nvmlDeviceGetHandleByUUID(gpu.uuid)
            self.nvml.nvmlDeviceGetMemoryInfo(handle)
        except Exception:
            return
        gpu.handle = handle
        gpu.lost = False
        self.writer.event("gpu_recovered", f"GPU {gpu.index} ({gpu.uuid}) answers again", gpu.index)

    def _run_group(self, group: str, t: float) -> None:
        for gpu in self.gpus:
            if gpu.lost:
                self._recheck_lost(gpu)
                continue
            for probe in self._groups.get(group, ()):
                if probe.key in gpu.disabled:
                    continue
                try:
                    values = probe.read(self.nvml, gpu.handle)
                except Exception as exc:
                    self._failed(gpu, probe.key, probe.metrics, exc)
                    if gpu.lost:
                        break
                    continue
                gpu.failures.pop(probe.key, None)
                for metric, value in zip(probe.metrics, values):
                    self._emit(gpu.index, metric, t, value)

    # ------------------------------------------------------------------ task entry points
    def sample_fast(self, t: float) -> None:
        self._run_group("fast", t)

    def sample_util(self, t: float) -> None:
        self._run_group("util", t)

    def sample_gpm(self, t: float) -> None:
        for gpu in self.gpus:
            if gpu.lost or gpu.gpm is None:
                continue
            try:
                gpu.gpm.tick(t)
            except Exception as exc:
                if error_code(exc) == GPU_IS_LOST:
                    self._lose(gpu, describe_error(exc))
                elif error_code(exc) in PERMANENT_ERRORS:
                    gpu.gpm.fail_all("unsupported", f"GPM sampling refused ({describe_error(exc)})")
                    gpu.gpm.close()
                    gpu.gpm = None
                else:
                    self._failed(gpu, "gpm", (), exc)

    def sample_slow(self, t: float) -> None:
        self._run_group("slow", t)
        for gpu in self.gpus:
            if gpu.lost:
                continue
            self._nvlink(gpu, t)
            self._process_memory(gpu, t)
        self._poll_xid()

    # ------------------------------------------------------------------ special probes
    def _nvlink(self, gpu: GpuState, t: float) -> None:
        if "nvlink" in gpu.disabled:
            return
        n = self.nvml
        metrics = ("gpu.nvlink_tx", "gpu.nvlink_rx")
        try:
            values = n.nvmlDeviceGetFieldValues(
                gpu.handle, [n.NVML_FI_DEV_NVLINK_THROUGHPUT_DATA_TX, n.NVML_FI_DEV_NVLINK_THROUGHPUT_DATA_RX])
        except Exception as exc:
            self._failed(gpu, "nvlink", metrics, exc)
            return
        bad = [int(v.nvmlReturn) for v in values if int(v.nvmlReturn) != 0]
        if bad:
            gpu.disabled.add("nvlink")
            try:
                reason = describe_error(n.NVMLError(bad[0]))
            except Exception:
                reason = f"NVML return code {bad[0]}"
            for metric in metrics:
                self._mark(gpu.index, metric, "unsupported", reason)
            return
        tx_kib = float(values[0].value.ullVal)
        rx_kib = float(values[1].value.ullVal)
        prev = gpu.nvlink_prev
        gpu.nvlink_prev = (t, tx_kib, rx_kib)
        if prev is not None and t > prev[0]:
            dt = t - prev[0]
            self._emit(gpu.index, "gpu.nvlink_tx", t, max(0.0, tx_kib - prev[1]) * 1024.0 / dt)
            self._emit(gpu.index, "gpu.nvlink_rx", t, max(0.0, rx_kib - prev[2]) * 1024.0 / dt)

    def _process_memory(self, gpu: GpuState, t: float) -> None:
        if "proc_mem" in gpu.disabled or self._pids is None:
            return
        try:
            procs = self.nvml.nvmlDeviceGetComputeRunningProcesses(gpu.handle)
        except Exception as exc:
            self._failed(gpu, "proc_mem", ("gpu.proc_mem",), exc)
            return
        pids = self._pids()
        mine = [p for p in procs if p.pid in pids]
        if mine:
            used = sum(p.usedGpuMemory or 0 for p in mine)
            self._emit(gpu.index, "gpu.proc_mem", t, float(used))
        elif not procs:
            self._emit(gpu.index, "gpu.proc_mem", t, 0.0)
        elif not self._proc_note_done:
            # Other processes are listed but not ours: inside a container NVML
            # reports host pids, so we cannot tell which one is this run.
            self._proc_note_done = True
            self.writer.event("note", "GPU processes are listed but none matches this run's pids "
                              "(a container pid namespace?): per-process GPU memory not recorded",
                              gpu.index)

    def _register_xid_events(self) -> None:
        n = self.nvml
        try:
            self._event_set = n.nvmlEventSetCreate()
        except Exception:
            self._event_set = None
            return
        registered = 0
        for gpu in self.gpus:
            try:
                n.nvmlDeviceRegisterEvents(gpu.handle, n.nvmlEventTypeXidCriticalError, self._event_set)
                registered += 1
            except Exception as exc:
                self.writer.event("note", f"GPU {gpu.index}: XID events not available ({describe_error(exc)})",
                                  gpu.index)
        if not registered:
            self._free_event_set()

    def _poll_xid(self) -> None:
        if self._event_set is None:
            return
        for _ in range(16):
            try:
                data = self.nvml.nvmlEventSetWait(self._event_set, 0)
            except Exception as exc:
                if error_code(exc) != TIMEOUT:
                    self._free_event_set()
                return
            index = -1
            try:
                uuid = self.nvml.nvmlDeviceGetUUID(data.device)
                uuid = uuid.decode() if isinstance(uuid, bytes) else uuid
                index = next((g.index for g in self.gpus if g.uuid == uuid), -1)
            except Exception:
                pass
            self.writer.event("xid", f"GPU {index}: Xid {int(data.eventData)} (critical error)", index,
                              {"xid": int(data.eventData)})

    def _free_event_set(self) -> None:
        if self._event_set is not None:
            try:
                self.nvml.nvmlEventSetFree(self._event_set)
            except Exception:
                pass
        self._event_set = None

    def close(self) -> None:
        for gpu in self.gpus:
            if gpu.gpm is not None:
                gpu.gpm.close()
                gpu.gpm = None
        self._free_event_set()
