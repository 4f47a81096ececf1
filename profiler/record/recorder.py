"""Everything that records one rank: the writer and the device and host samplers.

The hooks (``track()``, ``gpulens run``, framework callbacks) create one
:class:`Recorder` per process and feed it steps; the recorder owns the
threads and makes sure closing it leaves a complete, readable database.
"""
from __future__ import annotations

import logging
import os
import platform
import socket
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import psutil

from gpulens.profiler.record import nvml as nvml_api
from gpulens.profiler.record.device_sampler import DeviceSampler, GpuState
from gpulens.profiler.record.host_sampler import HostSampler
from gpulens.profiler.record.proctree import TRAINERS_DIR, ProcessTree
from gpulens.profiler.record.sampling import SamplerThread, Task
from gpulens.profiler.store import clock
from gpulens.profiler.store.schema import SAMPLED_ELSEWHERE
from gpulens.profiler.store.sink import SampleSink
from gpulens.profiler.store.writer import RunWriter

log = logging.getLogger("gpulens")


@dataclass
class SamplingConfig:
    """Sampling rates in seconds between readings (README, "What a run records")."""

    device_interval: float = 0.1  # memory, power, clocks, temperature, throttle reasons
    util_interval: float = 0.2  # utilization.gpu/.memory refresh every 1/6-1 s on the GPU
    gpm_interval: float = 0.2  # two GPM samples must be > 100 ms apart
    slow_interval: float = 1.0  # energy counter, PCIe (blocks 20 ms), NVLink, ECC, per-process
    #                             memory, XID;
    #                             host memory, swap, disk and network
    # CPU of the host, CPU and RSS of the training process.  Not 10 Hz: the kernel counts CPU
    # time in 10 ms ticks, so a 100 ms CPU% reading is +-10% of a core of quantisation noise,
    # and on a CPU-bound loop the readings themselves cost the step ~1.5% (bench/overhead.py).
    host_interval: float = 0.5
    workers_interval: float = 1.0  # CPU and RSS of child processes (one /proc read per child)
    # other processes' CPU, by name: a walk of /proc, done only while the host is busier than the run
    others_interval: float = 5.0
    flush_interval: float = 0.3  # SIGKILL loses at most this plus one sampling interval
    devices: bool = True
    gpm: bool = True
    host: bool = True

    def validate(self) -> None:
        for name in ("device_interval", "util_interval", "gpm_interval", "slow_interval",
                     "host_interval", "workers_interval", "others_interval", "flush_interval"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and value > 0):
                raise ValueError(f"{name} must be a positive number of seconds, got {value!r}")
        if self.gpm_interval <= 0.1:
            raise ValueError("gpm_interval must be > 0.1 s: GPM samples closer than 100 ms carry no value")


def host_meta() -> dict[str, Any]:
    vm = psutil.virtual_memory()
    return {
        "hostname": socket.gethostname(),
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "cpu_count": os.cpu_count(),
        "cpu_count_physical": psutil.cpu_count(logical=False),
        "memory_total": vm.total,
        "swap_total": psutil.swap_memory().total,
    }


