"""Prometheus exposition of a run's live metrics, and a standalone node exporter.

Clusters already scrape dcgm-exporter into Prometheus/Grafana; gpulens fits
into that stack instead of inventing a transport.
Where a metric means the same as a DCGM field it carries the DCGM name,
unit and labels (``gpu``, ``UUID``, ``device``, ``modelName``, ``Hostname``),
so existing dashboards and alerts work on it: DEV utilizations in percent,
PROF activities as ratios 0-1, framebuffer in MiB, energy in mJ.  What DCGM
does not have -- the training loop, host and process -- is ``gpulens_*``,
labelled with the run and its rank.

Values are the latest readings, taken from the recorder as it writes them
(a dictionary store per point): a scrape never touches the database or NVML.
"""
from __future__ import annotations

import bisect
import errno
import logging
import socket
import threading
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from gpulens.profiler.errors import GpulensError
from gpulens.profiler.store.schema import PHASES, STEP_COLUMNS
from gpulens.profiler.store.sink import LiveValues, StepRow

if TYPE_CHECKING:
    from gpulens.profiler.store.writer import RunWriter

log = logging.getLogger("gpulens")


@dataclass(frozen=True)
class Exposed:
    name: str
    scale: float
    kind: str  # gauge | counter
    help: str


MiB = 1.0 / (1 << 20)

