"""The NVML/GPM device sampler, driven by the FAKE pynvml that replays a real H100."""
from __future__ import annotations

import logging
import os

import numpy as np
import pytest
from fakes.fake_pynvml import FakeNvml
from helpers import record_for

import pynvml

from gpulens.profiler.record import device_sampler

from gpulens.profiler.record import nvml as nvml_api
from gpulens.profiler.store.metrics import CATALOG

NVML_METRICS = sorted(m for m, d in CATALOG.items() if d.source == "nvml")
GPM_METRICS = sorted(m for m, d in CATALOG.items() if d.source == "gpm")


def _by_metric(run, gpu):
    return {s.metric: s for s in run.series_list() if s.gpu == gpu}


def test_every_metric_recorded_or_explained_on_two_gpus(tmp_path):
    fake = FakeNvml(gpus=2)
    fake.processes[1] = [(os.getpid(), 123 * 2**20)]
    run = record_for(tmp_path / "run", 0.8, fake)
    assert [g["name"] for g in run.info.gpus] == ["NVIDIA H100 80GB HBM3"] * 2
    assert run.info.gpus[0]["uuid"] != run.info.gpus[1]["uuid"]
    assert run.info.gpus[0]["compute_capability"] == "9.0"
    assert run.info.meta["nvml"]["driver_version"] == "580.159.04"
    for gpu in (0, 1):
        seen = _by_metric(run, gpu)
        for metric in NVML_METRICS + GPM_METRICS:
            assert metric in seen, f"GPU {gpu}: {metric} neither recorded nor explained"
            s = seen[metric]
            if metric.startswith("gpu.nvlink"):
                # the recorded H100 answers NOT_SUPPORTED per NVLink field: absent, with the reason
                assert s.status == "unsupported" and "NotSupported" in s.reason
                assert s.count == 0
            else:
                assert s.status == "ok", (metric, s.reason)
                assert s.count > 0, metric
    power = run.series("gpu.power", 0)
    assert 70 < power.v.min() and power.v.max() < 700  # watts, from milliwatts
    assert run.series("gpu.energy", 0).v[-1] > 3000  # joules, from millijoules
    assert run.series("gpu.proc_mem", 1).v[-1] == 123 * 2**20
    assert run.series("gpu.proc_mem", 0).v[-1] == 0  # no process listed on GPU 0


def test_fast_probes_run_on_the_fast_tick_and_slow_ones_on_the_slow_tick(tmp_path):
    """Each probe runs with its group: with the slow group's interval far longer than the recording, the slow
    probes (PCIe measures 20 ms inside its call) read at the start and at close only, while the fast ones
    read on every fast tick.  Judged by counts a busy host cannot change -- a tick can only come late, never
    early -- not by a rate (a loaded 2-core machine gave the fast thread 6 ticks in 0.8 s where 40 were due,
    against 3 slow ones)."""
    fake = FakeNvml(gpus=1)
    run = record_for(tmp_path / "run", 0.3, fake, slow_interval=600.0,
                     until=lambda: fake.gpu_calls["nvmlDeviceGetPowerUsage", 0] >= 6)
    assert run.series("gpu.power", 0).t.size >= 6  # a point per fast tick
    for slow in ("gpu.pcie_rx", "gpu.pcie_tx", "gpu.energy"):
        # the slow tick due at the start (if its thread ran before the stop) and the last reading at close
        assert 1 <= run.series(slow, 0).t.size <= 2, slow


