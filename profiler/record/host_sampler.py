"""Host and process metrics (psutil, with cheaper direct reads on Linux).

CPU figures come from deltas of cumulative CPU times read here, not from
``psutil.cpu_percent()``, whose state is global to the process and would be
disturbed by (and disturb) the user's own calls.  The 10 Hz readings use a
kept-open /proc file and ``os.times()`` where possible: psutil's versions
cost 2-10x more per call, which the sampler thread would take from the
training loop's share of the interpreter.
"""
from __future__ import annotations

import os
import sys

import psutil

from gpulens.profiler.record.others import OtherProcesses
from gpulens.profiler.record.proctree import ProcessTree
from gpulens.profiler.store.metrics import unit_of
from gpulens.profiler.store.sink import SampleSink


def _cpu_busy(times) -> tuple[float, float, float]:  # psutil scputimes
    total = sum(times)
    idle = times.idle + getattr(times, "iowait", 0.0)
    return total - idle, total, getattr(times, "steal", 0.0)


class _HostCpu:
    """(busy, total, steal) CPU seconds of the whole host since boot (steal is inside busy)."""

    def __init__(self) -> None:
        self._fd: int | None = None
        if sys.platform.startswith("linux"):
            try:
                self._fd = os.open("/proc/stat", os.O_RDONLY)
                self._tick = os.sysconf("SC_CLK_TCK")
                self.read()
            except (OSError, ValueError, IndexError):
                self.close()

    def read(self) -> tuple[float, float, float]:
        if self._fd is None:
            return _cpu_busy(psutil.cpu_times())
        line = os.pread(self._fd, 512, 0).split(b"\n", 1)[0]
        fields = [int(x) for x in line.split()[1:]]
        # user nice system idle iowait irq softirq steal (guest* are inside user)
        total = sum(fields[:8])
        idle = fields[3] + fields[4]
        steal = fields[7] if len(fields) > 7 else 0
        return (total - idle) / self._tick, total / self._tick, steal / self._tick

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


class _ProcFile:
    """A small /proc file kept open and re-read with pread (None where the kernel has none)."""

    def __init__(self, path: str) -> None:
        self._fd: int | None = None
        try:
            self._fd = os.open(path, os.O_RDONLY)
            os.pread(self._fd, 256, 0)
        except OSError:
            self.close()

    @property
    def available(self) -> bool:
        return self._fd is not None

    def read(self) -> bytes | None:
        if self._fd is None:
            return None
        try:
            return os.pread(self._fd, 512, 0)
        except OSError:
            return None

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def cpu_pressure_total(text: bytes) -> float | None:
    """Microseconds some task waited for a CPU, from /proc/pressure/cpu's ``some`` line."""
    for line in text.split(b"\n"):
        if line.startswith(b"some "):
            for field in line.split():
                if field.startswith(b"total="):
                    return float(field[6:])
    return None


def runnable_tasks(text: bytes) -> int | None:
    """Runnable tasks from /proc/loadavg's fourth field (``running/total``), the reader itself left out."""
    parts = text.split()
    if len(parts) < 4 or b"/" not in parts[3]:
        return None
    return max(0, int(parts[3].split(b"/")[0]) - 1)


class _SelfRss:
    def __init__(self, proc: psutil.Process) -> None:
        self._proc = proc
        self._fd: int | None = None
        if sys.platform.startswith("linux") and proc.pid == os.getpid():
            try:
                self._fd = os.open("/proc/self/statm", os.O_RDONLY)
                self._page = os.sysconf("SC_PAGE_SIZE")
            except (OSError, ValueError):
                self._fd = None

    def read(self) -> int:
        if self._fd is None:
            return int(self._proc.memory_info().rss)
        return int(os.pread(self._fd, 128, 0).split()[1]) * self._page

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