#: gpulens metric -> how it is exposed.  DCGM_* names follow dcgm-exporter's counters.
EXPOSED: dict[str, Exposed] = {
    "gpu.util": Exposed("DCGM_FI_DEV_GPU_UTIL", 1.0, "gauge", "GPU utilization (in %)."),
    "gpu.mem_util": Exposed("DCGM_FI_DEV_MEM_COPY_UTIL", 1.0, "gauge", "Memory utilization (in %)."),
    "gpu.mem_used": Exposed("DCGM_FI_DEV_FB_USED", MiB, "gauge", "Framebuffer memory used (in MiB)."),
    "gpu.power": Exposed("DCGM_FI_DEV_POWER_USAGE", 1.0, "gauge", "Power draw (in W)."),
    "gpu.power_limit": Exposed("DCGM_FI_DEV_POWER_MGMT_LIMIT", 1.0, "gauge", "Power management limit (in W)."),
    "gpu.energy": Exposed("DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION", 1000.0, "counter",
                          "Total energy consumption since boot (in mJ)."),
    "gpu.temp": Exposed("DCGM_FI_DEV_GPU_TEMP", 1.0, "gauge", "GPU temperature (in C)."),
    "gpu.sm_clock": Exposed("DCGM_FI_DEV_SM_CLOCK", 1.0, "gauge", "SM clock frequency (in MHz)."),
    "gpu.mem_clock": Exposed("DCGM_FI_DEV_MEM_CLOCK", 1.0, "gauge", "Memory clock frequency (in MHz)."),
    "gpu.throttle": Exposed("DCGM_FI_DEV_CLOCK_THROTTLE_REASONS", 1.0, "gauge",
                            "Current clock throttle reasons (bitmask of nvmlClocksEventReason*)."),
    "gpu.pcie_rx": Exposed("DCGM_FI_PROF_PCIE_RX_BYTES", 1.0, "gauge", "PCIe bytes received per second."),
    "gpu.pcie_tx": Exposed("DCGM_FI_PROF_PCIE_TX_BYTES", 1.0, "gauge", "PCIe bytes transmitted per second."),
    "gpu.nvlink_rx": Exposed("DCGM_FI_PROF_NVLINK_RX_BYTES", 1.0, "gauge", "NVLink bytes received per second."),
    "gpu.nvlink_tx": Exposed("DCGM_FI_PROF_NVLINK_TX_BYTES", 1.0, "gauge", "NVLink bytes transmitted per second."),
    "gpu.ecc_corrected": Exposed("DCGM_FI_DEV_ECC_SBE_VOL_TOTAL", 1.0, "counter",
                                 "Single-bit volatile ECC errors."),
    "gpu.ecc_uncorrected": Exposed("DCGM_FI_DEV_ECC_DBE_VOL_TOTAL", 1.0, "counter",
                                   "Double-bit volatile ECC errors."),
    "gpm.graphics_active": Exposed("DCGM_FI_PROF_GR_ENGINE_ACTIVE", 0.01, "gauge",
                                   "Ratio of time the graphics engine is active."),
    "gpm.sm_active": Exposed("DCGM_FI_PROF_SM_ACTIVE", 0.01, "gauge",
                             "The ratio of cycles an SM has at least 1 warp assigned."),
    "gpm.sm_occupancy": Exposed("DCGM_FI_PROF_SM_OCCUPANCY", 0.01, "gauge",
                                "The ratio of number of warps resident on an SM."),
    "gpm.tensor_active": Exposed("DCGM_FI_PROF_PIPE_TENSOR_ACTIVE", 0.01, "gauge",
                                 "Ratio of cycles the tensor (HMMA) pipe is active."),
    "gpm.hmma_active": Exposed("DCGM_FI_PROF_PIPE_TENSOR_HMMA_ACTIVE", 0.01, "gauge",
                               "Ratio of cycles the HMMA tensor pipe is active."),
    "gpm.imma_active": Exposed("DCGM_FI_PROF_PIPE_TENSOR_IMMA_ACTIVE", 0.01, "gauge",
                               "Ratio of cycles the IMMA tensor pipe is active."),
    "gpm.dfma_active": Exposed("DCGM_FI_PROF_PIPE_TENSOR_DFMA_ACTIVE", 0.01, "gauge",
                               "Ratio of cycles the DFMA tensor pipe is active."),
    "gpm.dram_bw": Exposed("DCGM_FI_PROF_DRAM_ACTIVE", 0.01, "gauge",
                           "Ratio of cycles the device memory interface is active sending or receiving data."),
    "gpm.fp16_active": Exposed("DCGM_FI_PROF_PIPE_FP16_ACTIVE", 0.01, "gauge",
                               "Ratio of cycles the fp16 pipe is active."),
    "gpm.fp32_active": Exposed("DCGM_FI_PROF_PIPE_FP32_ACTIVE", 0.01, "gauge",
                               "Ratio of cycles the fp32 pipe is active."),
    "gpm.fp64_active": Exposed("DCGM_FI_PROF_PIPE_FP64_ACTIVE", 0.01, "gauge",
                               "Ratio of cycles the fp64 pipe is active."),
    "gpu.proc_mem": Exposed("gpulens_gpu_process_memory_bytes", 1.0, "gauge",
                            "GPU memory NVML attributes to the training process and its children."),
    "host.cpu": Exposed("gpulens_host_cpu_percent", 1.0, "gauge", "Host CPU, all cores, 0-100."),
    "host.mem_used": Exposed("gpulens_host_memory_used_bytes", 1.0, "gauge", "Host memory in use."),
    "host.swap_used": Exposed("gpulens_host_swap_used_bytes", 1.0, "gauge", "Swap in use."),
    "host.disk_read": Exposed("gpulens_host_disk_read_bytes_per_second", 1.0, "gauge", "Disk reads, all disks."),
    "host.disk_write": Exposed("gpulens_host_disk_write_bytes_per_second", 1.0, "gauge", "Disk writes, all disks."),
    "host.net_rx": Exposed("gpulens_host_network_receive_bytes_per_second", 1.0, "gauge", "Network RX."),
    "host.net_tx": Exposed("gpulens_host_network_transmit_bytes_per_second", 1.0, "gauge", "Network TX."),
    "proc.cpu": Exposed("gpulens_process_cpu_cores", 1.0, "gauge", "CPU of the training process (1.0 = one core)."),
    "proc.rss": Exposed("gpulens_process_resident_memory_bytes", 1.0, "gauge", "RSS of the training process."),
    "workers.cpu": Exposed("gpulens_workers_cpu_cores", 1.0, "gauge",
                           "CPU of the DataLoader's worker processes, in cores."),
    "workers.rss": Exposed("gpulens_workers_resident_memory_bytes", 1.0, "gauge",
                           "RSS of the DataLoader workers, summed."),
    "workers.count": Exposed("gpulens_workers", 1.0, "gauge", "Live DataLoader worker processes."),
    "children.cpu": Exposed("gpulens_other_children_cpu_cores", 1.0, "gauge",
                            "CPU of the other children (compile workers, subprocesses), in cores."),
    "children.rss": Exposed("gpulens_other_children_resident_memory_bytes", 1.0, "gauge",
                            "RSS of the other children, summed."),
    "children.count": Exposed("gpulens_other_children", 1.0, "gauge",
                              "Live children that neither train nor load data."),
}

