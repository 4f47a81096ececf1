"""Prometheus exposition: scraped over HTTP and parsed with prometheus-client's own parser.

GPU metrics come from the fake NVML (tests/fakes: a replay of a real H100's
readings, used only in tests); names and units must match dcgm-exporter's.
"""
from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import torch
import torch.nn as nn
from prometheus_client.parser import text_string_to_metric_families

import gpulens
from gpulens.profiler import open_run

from fakes.fake_pynvml import FakeNvml
from helpers import fast_sampling

GPULENS = str(Path(sys.executable).with_name("gpulens"))


def scrape(url: str) -> dict[str, list]:
    text = urllib.request.urlopen(url, timeout=10).read().decode()
    out: dict[str, list] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out.setdefault(sample.name, []).append(sample)
    return out


def test_track_exposes_dcgm_named_gpu_metrics_and_step_metrics(tmp_path):
    fake = FakeNvml(gpus=2)
    model = nn.Linear(16, 4)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with gpulens.track("prom", runs_dir=tmp_path, quiet=True, nvml=fake, sampling=fast_sampling(), profile=False,
                       count_flops=False, advise=False, prometheus_port=0) as run:
        assert run.prometheus_url.startswith("http://127.0.0.1:")  # loopback unless asked otherwise
        for _ in range(25):
            opt.zero_grad()
            with run.phase("forward"):
                loss = model(torch.randn(8, 16)).pow(2).mean()
            with run.phase("backward"):
                loss.backward()
            opt.step()
            run.step(samples=8, loss=loss)
        time.sleep(0.5)  # a few sampler ticks
        m = scrape(run.prometheus_url)
        info = open_run(run.path).meta()["gpus"]
    # dcgm-exporter names, units and labels
    util = {s.labels["gpu"]: s for s in m["DCGM_FI_DEV_GPU_UTIL"]}
    assert set(util) == {"0", "1"}
    labels = util["0"].labels
    assert labels["UUID"] == info[0]["uuid"] and labels["modelName"] == info[0]["name"]
    assert labels["device"] == "nvidia0" and labels["Hostname"] == socket.gethostname()
    assert all(0 <= s.value <= 100 for s in util.values())
    used = {s.labels["gpu"]: s.value for s in m["DCGM_FI_DEV_FB_USED"]}
    free = {s.labels["gpu"]: s.value for s in m["DCGM_FI_DEV_FB_FREE"]}
    total_mib = info[0]["memory_total"] / 2 ** 20
    assert abs(used["0"] + free["0"] - total_mib) < 1.0  # MiB, as DCGM
    tensor = m["DCGM_FI_PROF_PIPE_TENSOR_ACTIVE"]
    assert tensor and all(0.0 <= s.value <= 1.0 for s in tensor)  # PROF fields are ratios
    assert m["DCGM_FI_DEV_POWER_USAGE"][0].value > 10  # W
    assert "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION_total" in m  # a counter, in mJ
    # the run's own energy (J since it began, per GPU): counter readings of the replayed H100 rise with time
    energy = {s.labels["gpu"]: s for s in m["gpulens_energy_joules_total"]}
    assert set(energy) == {"0", "1"} and energy["0"].labels["run"] == run.id
    assert all(0 < s.value < 5000 for s in energy.values())  # well under what the board's counter holds since boot
    # the training loop, labelled with run and rank
    steps = m["gpulens_steps_total"][0]
    assert steps.value == 25 and steps.labels["rank"] == "0" and steps.labels["run"] == run.id
    hist_count = m["gpulens_step_seconds_count"][0].value
    assert hist_count == 25
    buckets = [s for s in m["gpulens_step_seconds_bucket"] if s.labels["le"] == "+Inf"]
    assert buckets[0].value == 25
    phases = {s.labels["phase"]: s.value for s in m["gpulens_phase_seconds_total"]}
    assert set(phases) == {"data_wait", "forward", "backward", "optimizer", "other"}
    assert phases["forward"] > 0 and phases["backward"] > 0
    assert m["gpulens_samples_total"][0].value == 200
    assert m["gpulens_loss"][0].value == pytest.approx(loss.item(), rel=1e-5)
    assert time.time() - m["gpulens_last_step_timestamp_seconds"][0].value < 30
    assert "gpulens_process_cpu_cores" in m and "gpulens_host_cpu_percent" in m
    # closed with the run
    with pytest.raises(OSError):
        urllib.request.urlopen(run.prometheus_url, timeout=2)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_gpulens_run_prometheus_port(tmp_path):
    from test_gpulens_run import LONG_LOOP

    script = tmp_path / "loop.py"
    script.write_text(LONG_LOOP)
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("GPULENS_")}
    proc = subprocess.Popen([GPULENS, "run", "--runs-dir", str(tmp_path / "runs"), "--quiet", "--no-advise",
                             "--prometheus-port", str(port), "--", sys.executable, str(script)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        assert proc.stdout.readline().strip() == "ready"
        m = scrape(f"http://127.0.0.1:{port}/metrics")
        assert m["gpulens_steps_total"][0].value >= 29
        assert "DCGM_FI_DEV_GPU_UTIL" not in m  # no GPU on this machine: nothing invented
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)


def test_standalone_exporter(tmp_path):
    proc = subprocess.Popen([GPULENS, "exporter", "--port", "0", "--interval", "0.2"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        url = re.search(r"http://\S+/metrics", line).group(0)
        assert url.startswith("http://127.0.0.1:")
        time.sleep(1.0)
        m = scrape(url)
        assert 0 <= m["gpulens_host_cpu_percent"][0].value <= 100
        assert "gpulens_process_cpu_cores" not in m  # the exporter's own process is not a training run
        assert "gpulens_steps_total" not in m
    finally:
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 0


def test_exporter_bad_arguments_are_one_line():
    proc = subprocess.run([GPULENS, "exporter", "--interval", "0"], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2 and "--interval must be" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_exporter_taps_the_writer_only_while_it_serves(tmp_path):
    """A run without an exporter keeps no latest values; closing the exporter detaches it from the writer."""
    from gpulens.profiler.export.prometheus import LatestSink, RunExporter
    from gpulens.profiler.record.recorder import Recorder

    rec = Recorder(tmp_path / "rank-0.db", {"name": "taps"}, fast_sampling(), FakeNvml(gpus=1))
    try:
        assert rec.writer.latest is None and rec.writer.step_tap is None
        exporter = RunExporter(rec.writer, rec.gpus or [], run_id="r", rank=0, local_rank=0, node_rank=3)
        url = f"http://127.0.0.1:{exporter.serve(0)}/metrics"
        from gpulens.profiler.store.schema import STEP_COLUMNS

        row = dict.fromkeys(STEP_COLUMNS)
        row.update(step=0, t_start=1.0, t_end=1.1, data_wait=0.01, forward=0.02, backward=0.03, optimizer=0.01,
                   other=0.0, samples=8)
        rec.writer.step(tuple(row[c] for c in STEP_COLUMNS))
        time.sleep(0.3)
        m = scrape(url)
        assert m["gpulens_steps_total"][0].value == 1 and "DCGM_FI_DEV_GPU_UTIL" in m
        # every series names its run and node: one Grafana query across a multi-node job
        assert m["gpulens_steps_total"][0].labels["node_rank"] == "3"
        assert m["DCGM_FI_DEV_GPU_UTIL"][0].labels["run"] == "r" and m["DCGM_FI_DEV_GPU_UTIL"][0].labels["node_rank"] == "3"
        exporter.close()
        assert rec.writer.latest is None and rec.writer.step_tap is None
    finally:
        rec.close()
    sink_only = Recorder(None, {}, fast_sampling(), FakeNvml(gpus=1), sink=LatestSink())
    try:
        with pytest.raises(RuntimeError, match="sink"):
            sink_only.writer  # noqa: B018  (no run database behind a sink)
    finally:
        sink_only.close()
