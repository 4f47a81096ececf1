"""GPU truth: the samplers against a real NVIDIA GPU under known loads.

These run only where CUDA is available (the device tool's H100); elsewhere
they are skipped.  Each test prints the figures it saw, so a device session
can paste them into its notes.
"""
from __future__ import annotations

import json
import time

import numpy as np
import pytest

pytestmark = pytest.mark.gpu

NVML_METRICS = ("gpu.util", "gpu.mem_util", "gpu.mem_used", "gpu.power", "gpu.power_limit", "gpu.energy",
                "gpu.temp", "gpu.sm_clock", "gpu.mem_clock", "gpu.throttle", "gpu.pcie_rx", "gpu.pcie_tx",
                "gpu.nvlink_rx", "gpu.nvlink_tx", "gpu.ecc_uncorrected", "gpu.ecc_corrected", "gpu.proc_mem")
GPM_METRICS = ("gpm.sm_active", "gpm.sm_occupancy", "gpm.tensor_active", "gpm.dram_bw",
               "gpm.fp16_active", "gpm.fp32_active", "gpm.fp64_active")


def _record(tmp_path, load, seconds: float, name: str):
    """Run ``load`` on the GPU for ``seconds`` under a real Recorder; return a reader."""
    import torch

    from gpulens.profiler import open_run
    from gpulens.profiler.record.recorder import Recorder

    run_dir = tmp_path / name
    rec = Recorder(run_dir / "rank-0.db", {"name": name}, None)
    time.sleep(0.5)  # idle lead-in
    t_load0 = time.time()
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        load()
        torch.cuda.synchronize()
    t_load1 = time.time()
    rec.close("finished")
    return open_run(run_dir), (t_load0 + 0.5, t_load1), rec.sampler_cost()


def _mean(run, metric, window):
    s = run.series(metric, 0, t0=window[0], t1=window[1])
    assert s is not None, f"{metric} not recorded"
    return float(np.mean(s.v)) if len(s) else float("nan")


def _note(gpu_out, name, data):
    print(name, json.dumps(data))
    if gpu_out is not None:
        gpu_out.mkdir(parents=True, exist_ok=True)
        with open(gpu_out / "gpu_figures.jsonl", "a") as fh:
            fh.write(json.dumps({"test": name, **data}) + "\n")


def test_every_nvml_metric_is_read_or_explained(tmp_path, gpu_out):
    import torch

    x = torch.randn(4096, 4096, device="cuda")
    run, window, cost = _record(tmp_path, lambda: x @ x, 2.0, "nvml-all")
    infos = {s.metric: s for s in run.series_list() if s.gpu == 0}
    seen = {}
    for metric in NVML_METRICS + GPM_METRICS:
        assert metric in infos, f"{metric} neither recorded nor marked unsupported"
        s = infos[metric]
        if s.status == "ok":
            assert s.count > 0
            seen[metric] = float(np.mean(run.series(metric, 0).v))
        else:
            assert s.reason, f"{metric} is {s.status} without a reason"
            seen[metric] = f"{s.status}: {s.reason}"
    assert 0 <= seen["gpu.util"] <= 100
    assert seen["gpu.power"] > 10
    assert 10 < seen["gpu.temp"] < 110
    assert seen["gpu.sm_clock"] > 100
    gpu = run.info.gpus[0]
    _note(gpu_out, "nvml_all", {"metrics": seen, "gpu": gpu, "sampler_cost": cost})


def test_gpm_tensor_activity_under_bf16_matmul(tmp_path, gpu_out):
    import torch

    gpu = torch.cuda.get_device_properties(0)
    if gpu.major < 9:
        pytest.skip("GPM needs Hopper or newer")
    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    run, window, _ = _record(tmp_path, lambda: a @ b, 3.0, "gpm-bf16")
    tensor = _mean(run, "gpm.tensor_active", window)
    hmma = _mean(run, "gpm.hmma_active", window)
    sm = _mean(run, "gpm.sm_active", window)
    util = _mean(run, "gpu.util", window)
    _note(gpu_out, "gpm_bf16_matmul", {"tensor_active": tensor, "hmma_active": hmma, "sm_active": sm,
                                       "gpu_util": util})
    assert tensor > 40, f"bf16 matmul loop shows tensor activity {tensor:.1f}%"
    assert sm > 80


