"""FAKE pynvml -- for tests only, never used by gpulens itself.

A stand-in for the ``pynvml`` module (nvidia-ml-py) that replays what real
NVML returned on a real H100 (``tests/data/nvml_h100_snapshot.json``, recorded
with tools/nvml_snapshot.py on the device machine): the same value shapes
(structs with ``.gpu``/``.memory``, milliwatts, millijoules, KB/s), the same
errors (NVLink fields NOT_SUPPORTED per field, event wait TIMEOUT), and the
real ``NVMLError_*`` classes and ctypes structs from nvidia-ml-py itself.

Tests steer it to the situations a real GPU cannot be forced into on demand:
metrics unsupported on an older card, GPM missing or refused, a GPU falling
off the bus mid-run, an Xid, no NVML library at all.  Every call is counted
so a test can check that an unsupported metric is not polled again.
"""
from __future__ import annotations

import ctypes
import json
import threading
import time
import types
from collections import Counter
from pathlib import Path
from typing import Any

import pynvml as _real

SNAPSHOT = Path(__file__).resolve().parent.parent / "data" / "nvml_h100_snapshot.json"

#: fake call key -> pynvml function names that use it (for ``unsupported=``)
KEYS = {
    "memory": "nvmlDeviceGetMemoryInfo",
    "utilization": "nvmlDeviceGetUtilizationRates",
    "power": "nvmlDeviceGetPowerUsage",
    "power_limit": "nvmlDeviceGetEnforcedPowerLimit",
    "energy": "nvmlDeviceGetTotalEnergyConsumption",
    "temperature": "nvmlDeviceGetTemperature",
    "clock": "nvmlDeviceGetClockInfo",
    "throttle": "nvmlDeviceGetCurrentClocksEventReasons",
    "pcie": "nvmlDeviceGetPcieThroughput",
    "ecc": "nvmlDeviceGetTotalEccErrors",
    "processes": "nvmlDeviceGetComputeRunningProcesses",
    "fields": "nvmlDeviceGetFieldValues",
    "events": "nvmlDeviceRegisterEvents",
}


class _Obj:
    def __init__(self, **kw: Any) -> None:
        self.__dict__.update(kw)


class FakeHandle:
    def __init__(self, index: int) -> None:
        self.index = index

    def __repr__(self) -> str:
        return f"<FAKE nvml handle {self.index}>"


