"""The catalog of time-series metrics a run can hold.

One table, so that samplers, the reader, the report and the dashboard agree
on names, units and meaning.  A metric a GPU does not support is stored as a
series with status ``unsupported`` and the NVML error as its reason: absent,
never zero.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Metric:
    name: str
    unit: str
    label: str
    source: str  # nvml | gpm | psutil
    doc: str
    counter: bool = False  # cumulative: the change over the run matters, not percentiles


_METRICS = [
    # NVML, every visible GPU
    Metric("gpu.util", "%", "GPU busy (NVML)", "nvml",
           "Share of the last sample period in which at least one kernel ran. "
           "A single tiny kernel keeps it at 100%: it says nothing about how many SMs worked."),
    Metric("gpu.mem_util", "%", "Memory controller busy (NVML)", "nvml",
           "Share of time the memory controller was busy, not bandwidth used."),
    Metric("gpu.mem_used", "B", "GPU memory used", "nvml", "Device memory in use by all processes."),
    Metric("gpu.proc_mem", "B", "GPU memory of this run", "nvml",
           "Device memory NVML attributes to the training process and its children."),
    Metric("gpu.power", "W", "Power draw", "nvml", "Board power draw."),
    Metric("gpu.power_limit", "W", "Power limit", "nvml", "Enforced power limit."),
    Metric("gpu.energy", "J", "Energy (counter)", "nvml",
           "Total-energy counter since driver load; differences give exact energy.", counter=True),
    Metric("gpu.temp", "°C", "Temperature", "nvml", "GPU core temperature."),
    Metric("gpu.sm_clock", "MHz", "SM clock", "nvml", "Current SM clock."),
    Metric("gpu.mem_clock", "MHz", "Memory clock", "nvml", "Current memory clock."),
    Metric("gpu.throttle", "bitmask", "Clock event reasons", "nvml",
           "nvmlClocksEventReason* bits: why clocks are below their maximum."),
    Metric("gpu.pcie_rx", "B/s", "PCIe RX", "nvml", "PCIe traffic into the GPU (20 ms window)."),
    Metric("gpu.pcie_tx", "B/s", "PCIe TX", "nvml", "PCIe traffic out of the GPU (20 ms window)."),
    Metric("gpu.nvlink_rx", "B/s", "NVLink RX", "nvml", "NVLink data received, all links."),
    Metric("gpu.nvlink_tx", "B/s", "NVLink TX", "nvml", "NVLink data sent, all links."),
    Metric("gpu.ecc_uncorrected", "count", "ECC uncorrected (volatile)", "nvml",
           "Uncorrected ECC errors since the last driver load.", counter=True),
    Metric("gpu.ecc_corrected", "count", "ECC corrected (volatile)", "nvml",
           "Corrected ECC errors since the last driver load.", counter=True),
    # GPM, Hopper and newer
    Metric("gpm.graphics_active", "%", "Graphics engine active (GPM)", "gpm",
           "Share of time any compute/graphics work was active."),
    Metric("gpm.sm_active", "%", "SM activity (GPM)", "gpm",
           "Share of SMs busy, averaged over time: the honest 'how busy is the GPU'."),
    Metric("gpm.sm_occupancy", "%", "SM occupancy (GPM)", "gpm",
           "Resident warps over the SMs' maximum."),
    Metric("gpm.tensor_active", "%", "Tensor activity (GPM)", "gpm",
           "Share of time the SMs issued any tensor-core instruction."),
    Metric("gpm.hmma_active", "%", "HMMA tensor activity (GPM)", "gpm", "fp16/bf16/tf32 tensor-core activity."),
    Metric("gpm.imma_active", "%", "IMMA tensor activity (GPM)", "gpm", "Integer tensor-core activity."),
    Metric("gpm.dfma_active", "%", "DFMA tensor activity (GPM)", "gpm", "fp64 tensor-core activity."),
    Metric("gpm.dram_bw", "%", "DRAM bandwidth (GPM)", "gpm", "DRAM bandwidth used over its theoretical peak."),
    Metric("gpm.fp16_active", "%", "FP16 pipe (GPM)", "gpm", "Non-tensor fp16 math activity."),
    Metric("gpm.fp32_active", "%", "FP32 pipe (GPM)", "gpm", "Non-tensor fp32 math activity."),
    Metric("gpm.fp64_active", "%", "FP64 pipe (GPM)", "gpm", "Non-tensor fp64 math activity."),
    # psutil, host and training process
    Metric("host.cpu", "%", "Host CPU", "psutil", "All cores of the host, 0-100%."),
    Metric("host.cpu_steal", "%", "CPU steal", "psutil",
           "Share of the host's CPU time the hypervisor gave to other guests (virtual machines)."),
    Metric("host.cpu_pressure", "%", "CPU pressure", "psutil",
           "Share of time at least one runnable task waited for a CPU (Linux PSI, /proc/pressure/cpu)."),
    Metric("host.runnable", "count", "Runnable tasks", "psutil",
           "Tasks running or waiting for a CPU on the whole host (/proc/loadavg)."),
    Metric("host.mem_used", "B", "Host memory used", "psutil", "Host memory in use (total - available)."),
    Metric("host.swap_used", "B", "Swap used", "psutil", "Swap in use."),
    Metric("host.disk_read", "B/s", "Disk read", "psutil", "All disks."),
    Metric("host.disk_write", "B/s", "Disk write", "psutil", "All disks."),
    Metric("host.net_rx", "B/s", "Network RX", "psutil", "All interfaces."),
    Metric("host.net_tx", "B/s", "Network TX", "psutil", "All interfaces."),
    Metric("proc.cpu", "cores", "Training process CPU", "psutil",
           "CPU time of the training process per second (1.0 = one core busy)."),
    Metric("proc.rss", "B", "Training process RSS", "psutil", "Resident memory of the training process."),
    Metric("workers.cpu", "cores", "DataLoader workers CPU", "psutil",
           "CPU of the DataLoader's worker processes (and what they start), in cores."),
    Metric("workers.rss", "B", "DataLoader workers RSS", "psutil",
           "Resident memory of the DataLoader workers, summed."),
    Metric("workers.count", "count", "DataLoader workers", "psutil", "Number of live DataLoader worker processes."),
    Metric("children.cpu", "cores", "Other child processes CPU", "psutil",
           "CPU of the training process' other children (torch.compile's workers, a compiler, the script's "
           "subprocesses), in cores."),
    Metric("children.rss", "B", "Other child processes RSS", "psutil",
           "Resident memory of the other children, summed."),
    Metric("children.count", "count", "Other child processes", "psutil",
           "Number of live children that neither train nor load data."),
]

CATALOG: dict[str, Metric] = {m.name: m for m in _METRICS}


def unit_of(name: str) -> str:
    metric = CATALOG.get(name)
    return metric.unit if metric else ""


#: nvmlClocksEventReason* bits (``gpu.throttle``) and what each means for the user.
THROTTLE_REASONS: dict[int, str] = {
    0x1: "gpu_idle",
    0x2: "applications_clocks",
    0x4: "sw_power_cap",
    0x8: "hw_slowdown",
    0x10: "sync_boost",
    0x20: "sw_thermal",
    0x40: "hw_thermal",
    0x80: "hw_power_brake",
    0x100: "display_clocks",
}


def throttle_reasons(mask: int) -> list[str]:
    return [name for bit, name in THROTTLE_REASONS.items() if mask & bit]