def test_gpm_dram_bandwidth_under_device_copy(tmp_path, gpu_out):
    import torch

    if torch.cuda.get_device_properties(0).major < 9:
        pytest.skip("GPM needs Hopper or newer")
    src = torch.empty(2 * 1024**3, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    run, window, _ = _record(tmp_path, lambda: dst.copy_(src), 3.0, "gpm-copy")
    dram = _mean(run, "gpm.dram_bw", window)
    tensor = _mean(run, "gpm.tensor_active", window)
    _note(gpu_out, "gpm_device_copy", {"dram_bw": dram, "tensor_active": tensor,
                                       "mem_util": _mean(run, "gpu.mem_util", window)})
    assert dram > 60, f"device copy shows DRAM bandwidth {dram:.1f}%"
    assert tensor < 5


def test_tiny_kernels_fool_gpu_util_but_not_sm_activity(tmp_path, gpu_out):
    """The classic misleading case: one single-block kernel at a time keeps utilization.gpu at 100%.

    ``torch.cuda._sleep`` spins one thread block for a number of cycles: the GPU
    is "busy" all the time while 1 of its SMs works.
    """
    import torch

    if torch.cuda.get_device_properties(0).major < 9:
        pytest.skip("GPM needs Hopper or newer")
    sms = torch.cuda.get_device_properties(0).multi_processor_count

    def spin():
        for _ in range(10):
            torch.cuda._sleep(20_000_000)  # ~10 ms at ~2 GHz, one block

    run, window, _ = _record(tmp_path, spin, 3.0, "spin-kernel")
    util = _mean(run, "gpu.util", window)
    sm = _mean(run, "gpm.sm_active", window)
    _note(gpu_out, "single_block_kernel", {"gpu_util": util, "sm_active": sm, "sms": sms,
                                           "sm_occupancy": _mean(run, "gpm.sm_occupancy", window)})
    assert util > 90, f"utilization.gpu {util:.1f}% while a kernel runs all the time"
    assert sm < 5, f"SM activity {sm:.1f}% with one busy SM out of {sms}"


def test_track_on_cuda_records_gpu_times_memory_and_loss(tmp_path, gpu_out):
    import torch
    import torch.nn as nn

    import gpulens
    from gpulens.profiler import open_run

    model = nn.Sequential(*[nn.Sequential(nn.Linear(1024, 1024), nn.ReLU()) for _ in range(8)]).cuda()
    opt = torch.optim.AdamW(model.parameters())
    data = [torch.randn(256, 1024) for _ in range(8)]
    with gpulens.track("cuda-smoke", runs_dir=tmp_path, warmup_steps=2) as run:
        for step in range(60):
            with run.phase("data_wait"):
                x = data[step % 8].cuda(non_blocking=True)
            with run.phase("forward"):
                loss = model(x).square().mean()
            with run.phase("backward"):
                loss.backward()
            with run.phase("optimizer"):
                opt.step()
                opt.zero_grad(set_to_none=True)
            run.step(samples=256, loss=loss)
            time.sleep(0.025)  # steps >= 20 ms: the loss is captured on every step
    reader = open_run(run.path)
    steps = reader.steps()
    assert len(steps) == 60
    assert np.isfinite(steps.loss).all(), "every CUDA loss must be resolved, without a sync"
    assert np.isfinite(steps.gpu_step).sum() >= 3
    assert np.nanmax(steps.mem_peak) > 8 * 1024 * 1024 * 4
    timed = np.isfinite(steps.gpu_step)
    parts = steps.gpu_data_wait + steps.gpu_forward + steps.gpu_backward + steps.gpu_optimizer + steps.gpu_other
    assert np.allclose(parts[timed], steps.gpu_step[timed], rtol=1e-6)
    _note(gpu_out, "track_cuda", {"timed_steps": int(timed.sum()),
                                  "gpu_forward_ms": float(np.nanmean(steps.gpu_forward) * 1e3),
                                  "host_forward_ms": float(np.mean(steps.forward) * 1e3),
                                  "mem_peak": float(np.nanmax(steps.mem_peak))})


def _train_mlp(tmp_path, name, dtype, tf32=False, steps=40):
    """A matmul-heavy MLP trained under track() with profiler windows; returns the reader."""
    import torch
    import torch.nn as nn

    import gpulens
    from gpulens.hooks.track.profiling import ProfileConfig
    from gpulens.profiler import open_run

    torch.backends.cuda.matmul.allow_tf32 = tf32
    model = nn.Sequential(*[nn.Sequential(nn.Linear(4096, 4096), nn.ReLU()) for _ in range(6)]).cuda()
    opt = torch.optim.SGD(model.parameters(), lr=1e-4)
    x = torch.randn(2048, 4096, device="cuda")
    with gpulens.track(name, runs_dir=tmp_path, quiet=True,
                       profile=ProfileConfig(every=15, first=8, warmup=1, active=3)) as run:
        for _ in range(steps):
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=dtype == "bf16"):
                loss = model(x).float().square().mean()
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            run.step(loss=loss)
    torch.backends.cuda.matmul.allow_tf32 = False
    return open_run(run.path)