class Recorder:
    """Writer plus samplers for one rank database."""

    def __init__(self, db_path: Path | None, meta: dict[str, Any], config: SamplingConfig | None = None,
                 nvml: ModuleType | None = None, sample_node: bool = True, sink: SampleSink | None = None) -> None:
        """``sink``: where the samples go instead of a run database (``gpulens exporter`` keeps only the
        latest values); such a recorder has no :attr:`writer`."""
        self.config = config or SamplingConfig()
        self.config.validate()
        meta = dict(meta)
        meta.setdefault("start", clock.now())
        meta.setdefault("status", "running")
        meta["host"] = socket.gethostname()
        meta["host_info"] = host_meta()
        meta["sampling"] = asdict(self.config)
        meta["pid"] = os.getpid()
        try:
            meta["pid_create_time"] = psutil.Process().create_time()
        except psutil.Error:
            meta["pid_create_time"] = None

        self._nvml: ModuleType | None = None
        self._device: DeviceSampler | None = None
        self._host: HostSampler | None = None
        self._threads: list[SamplerThread] = []
        gpu_states: list[GpuState] = []
        notes: list[str] = []
        if sample_node and self.config.devices:
            gpu_states, nvml_meta = self._open_nvml(nvml, notes)
        else:
            nvml_meta = {"available": False, "reason": SAMPLED_ELSEWHERE}
        meta["nvml"] = nvml_meta
        meta["gpus"] = [g for g in nvml_meta.pop("_gpus", [])]
        self.gpus: list[dict[str, Any]] = meta["gpus"]

        self._writer: RunWriter | None = None
        if sink is not None:
            self.sink: SampleSink = sink
        elif db_path is not None:
            self.sink = self._writer = RunWriter(db_path, meta, self.config.flush_interval)
        else:
            raise ValueError("a Recorder needs a database path or a sink")
        for note in notes:
            self.sink.event("note", note)
        if not nvml_meta.get("available") and sample_node and self.config.devices:
            self.sink.event("nvml_unavailable", nvml_meta.get("reason", "NVML unavailable"))

        # children are listed as often as the workers are read (a /proc walk; 1 s by default)
        self.tree = ProcessTree(refresh_s=self.config.workers_interval,
                                trainers=Path(db_path).parent / TRAINERS_DIR if db_path is not None else None)
        fast: list[Task] = []
        slow: list[Task] = []
        if gpu_states and self._nvml is not None:
            self._device = DeviceSampler(self.sink, self._nvml, gpu_states, self.tree.pids,
                                         gpm=self.config.gpm)
            fast.append(Task("nvml", self.config.device_interval, self._device.sample_fast))
            fast.append(Task("nvml-util", self.config.util_interval, self._device.sample_util))
            if self.config.gpm:
                fast.append(Task("gpm", self.config.gpm_interval, self._device.sample_gpm))
            slow.append(Task("nvml-slow", self.config.slow_interval, self._device.sample_slow))
        if sample_node and self.config.host:
            self._host = HostSampler(self.sink, self.tree, self.config.others_interval)
            fast.append(Task("host", self.config.host_interval, self._host.sample))
            fast.append(Task("workers", self.config.workers_interval, self._host.sample_workers))
            slow.append(Task("host-slow", self.config.slow_interval, self._host.sample_slow))
        for name, tasks in (("gpulens-sampler", fast), ("gpulens-sampler-slow", slow)):
            if tasks:
                self._threads.append(SamplerThread(name, tasks, self._task_error))
        for thread in self._threads:
            thread.start()

    @property
    def writer(self) -> RunWriter:
        """The run database's writer (steps, windows, FLOPs, metadata go here besides the samples)."""
        if self._writer is None:
            raise RuntimeError("this Recorder samples into a sink, not a run database")
        return self._writer

    def _open_nvml(self, module: ModuleType | None, notes: list[str]) -> tuple[list[GpuState], dict[str, Any]]:
        try:
            nvml = nvml_api.acquire(module)
        except nvml_api.NvmlUnavailable as exc:
            log.warning("gpulens: no GPU monitoring: %s; recording host and training-loop metrics only", exc)
            return [], {"available": False, "reason": str(exc)}
        self._nvml = nvml
        try:
            indices, note = nvml_api.visible_nvml_indices(nvml)
            if note:
                notes.append(note)
            states, infos = [], []
            for visible, nvml_index in enumerate(indices):
                handle = nvml.nvmlDeviceGetHandleByIndex(nvml_index)
                info = nvml_api.gpu_info(nvml, visible, nvml_index, handle)
                infos.append(info.as_dict())
                states.append(GpuState(visible, nvml_index, info.uuid, handle))
        except Exception as exc:
            reason = f"listing GPUs failed ({nvml_api.describe_error(exc)})"
            log.warning("gpulens: no GPU monitoring: %s", reason)
            nvml_api.release(nvml)
            self._nvml = None
            return [], {"available": False, "reason": reason}
        meta = {"available": True, "reason": None, **nvml_api.driver_info(nvml), "_gpus": infos}
        if not states:
            meta["reason"] = note or "no visible GPU"
        return states, meta

    def _task_error(self, task: Task, exc: BaseException) -> None:
        self.sink.event("sampler_error", f"{task.name}: {type(exc).__name__}: {exc}")

    def sampler_cost(self) -> dict[str, dict[str, float]]:
        """Per task: ticks, wall and CPU seconds per tick (the samplers' own overhead)."""
        out = {}
        for thread in self._threads:
            for task in thread.tasks:
                n = max(task.ticks, 1)
                out[task.name] = {"ticks": task.ticks, "wall_s_per_tick": task.busy_s / n,
                                  "cpu_s_per_tick": task.cpu_s / n}
        return out

    def close(self, status: str = "finished", error: str | None = None, **meta: Any) -> None:
        for thread in self._threads:
            thread.stop()
        if self._device is not None:
            self._device.close()
        if self._host is not None:
            self._host.close()
        if self._nvml is not None:
            nvml_api.release(self._nvml)
            self._nvml = None
        self.sink.close(status=status, error=error, end=clock.now(), sampler_cost=self.sampler_cost(), **meta)