#: Metrics of the training process itself: a standalone exporter has none.
PROCESS_METRICS = {"gpu.proc_mem", "proc.cpu", "proc.rss", "workers.cpu", "workers.rss", "workers.count",
                   "children.cpu", "children.rss", "children.count"}

STEP_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
_COL = {name: i for i, name in enumerate(STEP_COLUMNS)}


class StepTally:
    """Running totals of the steps a rank wrote: a few float additions per step, no lock.

    Readers may see a step half-added (the counters of one scrape can differ
    by one step); Prometheus rates smooth that out, and the training thread
    never waits for a scrape.
    """

    def __init__(self) -> None:
        self.count = 0
        self.seconds = 0.0
        self.buckets = [0] * (len(STEP_BUCKETS) + 1)
        self.phase = dict.fromkeys(PHASES, 0.0)
        self.samples = 0.0
        self.tokens = 0.0
        self.loss: float | None = None
        self.last_end: float | None = None
        self.cuda_allocated: float | None = None
        self.cuda_peak: float | None = None

    def add(self, row: StepRow) -> None:
        duration = row[_COL["t_end"]] - row[_COL["t_start"]]
        self.count += 1
        self.seconds += duration
        self.buckets[bisect.bisect_left(STEP_BUCKETS, duration)] += 1
        phase = self.phase
        for name in PHASES:
            value = row[_COL[name]]
            if value:
                phase[name] += value
        samples, tokens, loss = row[_COL["samples"]], row[_COL["tokens"]], row[_COL["loss"]]
        if samples:
            self.samples += samples
        if tokens:
            self.tokens += tokens
        if loss is not None:
            self.loss = loss
        allocated, peak = row[_COL["mem_allocated"]], row[_COL["mem_peak"]]
        if allocated is not None:
            self.cuda_allocated = allocated
        if peak is not None:
            self.cuda_peak = peak
        self.last_end = row[_COL["t_end"]]