@pytest.mark.parametrize("dtype, tf32", [("bf16", False), ("fp32", False), ("fp32", True)])
def test_tensor_core_classification_agrees_with_gpm(tmp_path, gpu_out, dtype, tf32):
    """Kernels we call tensor-core must show GPM tensor activity in the same windows, and vice versa."""
    import torch

    from gpulens.profiler import RunAnalysis

    if torch.cuda.get_device_properties(0).major < 9:
        pytest.skip("GPM needs Hopper or newer")
    run = _train_mlp(tmp_path, f"tc-{dtype}-{tf32}", dtype, tf32)
    ks = RunAnalysis(run).kernel_view
    assert ks.windows, ks.window_errors
    assert ks.has_gpu and ks.kernels
    tensor = []
    for w in run.windows():
        s = run.series("gpm.tensor_active", 0, t0=w.t_start, t1=w.t_end + 0.3)
        tensor.extend(s.v.tolist())
    gpm_tensor = float(np.mean(tensor)) if tensor else float("nan")
    share = ks.tensor_core_share
    _note(gpu_out, f"tc_vs_gpm_{dtype}_tf32{tf32}", {"tc_share": share, "gpm_tensor_active": gpm_tensor,
                                                     "top": [k.name[:80] for k in ks.kernels[:3]],
                                                     "gpu_summary": [g.as_dict() for g in ks.gpu_summary]})
    # GPM averages 200 ms intervals and a window lasts ~100 ms: the window's tensor activity is
    # diluted (measured 6.6% bf16, 13.2% TF32 on the H100), yet clearly apart from 0.003% for fp32.
    if dtype == "bf16" or tf32:
        assert share > 0.5 and gpm_tensor > 2
    else:
        assert share < 0.05 and gpm_tensor < 1


def test_mfu_of_a_bf16_matmul_loop_is_near_the_measured_ceiling(tmp_path, gpu_out):
    import torch

    import gpulens
    from gpulens.profiler import open_run
    from gpulens.profiler.analysis.run_analysis import summarize

    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    with gpulens.track("mfu", runs_dir=tmp_path, quiet=True, profile=False, flops_step=3) as run:
        for _ in range(30):
            for _ in range(4):
                a @ b
            torch.cuda.synchronize()
            run.step()
    s = summarize(open_run(run.path))
    mfu = s["mfu"]
    _note(gpu_out, "mfu_bf16_8192", mfu)
    assert mfu["flops_per_step"] == pytest.approx(4 * 2 * 8192**3, rel=1e-6)
    assert list(mfu["by_dtype"]) == ["bf16"]
    assert 50 < mfu["mfu_pct"] < 100, mfu


