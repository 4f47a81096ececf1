"""NVML access: a refcounted session, visible-device discovery, static GPU facts.

The ``pynvml`` module (from nvidia-ml-py) is passed in explicitly where a test
needs another one; nothing switches to a fake behind the caller's back.
"""
from __future__ import annotations

import os
import threading
from dataclasses import asdict, dataclass
from types import ModuleType
from typing import Any

_lock = threading.Lock()
_refcounts: dict[int, int] = {}

#: NVML return codes that mean "this metric will never work here" -- record
#: once as unsupported and stop asking.  Everything else is treated as a
#: transient failure and retried.
PERMANENT_ERRORS = {
    3,   # NOT_SUPPORTED
    4,   # NO_PERMISSION
    13,  # FUNCTION_NOT_FOUND (older driver)
    25,  # ARGUMENT_VERSION_MISMATCH (struct version unsupported)
    2,   # INVALID_ARGUMENT (field not valid on this device)
}
GPU_IS_LOST = 15
TIMEOUT = 10


class NvmlUnavailable(Exception):
    """NVML cannot be used at all in this process; ``str()`` says why in one line."""


def error_code(exc: BaseException) -> int | None:
    value = getattr(exc, "value", None)
    return value if isinstance(value, int) else None


def describe_error(exc: BaseException) -> str:
    """``NVMLError_NotSupported: Not Supported`` -- the class name and NVML's text."""
    try:
        text = str(exc)
    except Exception:  # NVMLError.__str__ calls into the library
        text = f"code {error_code(exc)}"
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def load_pynvml() -> ModuleType:
    try:
        import pynvml  # nvidia-ml-py
    except ImportError as exc:
        raise NvmlUnavailable(f"nvidia-ml-py is not installed ({exc})") from None
    return pynvml


def acquire(nvml: ModuleType | None = None) -> ModuleType:
    """``nvmlInit`` once per module, refcounted: one shutdown would kill every handle."""
    nvml = nvml if nvml is not None else load_pynvml()
    with _lock:
        count = _refcounts.get(id(nvml), 0)
        if count == 0:
            try:
                nvml.nvmlInit()
            except Exception as exc:  # NVMLError_LibraryNotFound, DriverNotLoaded, ...
                raise NvmlUnavailable(_init_failure(exc)) from None
        _refcounts[id(nvml)] = count + 1
    return nvml


def release(nvml: ModuleType) -> None:
    with _lock:
        count = _refcounts.get(id(nvml), 0)
        if count <= 0:
            return
        if count == 1:
            _refcounts.pop(id(nvml), None)
            try:
                nvml.nvmlShutdown()
            except Exception:
                pass
        else:
            _refcounts[id(nvml)] = count - 1


def _init_failure(exc: BaseException) -> str:
    code = error_code(exc)
    if code == 12:
        return "no NVIDIA driver on this machine (libnvidia-ml.so not found)"
    if code == 9:
        return "the NVIDIA driver is not loaded"
    if code == 4:
        return "no permission to use NVML"
    return f"NVML failed to initialise ({describe_error(exc)})"


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, (bytes, bytearray)) else str(value)


def visible_nvml_indices(nvml: ModuleType, env: dict[str, str] | None = None) -> tuple[list[int], str | None]:
    """NVML indices of the GPUs this process can use, in CUDA's order.

    ``CUDA_VISIBLE_DEVICES`` holds CUDA ordinals or UUID prefixes; CUDA stops at
    the first entry it cannot parse, and so do we.  Ordinals are taken in NVML
    (PCI bus) order, which is CUDA's order on machines with one GPU model
    (CUDA's FASTEST_FIRST only differs on mixed models).  Returns the indices
    and, when something could not be mapped, a note saying what.
    """
    env = dict(os.environ) if env is None else env
    count = nvml.nvmlDeviceGetCount()
    spec = env.get("CUDA_VISIBLE_DEVICES")
    if spec is None:
        return list(range(count)), None
    spec = spec.strip()
    if spec == "":
        return [], "CUDA_VISIBLE_DEVICES is empty: no GPU visible"
    uuids: list[str] | None = None
    out: list[int] = []
    note = None
    for raw in spec.split(","):
        item = raw.strip()
        if not item:
            break
        if item.lstrip("-").isdigit():
            idx = int(item)
            if idx < 0 or idx >= count or idx in out:
                break
            out.append(idx)
            continue
        if item.startswith("MIG-"):
            note = f"MIG device {item} in CUDA_VISIBLE_DEVICES: recorded as its parent GPU is not supported"
            break
        if uuids is None:
            uuids = [_text(nvml.nvmlDeviceGetUUID(nvml.nvmlDeviceGetHandleByIndex(i))) for i in range(count)]
        prefix = item if item.startswith("GPU-") else f"GPU-{item}"
        matches = [i for i, u in enumerate(uuids) if u.startswith(prefix)]
        if len(matches) != 1 or matches[0] in out:
            break
        out.append(matches[0])
    return out, note