def test_unsupported_metric_is_recorded_once_and_never_polled_again(tmp_path):
    fake = FakeNvml(gpus=2, unsupported={"energy", "pcie", "throttle", "ecc"})
    # until GPU 1's power was read 7 times: a busy host gives the sampler fewer ticks in 0.8 s
    run = record_for(tmp_path / "run", 0.8, fake, until=lambda: fake.gpu_calls["nvmlDeviceGetPowerUsage", 1] >= 7)
    seen = _by_metric(run, 1)
    for metric in ("gpu.energy", "gpu.pcie_rx", "gpu.pcie_tx", "gpu.throttle", "gpu.ecc_uncorrected"):
        assert seen[metric].status == "unsupported"
        assert seen[metric].reason == "NVMLError_NotSupported: Not Supported"
        assert seen[metric].count == 0
    assert fake.calls["nvmlDeviceGetTotalEnergyConsumption"] == 2  # one probe per GPU, then never again
    assert fake.calls["nvmlDeviceGetCurrentClocksEventReasons"] == 2
    assert fake.calls["nvmlDeviceGetPcieThroughput"] == 4  # rx and tx: probed once per GPU each
    assert seen["gpu.power"].status == "ok" and seen["gpu.power"].count > 5
    summary_missing = {s.metric for s in run.series_list() if s.status == "unsupported"}
    assert "gpu.energy" in summary_missing


def test_pre_hopper_gpu_has_no_gpm_and_says_why(tmp_path):
    run = record_for(tmp_path / "run", 0.5, FakeNvml(gpm=False))
    seen = _by_metric(run, 0)
    for metric in GPM_METRICS:
        assert seen[metric].status == "unsupported"
        assert "Hopper" in seen[metric].reason
    assert run.info.gpus[0]["gpm_supported"] is False
    assert seen["gpu.util"].status == "ok" and seen["gpu.util"].count > 0


def test_gpm_refused_by_driver_is_unsupported_with_nvml_error(tmp_path):
    fake = FakeNvml(gpm_sample_error=pynvml.NVML_ERROR_NO_PERMISSION)
    run = record_for(tmp_path / "run", 0.4, fake)
    s = _by_metric(run, 0)["gpm.sm_active"]
    assert s.status == "unsupported" and "NoPermission" in s.reason


def test_gpm_values_are_percentages_between_samples(tmp_path):
    fake = FakeNvml()
    fake.gpm_values = {"NVML_GPM_METRIC_ANY_TENSOR_UTIL": 88.15, "NVML_GPM_METRIC_SM_UTIL": 90.75}
    run = record_for(tmp_path / "run", 0.7, fake, until=lambda: fake.gpu_calls["nvmlGpmSampleGet", 0] >= 5)
    tensor = run.series("gpm.tensor_active", 0)
    assert tensor.t.size >= 3
    assert np.allclose(tensor.v, 88.15)
    assert np.all(np.diff(tensor.t) > 0.1)  # two GPM samples are always > 100 ms apart


def test_gpu_falling_off_the_bus_leaves_a_gap_and_an_event(tmp_path, monkeypatch):
    monkeypatch.setattr(device_sampler, "LOST_RECHECK_S", 0.2)
    fake = FakeNvml(gpus=2)
    marks = {}

    def power_reads(gpu: int) -> int:
        return fake.gpu_calls["nvmlDeviceGetPowerUsage", gpu]

    def during(elapsed):  # by the sampler's ticks, not by seconds alone: a busy host gives it fewer of them
        if elapsed > 0.4 and "lost" not in marks:
            marks["lost"], marks["reads_at_loss"] = __import__("time").time(), power_reads(0)
            fake.lose(1)
        if elapsed > 1.0 and "back" not in marks and power_reads(0) - marks["reads_at_loss"] > 12:
            marks["back"], marks["reads_at_back"] = __import__("time").time(), power_reads(1)
            fake.recover(1)
        if "back" in marks and "reads_later" not in marks and __import__("time").time() > marks["back"] + 0.3:
            marks["reads_later"] = power_reads(1)

    run = record_for(tmp_path / "run", 1.6, fake, during=during,  # until GPU 1 was read again 0.3 s after
                     until=lambda: "reads_later" in marks and power_reads(1) - marks["reads_later"] >= 2)
    kinds = [e.kind for e in run.events()]
    assert "gpu_lost" in kinds and "gpu_recovered" in kinds
    lost = next(e for e in run.events() if e.kind == "gpu_lost")
    assert lost.gpu == 1 and "GpuIsLost" in lost.message
    t = run.series("gpu.power", 1).t
    inside = (t > marks["lost"] + 0.05) & (t < marks["back"])
    assert not inside.any(), "a lost GPU must leave a gap, not invented values"
    assert (t > marks["back"] + 0.25).any(), "sampling resumes after the GPU answers again"
    t0 = run.series("gpu.power", 0).t
    assert ((t0 > marks["lost"]) & (t0 < marks["back"])).sum() > 10, "the other GPU keeps being sampled"