def test_profiled_cuda_run_reports_kernel_view(tmp_path, gpu_out):
    from gpulens.profiler.analysis.run_analysis import summarize

    run = _train_mlp(tmp_path, "kernel-view", "bf16")
    s = summarize(run)
    assert s["gpu_summary"] and s["gpu_summary"][0]["gpu_utilization_pct"] > 20  # 49% measured on the H100
    assert s["temporal_breakdown"] and s["temporal_breakdown"][0]["compute_pct"] > 50
    assert s["launch"]["kernels_per_step"] > 10
    assert s["step_breakdown_us"]["Kernel"] > 0
    flagged = run.steps().flags
    assert (flagged & 2).sum() >= 8  # two windows of warmup + active steps (FLOPs counted in the first warm-up)
    _note(gpu_out, "kernel_view", {k: s[k] for k in ("gpu_summary", "temporal_breakdown", "step_breakdown_us",
                                                     "tensor_core_share", "mfu")})


def test_cuda_windows_shapes_first_window_and_unscaled_fp16_loss(tmp_path, gpu_out):
    """On CUDA the first window keeps input shapes (GEMM alignment), later ones not (a shorter stop); an
    enabled GradScaler's loss is recorded unscaled, without a sync."""
    import torch
    import torch.nn as nn

    import gpulens
    from gpulens.hooks.track.profiling import ProfileConfig
    from gpulens.profiler import open_run
    from gpulens.profiler.analysis.trace import load_trace

    model = nn.Sequential(nn.Linear(1024, 1024), nn.ReLU(), nn.Linear(1024, 1)).cuda()
    opt = torch.optim.SGD(model.parameters(), lr=1e-4)
    scaler = torch.amp.GradScaler("cuda")
    x = torch.randn(512, 1024, device="cuda")
    run = gpulens.track("fp16-scaler", runs_dir=tmp_path, auto=True, quiet=True, advise=False,
                        profile=ProfileConfig(every=10, first=4, warmup=1, active=2))
    losses = []
    for _ in range(30):
        with torch.autocast("cuda", dtype=torch.float16):
            loss = model(x).float().square().mean()
        losses.append(loss.detach())
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        opt.zero_grad(set_to_none=True)
    run.close()
    reader = open_run(run.path)
    steps = reader.steps()
    expected = torch.stack(losses).cpu().numpy()
    got = steps.loss
    ok = np.isfinite(got)
    # a CUDA loss is copied at most every 20 ms (hooks/track/cuda.py): these 30 steps take ~0.15 s on an H200,
    # so about 6 are read (seen: 6 of 30) -- each of them unscaled (the scale is 65536)
    assert ok.sum() >= 3 and np.allclose(got[ok], expected[:len(got)][ok], rtol=1e-3)
    windows = reader.windows()
    shaped = [bool(load_trace(w.path).input_dims) for w in windows]
    assert shaped[0] and not any(shaped[1:])
    _note(gpu_out, "fp16_scaler_shapes", {"losses_recorded": int(ok.sum()), "windows_with_shapes": shaped})