class MetricsCollector:
    """A prometheus-client collector over the latest values of a writer (or a :class:`LatestSink`)."""

    def __init__(self, source: LiveValues, gpus: list[dict[str, Any]], run_labels: dict[str, str] | None = None,
                 tally: StepTally | None = None, process_metrics: bool = True) -> None:
        self.source = source
        self.gpus = {int(g.get("index", i)): g for i, g in enumerate(gpus)}
        self.run_labels = run_labels or {}
        self.tally = tally
        self.process_metrics = process_metrics
        self.hostname = socket.gethostname()

    def _gpu_labels(self, gpu: int) -> dict[str, str]:
        info = self.gpus.get(gpu, {})
        return {"gpu": str(gpu), "UUID": str(info.get("uuid") or ""), "device": f"nvidia{info.get('nvml_index', gpu)}",
                "modelName": str(info.get("name") or ""), "Hostname": self.hostname}

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

        families: dict[str, Any] = {}
        latest = dict(self.source.latest or {})
        for (metric, gpu), sid in list(self.source.series_ids().items()):
            exposed = EXPOSED.get(metric)
            if exposed is None or sid not in latest:
                continue
            if metric in PROCESS_METRICS and not self.process_metrics:
                continue
            labels = self._gpu_labels(gpu) if gpu >= 0 else {"Hostname": self.hostname}
            if metric in PROCESS_METRICS:
                labels = {**labels, **self.run_labels}
            else:  # device and host series name the run and node they were sampled for (no join needed)
                labels = {**labels, **{k: v for k, v in self.run_labels.items() if k in ("run", "node_rank")}}
            family = families.get(exposed.name)
            if family is None:
                cls = CounterMetricFamily if exposed.kind == "counter" else GaugeMetricFamily
                family = families[exposed.name] = (cls(exposed.name, exposed.help, labels=list(labels)), list(labels))
            fam, names = family
            value = latest[sid][1] * exposed.scale
            fam.add_metric([labels.get(n, "") for n in names], value)
            if metric == "gpu.mem_used":
                total = self.gpus.get(gpu, {}).get("memory_total")
                if total:
                    free = families.setdefault("DCGM_FI_DEV_FB_FREE", (GaugeMetricFamily(
                        "DCGM_FI_DEV_FB_FREE", "Framebuffer memory free (in MiB).", labels=names), names))[0]
                    free.add_metric([labels.get(n, "") for n in names], max(total * MiB - value, 0.0))
        for fam, _ in families.values():
            yield fam
        yield from self._run_energy(latest)
        tally = self.tally
        if tally is None:
            return
        names = list(self.run_labels)
        values = [self.run_labels[n] for n in names]
        steps = CounterMetricFamily("gpulens_steps", "Training steps completed.", labels=names)
        steps.add_metric(values, tally.count)
        yield steps
        cumulative, buckets = 0, []
        for bound, n in zip((*STEP_BUCKETS, float("inf")), tally.buckets):
            cumulative += n
            buckets.append(("+Inf" if bound == float("inf") else repr(bound), cumulative))
        hist = HistogramMetricFamily("gpulens_step_seconds", "Wall time of a training step.", labels=names)
        hist.add_metric(values, buckets, tally.seconds)
        yield hist
        phase = CounterMetricFamily("gpulens_phase_seconds", "Step wall time by phase (data wait, forward, ...).",
                                    labels=[*names, "phase"])
        for name, seconds in tally.phase.items():
            phase.add_metric([*values, name], seconds)
        yield phase
        for name, doc, value in (("gpulens_samples", "Samples trained on.", tally.samples),
                                 ("gpulens_tokens", "Tokens trained on.", tally.tokens)):
            fam = CounterMetricFamily(name, doc, labels=names)
            fam.add_metric(values, value)
            yield fam
        for name, doc, reading in (
                ("gpulens_loss", "Loss of the latest step that reported one.", tally.loss),
                ("gpulens_last_step_timestamp_seconds", "When the latest step ended (alert on a stalled run).",
                 tally.last_end),
                ("gpulens_cuda_memory_allocated_bytes", "torch.cuda allocated memory at the latest timed step.",
                 tally.cuda_allocated),
                ("gpulens_cuda_memory_peak_bytes", "torch.cuda peak allocated memory of the run.", tally.cuda_peak)):
            if reading is not None:
                fam = GaugeMetricFamily(name, doc, labels=names)
                fam.add_metric(values, float(reading))
                yield fam


    def _run_energy(self, latest: dict[int, tuple[float, float]]) -> Iterator[Any]:
        """``gpulens_energy_joules``: each GPU's energy since this run began (its counter's rise), so that
        ``rate(gpulens_energy_joules[5m]) / rate(gpulens_steps[5m])`` is joules per step (per sample with
        gpulens_samples), labelled by run."""
        from prometheus_client.core import CounterMetricFamily

        first = getattr(self.source, "first", None)
        if self.tally is None or not first:
            return
        names = [n for n in self.run_labels if n in ("run", "node_rank")]
        fam = CounterMetricFamily("gpulens_energy_joules", "GPU energy used since the run began (NVML counter).",
                                  labels=[*names, "gpu"])
        found = False
        for (metric, gpu), sid in list(self.source.series_ids().items()):
            if metric == "gpu.energy" and sid in latest and sid in first:
                fam.add_metric([*(self.run_labels[n] for n in names), str(gpu)],
                               max(0.0, latest[sid][1] - first[sid][1]))
                found = True
        if found:
            yield fam


def check_endpoint(port: int, addr: str) -> None:
    """A port and address one can bind, or a one-line :class:`GpulensError` saying which is wrong."""
    if not isinstance(port, int) or not 0 <= port <= 65535:
        raise GpulensError(f"port {port} is not a TCP port (0-65535)")
    try:
        infos = socket.getaddrinfo(addr, port, type=socket.SOCK_STREAM,
                                   flags=socket.AI_PASSIVE | socket.AI_NUMERICSERV)
    except (socket.gaierror, UnicodeError, ValueError) as exc:
        raise GpulensError(f"cannot bind to address {addr!r}: {getattr(exc, 'strerror', None) or exc}") from None
    if port == 0:
        return
    family, kind, proto, _, sockaddr = infos[0]
    with socket.socket(family, kind, proto) as probe:  # free now? (the server binds it a moment later)
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(sockaddr)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise GpulensError(f"port {port} on {addr} is already in use (another exporter or run?)") from None
            raise GpulensError(f"cannot serve metrics on {addr}:{port}: {exc.strerror or exc}") from None


