"""Record what real NVML returns on this machine, for the test fake to replay.

Run on a machine with an NVIDIA GPU:  python tools/nvml_snapshot.py OUT.json
Every call gpulens makes is tried on every GPU; the value (as plain data) or
the exact NVML error (class, code, text) is written down, plus GPM readings
taken 0.3 s apart.  tests/fakes/fake_pynvml.py replays such a file.
"""
from __future__ import annotations

import json
import sys
import time

import pynvml as n


def _plain(value):
    if isinstance(value, bytes):
        return value.decode(errors="replace")
    if isinstance(value, (int, float, str)) or value is None:
        return value
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    fields = getattr(value, "_fields_", None)
    if fields:
        return {name: _plain(getattr(value, name)) for name, *_ in fields}
    if hasattr(value, "__dict__"):
        return {k: _plain(v) for k, v in vars(value).items() if not k.startswith("_")}
    return repr(value)


def _call(fn, *args):
    t0 = time.perf_counter()
    try:
        value = fn(*args)
        return {"ok": _plain(value), "us": round((time.perf_counter() - t0) * 1e6, 1)}
    except n.NVMLError as exc:
        return {"error": type(exc).__name__, "code": exc.value, "text": str(exc),
                "us": round((time.perf_counter() - t0) * 1e6, 1)}


def snapshot() -> dict:
    n.nvmlInit()
    out = {
        "nvml_version": _call(n.nvmlSystemGetNVMLVersion),
        "driver_version": _call(n.nvmlSystemGetDriverVersion),
        "cuda_driver_version": _call(n.nvmlSystemGetCudaDriverVersion),
        "pynvml_version": getattr(n, "__version__", None),
        "devices": [],
    }
    for i in range(n.nvmlDeviceGetCount()):
        h = n.nvmlDeviceGetHandleByIndex(i)
        d = {
            "name": _call(n.nvmlDeviceGetName, h),
            "uuid": _call(n.nvmlDeviceGetUUID, h),
            "pci": _call(n.nvmlDeviceGetPciInfo, h),
            "memory": _call(n.nvmlDeviceGetMemoryInfo, h),
            "cc": _call(n.nvmlDeviceGetCudaComputeCapability, h),
            "mig": _call(n.nvmlDeviceGetMigMode, h),
            "max_sm_clock": _call(n.nvmlDeviceGetMaxClockInfo, h, n.NVML_CLOCK_SM),
            "utilization": _call(n.nvmlDeviceGetUtilizationRates, h),
            "power": _call(n.nvmlDeviceGetPowerUsage, h),
            "power_limit": _call(n.nvmlDeviceGetEnforcedPowerLimit, h),
            "energy": _call(n.nvmlDeviceGetTotalEnergyConsumption, h),
            "temperature": _call(n.nvmlDeviceGetTemperature, h, n.NVML_TEMPERATURE_GPU),
            "sm_clock": _call(n.nvmlDeviceGetClockInfo, h, n.NVML_CLOCK_SM),
            "mem_clock": _call(n.nvmlDeviceGetClockInfo, h, n.NVML_CLOCK_MEM),
            "clocks_event_reasons": _call(n.nvmlDeviceGetCurrentClocksEventReasons, h),
            "pcie_tx": _call(n.nvmlDeviceGetPcieThroughput, h, n.NVML_PCIE_UTIL_TX_BYTES),
            "pcie_rx": _call(n.nvmlDeviceGetPcieThroughput, h, n.NVML_PCIE_UTIL_RX_BYTES),
            "ecc_uncorrected": _call(n.nvmlDeviceGetTotalEccErrors, h, n.NVML_MEMORY_ERROR_TYPE_UNCORRECTED,
                                     n.NVML_VOLATILE_ECC),
            "ecc_corrected": _call(n.nvmlDeviceGetTotalEccErrors, h, n.NVML_MEMORY_ERROR_TYPE_CORRECTED,
                                   n.NVML_VOLATILE_ECC),
            "processes": _call(n.nvmlDeviceGetComputeRunningProcesses, h),
            "gpm_support": _call(n.nvmlGpmQueryDeviceSupport, h),
        }
        try:
            fv = n.nvmlDeviceGetFieldValues(h, [n.NVML_FI_DEV_NVLINK_THROUGHPUT_DATA_TX,
                                                 n.NVML_FI_DEV_NVLINK_THROUGHPUT_DATA_RX])
            d["nvlink_fields"] = {"ok": [{"nvmlReturn": int(v.nvmlReturn), "ullVal": int(v.value.ullVal)}
                                         for v in fv]}
        except n.NVMLError as exc:
            d["nvlink_fields"] = {"error": type(exc).__name__, "code": exc.value, "text": str(exc)}
        try:
            es = n.nvmlEventSetCreate()
            d["register_xid"] = _call(n.nvmlDeviceRegisterEvents, h, n.nvmlEventTypeXidCriticalError, es)
            d["event_wait_0"] = _call(n.nvmlEventSetWait, es, 0)
            n.nvmlEventSetFree(es)
        except n.NVMLError as exc:
            d["register_xid"] = {"error": type(exc).__name__, "code": exc.value, "text": str(exc)}
        d["gpm"] = _gpm(h)
        out["devices"].append(d)
    n.nvmlShutdown()
    return out


def _gpm(h) -> dict:
    ids = {name: getattr(n, name) for name in dir(n)
           if name.startswith("NVML_GPM_METRIC_") and name != "NVML_GPM_METRIC_MAX"
           and getattr(n, name) < 100}
    try:
        s1, s2 = n.nvmlGpmSampleAlloc(), n.nvmlGpmSampleAlloc()
        n.nvmlGpmSampleGet(h, s1)
        time.sleep(0.3)
        n.nvmlGpmSampleGet(h, s2)
    except n.NVMLError as exc:
        return {"error": type(exc).__name__, "code": exc.value, "text": str(exc)}
    result = {}
    names = sorted(ids, key=ids.get)
    for start in range(0, len(names), 32):
        chunk = names[start:start + 32]
        req = n.c_nvmlGpmMetricsGet_t()
        req.version = n.NVML_GPM_METRICS_GET_VERSION
        req.numMetrics = len(chunk)
        req.sample1, req.sample2 = s1, s2
        for i, name in enumerate(chunk):
            req.metrics[i].metricId = ids[name]
        try:
            n.nvmlGpmMetricsGet(req)
        except n.NVMLError as exc:
            result[f"chunk{start}"] = {"error": type(exc).__name__, "code": exc.value}
            continue
        for i, name in enumerate(chunk):
            result[name] = {"id": ids[name], "ret": int(req.metrics[i].nvmlReturn),
                            "value": float(req.metrics[i].value)}
    n.nvmlGpmSampleFree(s1)
    n.nvmlGpmSampleFree(s2)
    return result


if __name__ == "__main__":
    data = snapshot()
    text = json.dumps(data, indent=1)
    if len(sys.argv) > 1:
        with open(sys.argv[1], "w") as fh:
            fh.write(text)
    print(text[:4000])