def test_cuda_what_if_energy_and_nvtx(tmp_path, gpu_out):
    """Issue 17 on a real GPU: a synthetic-data what-if over pinned CUDA-bound batches, energy per step from
    the live NVML counter against integrated power, and NVTX ranges on a CUDA build of torch."""
    import torch
    import torch.nn as nn
    from torch.utils.data import DataLoader, TensorDataset

    import gpulens
    from gpulens.hooks.track.ranges import TraceRanges
    from gpulens.profiler import RunAnalysis, open_run
    from gpulens.profiler.analysis.energy import curve

    assert TraceRanges(torch, nvtx=True).nvtx  # a CUDA build has NVTX
    model = nn.Sequential(*[nn.Sequential(nn.Linear(2048, 2048), nn.ReLU()) for _ in range(6)]).cuda()
    opt = torch.optim.AdamW(model.parameters())

    def slow_collate(items):
        time.sleep(0.02)  # storage-bound input
        return torch.utils.data.default_collate(items)

    data = TensorDataset(torch.randn(8192, 2048))
    loader = DataLoader(data, batch_size=256, pin_memory=True, collate_fn=slow_collate)
    with gpulens.track("cuda-what-if", runs_dir=tmp_path, quiet=True, nvtx=True, advise=False,
                       what_if="synthetic-data:at=8,steps=12") as run:
        for (x,) in run.loader(loader):
            assert x.is_pinned()  # replayed batches too: pinned as the loader made them
            loss = model(x.cuda(non_blocking=True)).square().mean()
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            run.step(loss=loss)
    with open_run(run.path) as reader:
        report = RunAnalysis(reader).report().as_dict()
        counter, power = reader.series("gpu.energy", 0), reader.series("gpu.power", 0)
    w, e = report["what_if"], report["energy"]
    assert w["status"] == "done" and w["step_time_change"] < -0.3
    assert e["available"] and e["source"] == "nvml-energy-counter" and e["step_j_median"] > 0
    a, b = curve(0, counter, None), curve(0, None, power)
    _note(gpu_out, "cuda_what_if_energy", {"what_if": w, "energy": e,
                                           "counter_j": float(a.joules[-1]), "integrated_j": float(b.joules[-1])})
    assert abs(a.joules[-1] - b.joules[-1]) <= 0.15 * a.joules[-1]


def test_cuda_batch_size_what_if_tries_what_fits_and_refuses_what_may_not(tmp_path, gpu_out):
    """On CUDA a bigger batch is tried only while the peak so far, scaled to it, stays under 85 % of the
    GPU: 4x a small MLP batch runs (more samples/s), 100000x is refused before any allocation."""
    import torch
    import torch.nn as nn

    import gpulens
    from gpulens.profiler import RunAnalysis, open_run

    def train(name, what_if):
        model = nn.Sequential(nn.Linear(1024, 4096), nn.ReLU(), nn.Linear(4096, 10)).cuda()
        opt = torch.optim.SGD(model.parameters(), lr=1e-3)
        batches = [(torch.randn(64, 1024, device="cuda"), torch.randint(0, 10, (64,), device="cuda"))] * 60
        with gpulens.track(name, runs_dir=tmp_path, quiet=True, advise=False, what_if=what_if) as run:
            for x, y in run.loader(batches):
                loss = nn.functional.cross_entropy(model(x), y)
                loss.backward()
                opt.step()
                opt.zero_grad(set_to_none=True)
                run.step(loss=loss)
        with open_run(run.path) as reader:
            return RunAnalysis(reader).report().as_dict()["what_if"]

    grown = train("bs-4x", "batch-size=256:at=10,steps=20")
    refused = train("bs-huge", "batch-size=6400000:at=10,steps=20")
    _note(gpu_out, "cuda_batch_size_what_if", {"grown": grown, "refused": refused})
    assert grown["status"] == "done" and grown["batch_size"] == 256 and grown["samples_per_s_change"] > 0.5
    assert refused["status"] == "skipped" and "GiB" in refused["reason"] and "probe" in refused["reason"]
    assert refused["base_batch"] == 64 and refused["steps"] == 0  # the reason names the batch it scaled from