class HostSampler:
    def __init__(self, writer: SampleSink, tree: ProcessTree, others_interval: float = 5.0) -> None:
        self.writer = writer
        self.tree = tree
        self.cores = psutil.cpu_count() or 1
        self._others = OtherProcesses(tree, others_interval)
        self._pressure = _ProcFile("/proc/pressure/cpu")
        self._loadavg = _ProcFile("/proc/loadavg")
        self._prev_pressure: float | None = None
        if not self._pressure.available:
            writer.mark_series("host.cpu_pressure", -1, "unsupported",
                               "no /proc/pressure/cpu (Linux PSI off, or not Linux)", "%")
        # latest readings, in cores: the slow thread asks for a process walk only when the host is busier than us
        self._busy_cores = 0.0
        self._proc_cores = 0.0
        self._workers_cores = 0.0
        self._sid: dict[str, int] = {}
        self._host_cpu = _HostCpu()
        self._rss = _SelfRss(tree.root)
        self._own = tree.root.pid == os.getpid()
        self._prev_cpu = self._host_cpu.read()
        self._prev_t: float | None = None
        self._prev_slow_t: float | None = None
        self._prev_workers_t: float | None = None
        self._prev_disk = self._disk()
        self._prev_net = self._net()
        self._prev_proc = self._proc_cpu()
        self._prev_child: dict[int, float] = {}

    def _point(self, metric: str, t: float, value: float) -> None:
        sid = self._sid.get(metric)
        if sid is None:
            sid = self._sid[metric] = self.writer.series(metric, -1, unit_of(metric))
        self.writer.point(sid, t, value)

    @staticmethod
    def _disk() -> tuple[int, int] | None:
        try:
            io = psutil.disk_io_counters()
        except Exception:
            return None
        return (io.read_bytes, io.write_bytes) if io is not None else None

    @staticmethod
    def _net() -> tuple[int, int] | None:
        try:
            io = psutil.net_io_counters()
        except Exception:
            return None
        return (io.bytes_recv, io.bytes_sent) if io is not None else None

    def _proc_cpu(self) -> float:
        if self._own:
            times = os.times()
            return times.user + times.system
        ptimes = self.tree.root.cpu_times()
        return ptimes.user + ptimes.system

    def sample(self, t: float) -> None:
        """CPU and resident memory of the host and the training process (cheap: 10 Hz)."""
        dt = None if self._prev_t is None else t - self._prev_t
        self._prev_t = t

        busy, total, steal = self._host_cpu.read()
        d_total = total - self._prev_cpu[1]
        if d_total > 0:
            # a fully busy host: equal deltas of float seconds can divide to 1.000000003
            share = min(1.0, max(0.0, (busy - self._prev_cpu[0]) / d_total))
            self._busy_cores = share * self.cores
            self._point("host.cpu", t, 100.0 * share)
            self._point("host.cpu_steal", t, max(0.0, 100.0 * (steal - self._prev_cpu[2]) / d_total))
        self._prev_cpu = (busy, total, steal)

        cpu = self._proc_cpu()
        if dt:
            self._proc_cores = max(0.0, (cpu - self._prev_proc) / dt)
            self._point("proc.cpu", t, self._proc_cores)
        self._prev_proc = cpu
        self._point("proc.rss", t, float(self._rss.read()))

    def sample_slow(self, t: float) -> None:
        """Host memory, swap, disk and network (each read costs 30-80 µs: 1 Hz)."""
        dt = None if self._prev_slow_t is None else t - self._prev_slow_t
        self._prev_slow_t = t
        vm = psutil.virtual_memory()
        self._point("host.mem_used", t, float(vm.total - vm.available))
        self._point("host.swap_used", t, float(psutil.swap_memory().used))
        disk, net = self._disk(), self._net()
        self._rates(("host.disk_read", "host.disk_write"), t, dt, disk, self._prev_disk)
        self._rates(("host.net_rx", "host.net_tx"), t, dt, net, self._prev_net)
        self._prev_disk, self._prev_net = disk, net
        self._cpu_contention(t, dt)

    def _cpu_contention(self, t: float, dt: float | None) -> None:
        """Run-queue pressure, and who else uses the CPU while the host is busier than this run."""
        raw = self._pressure.read()
        waited = cpu_pressure_total(raw) if raw is not None else None
        if waited is not None:
            if self._prev_pressure is not None and dt:
                self._point("host.cpu_pressure", t, min(100.0, max(0.0, (waited - self._prev_pressure) / 1e4 / dt)))
            self._prev_pressure = waited
        load = self._loadavg.read()
        runnable = runnable_tasks(load) if load is not None else None
        if runnable is not None:
            self._point("host.runnable", t, float(runnable))
        others = self._busy_cores - self._proc_cores - self._workers_cores
        if self._others.due(t) and (others >= 0.5 or self._others.scans < 2):  # a baseline, then under contention
            try:
                found = self._others.scan(t)
            except (psutil.Error, OSError):
                found = None
            if found is not None:
                self.writer.meta(cpu_others=found)

    def _rates(self, metrics: tuple[str, str], t: float, dt: float | None,
               now: tuple[int, int] | None, prev: tuple[int, int] | None) -> None:
        """Bytes per second from two readings of a pair of cumulative counters."""
        if now is None or prev is None or not dt:
            return
        for metric, a, b in zip(metrics, now, prev):
            self._point(metric, t, max(0.0, (a - b) / dt))

    def sample_workers(self, t: float) -> None:
        """CPU and memory of the child processes: DataLoader workers (``workers.*``) apart from the rest
        (``children.*``: compile workers, a compiler, the script's subprocesses); one /proc read each."""
        dt = None if self._prev_workers_t is None else t - self._prev_workers_t
        self._prev_workers_t = t
        seen: dict[int, float] = {}
        cores = 0.0
        for prefix, children in (("workers", self.tree.workers()), ("children", self.tree.other_children())):
            cpu_delta, rss, count = self._read_children(children, seen)
            if dt:
                cores += cpu_delta / dt
                self._point(f"{prefix}.cpu", t, cpu_delta / dt)
            self._point(f"{prefix}.rss", t, rss)
            self._point(f"{prefix}.count", t, float(count))
        self._prev_child = seen
        if dt:
            self._workers_cores = cores  # the run's own children: not "other processes"

    def _read_children(self, children: dict[int, psutil.Process], seen: dict[int, float]) -> tuple[float, float, int]:
        cpu_delta = rss = 0.0
        count = 0
        for pid, child in list(children.items()):
            try:
                with child.oneshot():
                    times = child.cpu_times()
                    mem = child.memory_info()
            except psutil.Error:
                self.tree.forget(pid)
                continue
            total = times.user + times.system
            seen[pid] = total
            count += 1
            prev = self._prev_child.get(pid)
            if prev is not None:  # a child first seen contributes from its next reading on
                cpu_delta += max(0.0, total - prev)
            rss += mem.rss
        return cpu_delta, rss, count

    def close(self) -> None:
        self._host_cpu.close()
        self._rss.close()
        self._pressure.close()
        self._loadavg.close()