def test_xid_errors_are_recorded_as_events(tmp_path):
    fake = FakeNvml(gpus=2)
    fake.inject_xid(1, 79)
    run = record_for(tmp_path / "run", 0.4, fake)
    xids = [e for e in run.events() if e.kind == "xid"]
    assert len(xids) == 1 and xids[0].gpu == 1 and xids[0].data == {"xid": 79}


def test_no_nvml_library_gives_one_log_line_and_host_metrics(tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger="gpulens")
    run = record_for(tmp_path / "run", 0.4, FakeNvml(library_missing=True))
    lines = [r.getMessage() for r in caplog.records if "GPU monitoring" in r.getMessage()]
    assert len(lines) == 1
    assert "no NVIDIA driver" in lines[0] and "host and training-loop metrics only" in lines[0]
    assert run.info.meta["nvml"]["available"] is False
    assert run.info.gpus == []
    assert [e.kind for e in run.events()] == ["nvml_unavailable"]
    # host metrics are there: at least the last reading at close (a busy host gave 5 ticks in 0.4 s, 20 due)
    assert run.series("host.cpu").t.size >= 1
    assert all(s.gpu == -1 for s in run.series_list())


def test_unexpected_exception_in_a_probe_never_escapes(tmp_path, monkeypatch):
    from gpulens.profiler.record.device_sampler import MAX_TRANSIENT_FAILURES

    fake = FakeNvml()
    calls = []

    def broken(h, sensor):
        calls.append(sensor)
        raise RuntimeError("driver returned garbage")

    fake.nvmlDeviceGetTemperature = broken
    run = record_for(tmp_path / "run", 0.5, fake, until=lambda: len(calls) >= MAX_TRANSIENT_FAILURES)
    errors = [e for e in run.events() if e.kind == "sampler_error"]
    assert len(errors) == 1 and "garbage" in errors[0].message  # said once, not once per tick
    # the other probes went on: power is read on every fast tick that read the temperature (a count, not a rate)
    assert run.series("gpu.power", 0).t.size >= len(calls)
    (temp,) = [s for s in run.series_list() if s.metric == "gpu.temp" and s.gpu == 0]
    assert temp.count == 0 and temp.status == "failed" and "garbage" in temp.reason  # given up on, with why


@pytest.mark.parametrize("spec, expected", [
    (None, [0, 1, 2, 3]),
    ("", []),
    ("2,0", [2, 0]),
    ("1,7,2", [1]),  # CUDA stops at the first invalid ordinal
    ("GPU-d402438f-9aa0-7802-656e-05dcd524b902", [2]),
    ("GPU-d402438f-9aa0-7802-656e-05dcd524b901,0", [1, 0]),
    ("-1", []),
])
def test_cuda_visible_devices_maps_to_nvml_indices(spec, expected):
    fake = FakeNvml(gpus=4)
    nvml_api.acquire(fake)
    try:
        env = {} if spec is None else {"CUDA_VISIBLE_DEVICES": spec}
        indices, _ = nvml_api.visible_nvml_indices(fake, env)
        assert indices == expected
    finally:
        nvml_api.release(fake)


def test_visible_devices_restrict_sampling(tmp_path, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2")
    fake = FakeNvml(gpus=3)
    run = record_for(tmp_path / "run", 0.3, fake)
    gpus = run.info.gpus
    assert len(gpus) == 1 and gpus[0]["index"] == 0 and gpus[0]["nvml_index"] == 2
    assert {s.gpu for s in run.series_list() if s.gpu >= 0} == {0}


def test_nvml_init_is_refcounted(tmp_path):
    fake = FakeNvml()
    a = nvml_api.acquire(fake)
    b = nvml_api.acquire(fake)
    nvml_api.release(a)
    assert fake.initialised == 1  # one shutdown must not invalidate the other user's handles
    nvml_api.release(b)
    assert fake.initialised == 0