def test_sm_activity_by_phase_follows_where_the_kernels_ran(tmp_path, gpu_out):
    """GPM SM activity split by host phase on a real GPU: data waits of varying length with an idle GPU,
    forward ending in a sync (its kernels run inside it), a short backward. The fit must put the activity
    in forward, not in the waits (a recorded H200 run once had it backwards, from its warm-up readings)."""
    import torch

    import gpulens
    from gpulens.profiler import open_run
    from gpulens.profiler.analysis.advisor.measure import PHASES
    from gpulens.profiler.analysis.phase_activity import activity_by_phase

    rng = np.random.default_rng(0)
    a = torch.randn(4096, 4096, device="cuda", dtype=torch.bfloat16)
    (a @ a).sum().item()  # CUDA and cuBLAS initialised before the clock starts (run first, it took 8 s of 8)

    def batches():
        while True:
            time.sleep(float(rng.uniform(0.01, 0.12)))  # input: the GPU idles
            yield a

    deadline = time.monotonic() + 12.0
    with gpulens.track("sm-by-phase", runs_dir=tmp_path, quiet=True, advise=False, profile=False) as run:
        for x in run.loader(batches()):
            with run.phase("forward"):
                for _ in range(int(rng.integers(20, 120))):
                    x = x @ a
                torch.cuda.synchronize()
            with run.phase("backward"):
                time.sleep(0.002)
            run.step(samples=4096)
            if time.monotonic() > deadline:
                break
    with open_run(run.path) as reader:
        steps = reader.steps()
        sm = reader.series("gpm.sm_active", 0)
        interval = float((reader.info.meta.get("sampling") or {}).get("gpm_interval") or 0.2)
    fit = activity_by_phase("gpm.sm_active", steps.t_start, steps.t_end, {p: getattr(steps, p) for p in PHASES},
                            sm.t, sm.v, interval, steady=steps.steady())
    _note(gpu_out, "sm_by_phase", {"by_phase": fit and fit.by_phase, "error": fit and fit.error,
                                   "steps": int(len(steps)), "readings": int(len(sm))})
    assert fit is not None and "data_wait" in fit.by_phase and "forward" in fit.by_phase
    assert fit.by_phase["data_wait"] < 5 + 3 * fit.error["data_wait"]
    assert fit.by_phase["forward"] > 60 - 3 * fit.error["forward"]


def test_phase_gpu_busy_tells_a_hidden_data_wait_from_an_exposed_one(tmp_path, gpu_out):
    """From the window's gpulens ranges: forward's work left queued (no sync) runs through the next data
    wait; with a sync at the end of forward the GPU idles through the waits; a GPU that falls ever further
    behind runs the window's kernels after it closes, and the split says it does not know."""
    import torch

    import gpulens
    from gpulens.hooks.track.profiling import ProfileConfig
    from gpulens.profiler import RunAnalysis, open_run

    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)

    def batches(n):
        for _ in range(n):
            time.sleep(0.02)  # input: 20 ms on the host
            yield a

    def train(name, matmuls, sync):
        with gpulens.track(name, runs_dir=tmp_path, quiet=True, advise=False,
                           profile=ProfileConfig(every=100, first=8, warmup=1, active=3)) as run:
            for x in run.loader(batches(20)):
                with run.phase("forward"):
                    for _ in range(matmuls):  # ~1.1 TFLOP each: ~1.7 ms of GPU work, launched in ~50 µs
                        x = x @ a
                    if sync:
                        torch.cuda.synchronize()
                run.step(samples=8192)
            torch.cuda.synchronize()
        with open_run(run.path) as reader:
            return RunAnalysis(reader).report(suggestions=False).as_dict()["phase_gpu_busy"]

    hidden = train("queued", 8, sync=False)  # ~13 ms of work per ~21 ms step: it runs into the next wait
    exposed = train("synced", 8, sync=True)
    behind = train("behind", 30, sync=False)  # ~50 ms of work per ~21 ms step: ever further behind
    _note(gpu_out, "phase_gpu_busy", {"queued": hidden, "synced": exposed, "behind": behind})
    assert hidden["complete"] and hidden["phases"]["data_wait"]["gpu_busy_share"] > 0.3
    assert exposed["complete"] and exposed["phases"]["data_wait"]["gpu_busy_share"] < 0.05
    assert exposed["phases"]["forward"]["gpu_busy_share"] > 0.8  # the sync is inside forward's range
    assert not behind["complete"] and behind["reason"].startswith("the GPU ran") and behind["phases"] == {}