class FakeNvml(types.ModuleType):
    """``FakeNvml(gpus=2, unsupported={"energy"}, gpm=False)`` behaves like ``import pynvml``."""

    def __init__(self, gpus: int = 1, unsupported: set[str] | None = None, gpm: bool = True,
                 gpm_sample_error: int | None = None, library_missing: bool = False,
                 snapshot: Path = SNAPSHOT) -> None:
        super().__init__("fake_pynvml")
        for name, value in vars(_real).items():  # constants, error classes, ctypes structs
            if name.startswith(("NVML_", "NVMLError", "nvmlClocks", "nvmlEventType", "c_nvml", "struct_c_nvml")):
                setattr(self, name, value)
        self.NVMLError = _real.NVMLError
        self.snapshot = json.loads(Path(snapshot).read_text())
        self.dev = self.snapshot["devices"][0]
        self.n_gpus = gpus
        self.unsupported = set(unsupported or ())
        self.gpm = gpm
        self.gpm_sample_error = gpm_sample_error
        self.library_missing = library_missing
        self.calls: Counter[str] = Counter()
        self.gpu_calls: Counter[tuple[str, int]] = Counter()  # (function, GPU): a test waits for ticks, not seconds
        self.lost: set[int] = set()
        self.xids: list[tuple[int, int]] = []
        self.processes: dict[int, list[tuple[int, int]]] = {}
        self.util: dict[int, tuple[int, int]] = {}
        self.gpm_values: dict[str, float] = {}
        self._lock = threading.Lock()
        self._t0 = time.time()
        self.initialised = 0

    # ------------------------------------------------------------------ helpers
    def _ok(self, key: str) -> Any:
        rec = self.dev[key]
        if "error" in rec:
            raise _real.NVMLError(rec["code"])
        return rec["ok"]

    def _enter(self, fn: str, handle: FakeHandle | None = None, key: str | None = None) -> None:
        with self._lock:
            self.calls[fn] += 1
            if handle is not None:
                self.gpu_calls[fn, handle.index] += 1
        if not self.initialised:
            raise _real.NVMLError(_real.NVML_ERROR_UNINITIALIZED)
        if handle is not None and handle.index in self.lost:
            raise _real.NVMLError(_real.NVML_ERROR_GPU_IS_LOST)
        if key is not None and key in self.unsupported:
            raise _real.NVMLError(_real.NVML_ERROR_NOT_SUPPORTED)

    def lose(self, gpu: int) -> None:
        """The GPU falls off the bus: every call on it raises NVMLError_GpuIsLost."""
        self.lost.add(gpu)

    def recover(self, gpu: int) -> None:
        self.lost.discard(gpu)

    def inject_xid(self, gpu: int, xid: int) -> None:
        self.xids.append((gpu, xid))

    # ------------------------------------------------------------------ system
    def nvmlInit(self) -> None:
        self.calls["nvmlInit"] += 1
        if self.library_missing:
            raise _real.NVMLError(_real.NVML_ERROR_LIBRARY_NOT_FOUND)
        self.initialised += 1

    def nvmlShutdown(self) -> None:
        self.calls["nvmlShutdown"] += 1
        self.initialised = max(0, self.initialised - 1)

    def nvmlSystemGetDriverVersion(self) -> str:
        self._enter("nvmlSystemGetDriverVersion")
        return self.snapshot["driver_version"]["ok"]

    def nvmlSystemGetCudaDriverVersion(self) -> int:
        self._enter("nvmlSystemGetCudaDriverVersion")
        return self.snapshot["cuda_driver_version"]["ok"]

    def nvmlSystemGetNVMLVersion(self) -> str:
        self._enter("nvmlSystemGetNVMLVersion")
        return self.snapshot["nvml_version"]["ok"]

    def nvmlDeviceGetCount(self) -> int:
        self._enter("nvmlDeviceGetCount")
        return self.n_gpus

    def nvmlDeviceGetHandleByIndex(self, index: int) -> FakeHandle:
        self._enter("nvmlDeviceGetHandleByIndex")
        if not 0 <= index < self.n_gpus:
            raise _real.NVMLError(_real.NVML_ERROR_INVALID_ARGUMENT)
        return FakeHandle(index)

    def nvmlDeviceGetHandleByUUID(self, uuid: str) -> FakeHandle:
        self._enter("nvmlDeviceGetHandleByUUID")
        for i in range(self.n_gpus):
            if self._uuid(i) == uuid:
                if i in self.lost:
                    raise _real.NVMLError(_real.NVML_ERROR_GPU_IS_LOST)
                return FakeHandle(i)
        raise _real.NVMLError(_real.NVML_ERROR_NOT_FOUND)

    # ------------------------------------------------------------------ static facts
    def _uuid(self, i: int) -> str:
        base = self.dev["uuid"]["ok"]
        return base[:-2] + f"{i:02x}"

    def nvmlDeviceGetName(self, h: FakeHandle) -> str:
        self._enter("nvmlDeviceGetName", h)
        return self._ok("name")

    def nvmlDeviceGetUUID(self, h: FakeHandle) -> str:
        self._enter("nvmlDeviceGetUUID", h)
        return self._uuid(h.index)

    def nvmlDeviceGetPciInfo(self, h: FakeHandle) -> _Obj:
        self._enter("nvmlDeviceGetPciInfo", h)
        pci = dict(self._ok("pci"))
        pci["busId"] = f"00000000:{h.index + 6:02X}:00.0".encode()  # bytes, as the real struct field
        return _Obj(**pci)

    def nvmlDeviceGetCudaComputeCapability(self, h: FakeHandle) -> tuple[int, int]:
        self._enter("nvmlDeviceGetCudaComputeCapability", h)
        return tuple(self._ok("cc"))  # type: ignore[return-value]

    def nvmlDeviceGetMigMode(self, h: FakeHandle) -> list[int]:
        self._enter("nvmlDeviceGetMigMode", h)
        return list(self._ok("mig"))

    def nvmlDeviceGetMaxClockInfo(self, h: FakeHandle, clock: int) -> int:
        self._enter("nvmlDeviceGetMaxClockInfo", h)
        return self._ok("max_sm_clock")

    # ------------------------------------------------------------------ dynamic readings
    def _phase(self) -> float:
        return (time.time() - self._t0) % 1.0

    def nvmlDeviceGetMemoryInfo(self, h: FakeHandle, version: Any = None) -> _Obj:
        self._enter("nvmlDeviceGetMemoryInfo", h, "memory")
        mem = self._ok("memory")
        used = mem["used"] + int(self._phase() * 2**30)
        return _Obj(total=mem["total"], used=used, free=mem["total"] - used)

    def nvmlDeviceGetUtilizationRates(self, h: FakeHandle) -> _Obj:
        self._enter("nvmlDeviceGetUtilizationRates", h, "utilization")
        gpu, memory = self.util.get(h.index, (int(50 + 40 * self._phase()), 20))
        return _Obj(gpu=gpu, memory=memory)

    def nvmlDeviceGetPowerUsage(self, h: FakeHandle) -> int:
        self._enter("nvmlDeviceGetPowerUsage", h, "power")
        return int(self._ok("power") + 300_000 * self._phase())

    def nvmlDeviceGetEnforcedPowerLimit(self, h: FakeHandle) -> int:
        self._enter("nvmlDeviceGetEnforcedPowerLimit", h, "power_limit")
        return self._ok("power_limit")

    def nvmlDeviceGetTotalEnergyConsumption(self, h: FakeHandle) -> int:
        self._enter("nvmlDeviceGetTotalEnergyConsumption", h, "energy")
        return int(self._ok("energy") + (time.time() - self._t0) * 300_000)

    def nvmlDeviceGetTemperature(self, h: FakeHandle, sensor: int) -> int:
        self._enter("nvmlDeviceGetTemperature", h, "temperature")
        return self._ok("temperature")

    def nvmlDeviceGetClockInfo(self, h: FakeHandle, clock: int) -> int:
        self._enter("nvmlDeviceGetClockInfo", h, "clock")
        return self._ok("sm_clock" if clock == _real.NVML_CLOCK_SM else "mem_clock")

    def nvmlDeviceGetCurrentClocksEventReasons(self, h: FakeHandle) -> int:
        self._enter("nvmlDeviceGetCurrentClocksEventReasons", h, "throttle")
        return self._ok("clocks_event_reasons")

    def nvmlDeviceGetPcieThroughput(self, h: FakeHandle, counter: int) -> int:
        self._enter("nvmlDeviceGetPcieThroughput", h, "pcie")
        return self._ok("pcie_tx" if counter == _real.NVML_PCIE_UTIL_TX_BYTES else "pcie_rx")

    def nvmlDeviceGetTotalEccErrors(self, h: FakeHandle, error_type: int, counter: int) -> int:
        self._enter("nvmlDeviceGetTotalEccErrors", h, "ecc")
        return self._ok("ecc_uncorrected")

    def nvmlDeviceGetComputeRunningProcesses(self, h: FakeHandle) -> list[_Obj]:
        self._enter("nvmlDeviceGetComputeRunningProcesses", h, "processes")
        return [_Obj(pid=pid, usedGpuMemory=used, gpuInstanceId=0xFFFFFFFF, computeInstanceId=0xFFFFFFFF)
                for pid, used in self.processes.get(h.index, [])]

    def nvmlDeviceGetFieldValues(self, h: FakeHandle, field_ids: list[int]) -> Any:
        self._enter("nvmlDeviceGetFieldValues", h, "fields")
        values = (_real.c_nvmlFieldValue_t * len(field_ids))()
        recorded = self.dev["nvlink_fields"]["ok"]
        for i, fid in enumerate(field_ids):
            values[i].fieldId = fid
            values[i].nvmlReturn = recorded[min(i, len(recorded) - 1)]["nvmlReturn"]
        return values

    # ------------------------------------------------------------------ events
    def nvmlEventSetCreate(self) -> object:
        self._enter("nvmlEventSetCreate")
        return object()

    def nvmlDeviceRegisterEvents(self, h: FakeHandle, types_: int, event_set: object) -> None:
        self._enter("nvmlDeviceRegisterEvents", h, "events")

    def nvmlEventSetWait(self, event_set: object, timeout_ms: int) -> _Obj:
        self._enter("nvmlEventSetWait")
        if self.xids:
            gpu, xid = self.xids.pop(0)
            return _Obj(device=FakeHandle(gpu), eventType=_real.nvmlEventTypeXidCriticalError,
                        eventData=xid, gpuInstanceId=0, computeInstanceId=0)
        raise _real.NVMLError(_real.NVML_ERROR_TIMEOUT)  # as recorded: wait(0) with no event

    def nvmlEventSetFree(self, event_set: object) -> None:
        self._enter("nvmlEventSetFree")

    # ------------------------------------------------------------------ GPM
    def nvmlGpmQueryDeviceSupport(self, h: FakeHandle) -> _Obj:
        self._enter("nvmlGpmQueryDeviceSupport", h)
        return _Obj(version=1, isSupportedDevice=1 if self.gpm else 0)

    def nvmlGpmSampleAlloc(self) -> Any:
        self._enter("nvmlGpmSampleAlloc")
        return ctypes.pointer(_real.struct_c_nvmlGpmSample_t())

    def nvmlGpmSampleFree(self, sample: Any) -> None:
        self._enter("nvmlGpmSampleFree")

    def nvmlGpmSampleGet(self, h: FakeHandle, sample: Any) -> Any:
        self._enter("nvmlGpmSampleGet", h)
        if self.gpm_sample_error is not None:
            raise _real.NVMLError(self.gpm_sample_error)
        return sample

    def nvmlGpmMetricsGet(self, req: Any) -> Any:
        self._enter("nvmlGpmMetricsGet")
        by_id = {v["id"]: (name, v) for name, v in self.dev["gpm"].items()}
        for i in range(req.numMetrics):
            mid = req.metrics[i].metricId
            name, rec = by_id.get(mid, (None, {"ret": _real.NVML_ERROR_NOT_SUPPORTED, "value": 0.0}))
            req.metrics[i].nvmlReturn = rec["ret"]
            req.metrics[i].value = self.gpm_values.get(name, rec["value"]) if name else 0.0
        return req