class _Server:
    """prometheus-client's HTTP server on its own registry (never the process-global one)."""

    def __init__(self, collector: MetricsCollector, port: int, addr: str) -> None:
        from prometheus_client import CollectorRegistry, start_http_server

        check_endpoint(port, addr)
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(collector)
        try:
            self.server, self.thread = start_http_server(port, addr=addr, registry=self.registry)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise GpulensError(f"port {port} on {addr} is already in use (another exporter or run?)") from None
            raise GpulensError(f"cannot serve metrics on {addr}:{port}: {exc.strerror or exc}") from None
        self.port = self.server.server_address[1]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class RunExporter:
    """Exposes one recording rank: the node's devices and host (local rank 0) and this rank's steps."""

    def __init__(self, writer: RunWriter, gpus: list[dict[str, Any]], run_id: str, rank: int, local_rank: int,
                 node_rank: int = 0) -> None:
        """``writer``: the rank's database writer, which keeps the latest values while an exposition reads them;
        ``gpus``: the devices its samplers read (the run's ``gpus`` metadata)."""
        self.writer = writer
        self.tally = StepTally()
        live = self.writer.start_exposing(self.tally.add)
        labels = {"run": run_id, "rank": str(rank), "local_rank": str(local_rank), "node_rank": str(node_rank),
                  "Hostname": socket.gethostname()}
        self.collector = MetricsCollector(live, list(gpus), labels, self.tally)
        self._server: _Server | None = None

    def serve(self, port: int, addr: str = "127.0.0.1") -> int:
        self._server = _Server(self.collector, port, addr)
        return self._server.port

    def close(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        self.writer.stop_exposing()


class LatestSink:
    """A :class:`SampleSink` and :class:`LiveValues` in one: the latest value of each series, no database
    (``gpulens exporter``)."""

    def __init__(self) -> None:
        self.latest: dict[int, tuple[float, float]] = {}
        self._ids: dict[tuple[str, int], int] = {}
        self._lock = threading.Lock()
        self.events: deque[tuple[str, str]] = deque(maxlen=100)

    def series(self, metric: str, gpu: int = -1, unit: str = "", status: str = "ok", reason: str | None = None) -> int:
        with self._lock:
            return self._ids.setdefault((metric, int(gpu)), len(self._ids) + 1)

    def series_ids(self) -> dict[tuple[str, int], int]:
        return dict(self._ids)

    def mark_series(self, metric: str, gpu: int, status: str, reason: str, unit: str = "") -> None:
        self.series(metric, gpu)

    def point(self, sid: int, t: float, value: float) -> None:
        self.latest[sid] = (t, value)

    def event(self, kind: str, message: str, gpu: int = -1, data: dict[str, Any] | None = None,
              t: float | None = None) -> None:
        self.events.append((kind, message))
        if kind in ("gpu_lost", "xid", "sampler_error"):
            log.warning("gpulens exporter: %s: %s", kind, message)

    def meta(self, **values: Any) -> None:
        pass

    def close(self, **meta: Any) -> None:
        pass


def serve_node(port: int, addr: str, interval: float) -> int:
    """``gpulens exporter``: sample this node's GPUs and host and serve them until interrupted."""
    from gpulens.profiler.record.recorder import Recorder, SamplingConfig

    check_endpoint(port, addr)  # bad input says so before any sampling starts
    fast = max(interval, 0.2)  # utilization and GPM refresh no faster
    config = SamplingConfig(device_interval=interval, util_interval=fast, gpm_interval=fast,
                            slow_interval=max(interval, 1.0), host_interval=interval,
                            workers_interval=max(interval, 1.0))
    sink = LatestSink()
    recorder = Recorder(None, {}, config, sink=sink)
    collector = MetricsCollector(sink, list(recorder.gpus or []), process_metrics=False)
    try:
        server = _Server(collector, port, addr)
    except BaseException:
        recorder.close()
        raise
    gpus = len(recorder.gpus or [])
    print(f"gpulens exporter: {gpus} GPU(s){'' if gpus else ' (no NVIDIA GPU: host metrics only)'}; "
          f"metrics on http://{addr}:{server.port}/metrics (Ctrl-C stops)", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        server.close()
        recorder.close()
    return 0