def test_profile_on_demand_with_a_cuda_memory_snapshot(tmp_path, gpu_out):
    """`gpulens profile --memory` on a CUDA loop: the window and an allocator snapshot that PyTorch's viewer
    reads (a pickle with the allocator's segments), under the size cap."""
    import pickle

    import torch
    import torch.nn as nn

    import gpulens
    from gpulens.hooks.track.memory_snapshot import MAX_BYTES
    from gpulens.profiler import open_run
    from gpulens.profiler.store import requests

    model = nn.Sequential(*[nn.Sequential(nn.Linear(1024, 1024), nn.ReLU()) for _ in range(4)]).cuda()
    opt = torch.optim.AdamW(model.parameters())
    asked = None
    with gpulens.track("cuda-on-demand", runs_dir=tmp_path, profile=False, quiet=True) as run:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            loss = model(torch.randn(256, 1024, device="cuda")).square().mean()
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            run.step(samples=256, loss=loss)
            time.sleep(0.01)
            if asked is None and run.steps >= 10:
                asked = requests.new_request(3, None, True, "cli")
                requests.write_request(run.path, asked)
            answer = requests.read_acks(run.path, asked.id).get(0) if asked is not None else None
            if answer is not None and answer.final:
                break
    ack = requests.read_acks(run.path, asked.id)[0]
    assert ack.status == "done", ack
    snapshot_path = run.path / ack.memory_path
    size = snapshot_path.stat().st_size
    snapshot = pickle.loads(snapshot_path.read_bytes())
    assert size <= MAX_BYTES and snapshot["segments"], size
    with open_run(run.path) as reader:
        (window,) = [w for w in reader.windows() if w.trigger == "on demand"]
    assert window.last_step - window.first_step == 2 and window.path.is_file()
    _note(gpu_out, "profile_memory_snapshot", {"bytes": size, "segments": len(snapshot["segments"]),
                                               "window": [window.first_step, window.last_step]})


@pytest.mark.parametrize("what_if, change", [("autocast=bf16", {"autocast": "bf16"}),
                                             ("channels-last", {"channels_last": True}),
                                             ("optimizer=fused", {"fused": True})],
                         ids=["autocast", "channels-last", "fused"])
def test_cuda_what_ifs_measure_their_stretch_and_hand_the_loop_back(tmp_path, gpu_out, what_if, change):
    """bf16 autocast, channels-last and the fused optimizer on CUDA, each for steps 20-39 of a conv net in fp32:
    the stretch runs and is flagged, the loop gets fp32 results, contiguous weights and its optimizer's own
    switches back; what the advisor proposes from the measurement goes to the notes (a window at step 60
    gives the precision and layout rules their kernels)."""
    import torch
    import torch.nn as nn

    import gpulens
    from gpulens.profiler import open_run
    from gpulens.profiler.analysis.run_analysis import RunAnalysis
    from gpulens.profiler.store.schema import FLAG_WHATIF

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 64, 3, padding=1), nn.ReLU(), nn.Conv2d(64, 64, 3, padding=1), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 10)).cuda()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    data = [(torch.randn(64, 3, 64, 64, device="cuda"), torch.randint(0, 10, (64,), device="cuda")) for _ in range(8)]
    dtypes = set()
    with gpulens.track(f"cuda-{what_if}", runs_dir=tmp_path, model=model, quiet=True, advise=False,
                       profile_every=60, what_if=f"{what_if}:at=20,steps=20") as run:
        for i in range(90):
            x, y = data[i % len(data)]
            out = model(x)
            dtypes.add(out.dtype)
            loss = nn.functional.cross_entropy(out, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            run.step(samples=64, loss=loss)
    assert dtypes == {torch.float32}
    assert all(p.is_contiguous() for p in model.parameters())
    assert not opt.param_groups[0]["fused"]
    with open_run(run.path) as reader:
        steps = reader.steps()
        analysis = RunAnalysis(reader)
        w = analysis.report().as_dict()["what_if"]
        advice = analysis.advice.as_dict()["suggestions"]
    assert w["status"] == "done", w
    assert list(steps.step[(steps.flags & FLAG_WHATIF) != 0])[:20] == list(range(20, 40))
    proposed = [(s["id"], s["prediction"]) for s in advice if s.get("change") == change]
    _note(gpu_out, f"cuda_what_if_{what_if}", {"what_if": w, "proposed": proposed,
                                               "ids": [s["id"] for s in advice]})