@dataclass
class GpuInfo:
    """Static facts about one visible GPU, stored in the run's metadata."""

    index: int  # CUDA ordinal as the training process sees it
    nvml_index: int
    name: str
    uuid: str
    pci_bus_id: str
    memory_total: int | None
    compute_capability: str | None
    power_limit_w: float | None
    max_sm_clock_mhz: int | None
    mig_enabled: bool | None
    gpm_supported: bool | None
    gpm_reason: str | None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _try(fn, *args, default=None):
    try:
        return fn(*args)
    except Exception:
        return default


def gpu_info(nvml: ModuleType, index: int, nvml_index: int, handle: Any) -> GpuInfo:
    mem = _try(nvml.nvmlDeviceGetMemoryInfo, handle)
    cc = _try(nvml.nvmlDeviceGetCudaComputeCapability, handle)
    pci = _try(nvml.nvmlDeviceGetPciInfo, handle)
    limit = _try(nvml.nvmlDeviceGetEnforcedPowerLimit, handle)
    mig = _try(nvml.nvmlDeviceGetMigMode, handle)
    max_clock = _try(nvml.nvmlDeviceGetMaxClockInfo, handle, nvml.NVML_CLOCK_SM)
    gpm_ok, gpm_reason = gpm_support(nvml, handle)
    return GpuInfo(
        index=index,
        nvml_index=nvml_index,
        name=_text(_try(nvml.nvmlDeviceGetName, handle, default="unknown GPU")),
        uuid=_text(_try(nvml.nvmlDeviceGetUUID, handle, default="")),
        pci_bus_id=_text(getattr(pci, "busId", "")) if pci is not None else "",
        memory_total=int(mem.total) if mem is not None else None,
        compute_capability=f"{cc[0]}.{cc[1]}" if cc else None,
        power_limit_w=limit / 1000.0 if limit is not None else None,
        max_sm_clock_mhz=int(max_clock) if max_clock is not None else None,
        mig_enabled=bool(mig[0]) if mig else None,
        gpm_supported=gpm_ok,
        gpm_reason=gpm_reason,
    )


def gpm_support(nvml: ModuleType, handle: Any) -> tuple[bool, str | None]:
    """Whether GPM metrics can be read on this device, and if not, why."""
    query = getattr(nvml, "nvmlGpmQueryDeviceSupport", None)
    if query is None:
        return False, "this nvidia-ml-py has no GPM API (upgrade nvidia-ml-py)"
    try:
        supported = bool(query(handle).isSupportedDevice)
    except Exception as exc:
        return False, f"GPM support query failed ({describe_error(exc)})"
    if not supported:
        return False, "GPM not supported on this GPU (needs Hopper or newer)"
    mig = _try(nvml.nvmlDeviceGetMigMode, handle)
    if mig and mig[0]:
        return False, "MIG mode is on: per-instance GPM is not recorded"
    return True, None


def driver_info(nvml: ModuleType) -> dict[str, Any]:
    driver = _try(nvml.nvmlSystemGetDriverVersion)
    cuda = _try(nvml.nvmlSystemGetCudaDriverVersion)
    return {
        "driver_version": _text(driver) if driver is not None else None,
        "cuda_driver_version": f"{cuda // 1000}.{(cuda % 1000) // 10}" if isinstance(cuda, int) else None,
        "nvml_version": _text(_try(nvml.nvmlSystemGetNVMLVersion) or "") or None,
    }
