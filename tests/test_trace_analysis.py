"""Trace analysis against published figures, HolisticTraceAnalysis, real kernel names and bad files."""
from __future__ import annotations

import gzip
import json
import logging
import re
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

from gpulens.cli import main as cli_main
from gpulens.profiler import open_run
from gpulens.profiler.analysis.run_analysis import summarize
from gpulens.profiler.analysis.trace import TraceError, load_trace
from gpulens.profiler.analysis.trace import intervals as iv
from gpulens.profiler.analysis.trace.analysis import analyze
from gpulens.profiler.analysis.trace.gpu_summary import gpu_summary, step_breakdown
from gpulens.profiler.analysis.trace.kernels import kernel_table
from gpulens.profiler.analysis.trace.patterns import classify
from gpulens.profiler.analysis.trace.tc_eligible import tc_eligible_share
from gpulens.profiler.analysis.trace.temporal import hta_gpu_events, temporal_breakdown

TRACES = Path(__file__).resolve().parent / "data" / "traces"  # public traces, see its README.md
DATA = Path(__file__).resolve().parent / "data"
RESNET = TRACES / "kineto__resnet50_num_workers_0.json.gz"


@pytest.fixture(scope="module")
def resnet():
    return load_trace(RESNET)


# ----------------------------------------------------------------------------- the plugin's figures
def test_gpu_summary_reproduces_the_tensorboard_plugin(resnet):
    [g] = gpu_summary(resnet)
    assert g["gpu_utilization_pct"] == pytest.approx(55.51, abs=0.1)
    assert g["sm_efficiency_pct"] == pytest.approx(54.68, abs=0.1)
    assert g["achieved_occupancy_pct"] == pytest.approx(49.13, abs=0.1)
    assert g["tensor_core_pct"] == pytest.approx(0.0, abs=0.1)
    assert g["steps"] == 6  # steps 5-10


def test_step_breakdown_reproduces_the_tensorboard_plugin(resnet):
    sb = step_breakdown(resnet)
    avg = sb["average_us"]
    published = {"Total": 177592, "Kernel": 98589, "Memcpy": 1915, "Memset": 89, "Runtime": 2908,
                 "DataLoader": 59262, "CPU Exec": 13674, "Other": 1156, "Communication": 0}
    for key, value in published.items():
        assert avg[key] == pytest.approx(value, abs=1.0), key
    first = sb["steps"][0]
    assert first["name"] == "ProfilerStep#5"
    assert first["duration_us"] == pytest.approx(187948, abs=1)
    assert first["breakdown_us"]["Kernel"] == pytest.approx(98598, abs=1)
    assert first["breakdown_us"]["DataLoader"] == pytest.approx(69317, abs=1)
    # what the plugin recommended: DataLoader 33.4% of the step; 68% of kernel time TC-eligible
    assert round(100 * avg["DataLoader"] / avg["Total"], 1) == 33.4
    assert round(100 * tc_eligible_share(resnet)) == 68


def test_top_kernel_matches_the_plugin(resnet):
    top = kernel_table(resnet)[0]
    assert top.name.startswith("void cudnn::detail::dgrad_engine<float, 512, 6, 5, 3, 3, 3, false>")
    assert top.total_us == pytest.approx(80756)
    assert (top.category, top.tensor_core) == ("convolution", False)


# ----------------------------------------------------------------------------- HTA agreement
def _hta(trace_file: Path, tmp_path: Path):
    hta = pytest.importorskip("hta.trace_analysis")
    folder = tmp_path / trace_file.name.replace(".", "_")
    folder.mkdir()
    shutil.copy(trace_file, folder)
    logging.disable(logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            analysis = hta.TraceAnalysis(trace_dir=str(folder))
            temporal = analysis.get_temporal_breakdown(visualize=False)
            kernel_types, kernel_metrics = analysis.get_gpu_kernel_breakdown(visualize=False)
    finally:
        logging.disable(logging.NOTSET)
    return temporal, kernel_metrics


@pytest.mark.parametrize("name", sorted(p.name for p in TRACES.glob("*.json.gz")))
def test_temporal_and_kernel_breakdown_agree_with_hta(name, tmp_path):
    path = TRACES / name
    temporal, kernel_metrics = _hta(path, tmp_path)
    trace = load_trace(path)
    ours = temporal_breakdown(trace)
    row = temporal.iloc[0]
    assert abs(ours["idle_pct"] - row["idle_time_pctg"]) <= 0.5
    assert abs(ours["compute_pct"] - row["compute_time_pctg"]) <= 0.5
    assert abs(ours["non_compute_pct"] - row["non_compute_time_pctg"]) <= 0.5
    assert ours["span_us"] == pytest.approx(float(row["kernel_time(us)"]), rel=0.01)

    # kernel totals: every kernel HTA names, and each kernel type's total
    mask = hta_gpu_events(trace)
    ts = trace.ts
    if np.any(ts != np.floor(ts)):  # HTA's whole-µs rounding of ns-resolution traces
        trace.dur = np.floor(trace.ts + trace.dur) - np.ceil(trace.ts)
    table = {k.name: k for k in kernel_table(trace, mask=mask)}
    named = kernel_metrics[kernel_metrics["name"] != "others"]
    assert len(named) > 0
    for _, k in named.iterrows():
        assert k["name"] in table, k["name"]
        assert table[k["name"]].total_us == pytest.approx(float(k["sum (us)"]), rel=0.01)
    for ktype, total in kernel_metrics.groupby("kernel_type")["sum (us)"].sum().items():
        ours_total = sum(k.total_us for k in table.values() if _hta_type(k.name) == ktype)
        assert ours_total == pytest.approx(float(total), rel=0.01), ktype


def _hta_type(name: str) -> str:
    import re

    if re.match(r"^nccl.*Kernel", name):
        return "COMMUNICATION"
    if re.match(r"(^Memcpy)|(^Memset)|(^dma)", name):
        return "MEMORY"
    return "COMPUTATION" if not re.match(r"^nccl.*Kernel|.*Memcpy|Memset|.*Sync", name) else "OTHER"


# ----------------------------------------------------------------------------- kernel patterns
CENSUS = json.loads((DATA / "h100_kernel_census.json").read_text())


@pytest.mark.parametrize("case", sorted(CENSUS["cases"]))
def test_tensor_core_names_agree_with_gpm_on_a_real_h100(case):
    """Each case ran alone on an H100 while GPM measured tensor-pipe activity."""
    rec = CENSUS["cases"][case]
    if "kernels" not in rec:
        pytest.skip(rec.get("error"))
    tc_share = sum(share for name, share in rec["kernels"] if classify(name)[1])
    gpm = rec["gpm"]["gpm.tensor_active"]
    if gpm > 5:
        assert tc_share > 0.3, f"{case}: GPM tensor {gpm}% but only {tc_share:.0%} of kernel time called TC"
    if gpm < 3:
        assert tc_share < 0.05, f"{case}: GPM tensor {gpm}% but {tc_share:.0%} of kernel time called TC"


@pytest.mark.parametrize("name, category, tc", [
    # Volta / Turing (cuBLAS, cuDNN 7-8)
    ("volta_sgemm_128x64_nn", "gemm", False),
    ("volta_h884gemm_64x64_ldg8_nn", "gemm", True),
    ("volta_fp16_s884gemm_fp16_128x128_ldg8_f2f_nn", "gemm", True),
    ("turing_fp16_s1688gemm_fp16_256x128_ldg8_f2f_tn", "gemm", True),
    ("volta_scudnn_128x64_relu_interior_nn_v1", "convolution", False),
    ("cudnn_infer_volta_scudnn_128x64_relu_medium_nn_v1", "convolution", False),
    ("void cudnn::detail::dgrad_engine<float, 512, 6, 5, 3, 3, 3, false>(int, int)", "convolution", False),
    ("void cudnn::detail::wgrad_alg0_engine<float, 128, 5, 5, 3, 3, 3, false, 512>(int)", "convolution", False),
    ("void implicit_convolve_sgemm<float, float, 128, 6, 7, 3, 3, 5, 1, false, false, true>(int)", "convolution",
     False),
    ("xmma_implicit_gemm_fprop_f16f16_f16f32_f32_nhwckrsc_nhwc_tilesize128x128x32", "convolution", True),
    # Ampere
    ("ampere_sgemm_128x64_tn", "gemm", False),
    ("ampere_bf16_s16816gemm_bf16_128x128_ldg8_f2f_stages_64x3_tn", "gemm", True),
    ("sm80_xmma_gemm_f32f32_tf32f32_f32_tn_n_tilesize128x128x16_stage4_warpsize2x2x1_tensor16x8x8", "gemm", True),
    ("void cutlass::Kernel2<cutlass_80_tensorop_bf16_s16816gemm_relu_bf16_64x64_64x4_tn_align8>(Params)", "gemm",
     True),
    ("void cutlass::Kernel2<cutlass_80_simt_sgemm_128x32_8x5_nn_align1>(Params)", "gemm", False),
    ("void gemv2T_kernel_val<int, int, float, float, float, float, 128, 16, 4, 4, false>(float)", "gemm", False),
    # Hopper (measured on the H100)
    ("nvjet_sm90_tst_256x128_64x4_1x2_h_bz_coopA_NNT", "gemm", True),
    ("sm90_xmma_gemm_f32f32_f32f32_f32_nn_n_tilesize256x128x8_stage3_warpsize4x2x1_ffma_aligna4", "gemm", False),
    ("sm80_xmma_gemm_f32f32_f32f32_f32_nn_n_tilesize256x128x8_stage3_warpsize4x2x1_ffma_aligna4_alignc4", "gemm",
     False),
    ("sm90_xmma_gemm_f64f64_f64f64_f64_nn_n_tilesize128x64x16_stage3_warpsize2x2x1_tensor16x8x8", "gemm", True),
    ("cutlass3x_sm90_tensorop_gemm_bf16_bf16_f32_bf16_bf16_128x256x64_1x2x1_0_tnn_align8_warpspecialized",
     "gemm", True),
    ("sm90_xmma_fprop_implicit_gemm_bf16bf16_bf16f32_f32_nhwckrsc_nhwc_tilesize64x128x64", "convolution", True),
    ("void pytorch_flash::flash_fwd_kernel<Flash_fwd_kernel_traits<64, 128, 128, 4>>(Flash_fwd_params)",
     "attention", True),
    ("fmha_cutlassF_bf16_aligned_64x64_rf_sm80(PyTorchMemEffAttention::AttentionKernel)", "attention", True),
    ("cudnn_generated_fort_native_sdpa_sm90_flash_fprop_wgmma_f16_knob_7_64x128x64", "attention", True),
    ("nvjet_sm90_qqtst_128x128_128x6_1x2_h_bz_coopA_algo2_TNT", "gemm", True),  # fp8
    ("triton_tem_fused_mm_0", "gemm", True),
    # not GEMM-like
    ("triton_poi_fused_gelu_view_3", "elementwise", False),
    ("triton_per_fused__to_copy_native_layer_norm_native_layer_norm_backward_view_5", "normalization", False),
    ("triton_red_fused_sum_2", "reduction", False),
    ("void at::native::vectorized_elementwise_kernel<4, at::native::CUDAFunctor_add<float>>(int)", "elementwise",
     False),
    ("void at::native::(anonymous namespace)::cunn_SoftMaxForward<4, float, float>(float*)", "reduction", False),
    ("void at::native::batch_norm_collect_statistics_channels_last_kernel<c10::BFloat16>(...)", "normalization",
     False),
    ("void at::native::(anonymous namespace)::multi_tensor_apply_kernel<...>(...)", "elementwise", False),
    ("ncclDevKernel_AllReduce_Sum_f32_RING_LL(ncclDevComm*, unsigned long, ncclWork*)", "communication", False),
    ("ncclKernel_AllReduce_RING_LL_Sum_float(ncclWorkElem)", "communication", False),
    ("Memcpy HtoD (Pageable -> Device)", "memcpy", False),
    ("Memset (Device)", "memset", False),
    ("void cudnn::engines_precompiled::nchwToNhwcKernel<float, float, float, false, true>(...)", "convolution",
     False),
])
def test_kernel_name_table(name, category, tc):
    assert classify(name) == (category, tc)
    assert classify(name.upper()) == classify(name.swapcase()) == (category, tc)  # names in any case


def test_the_patterns_are_lower_case_so_lowering_the_name_is_ignoring_its_case():
    """classify() lower-cases the name instead of matching with re.IGNORECASE (4-6x faster): a pattern row
    with a capital letter outside an escape would never match again."""
    from gpulens.profiler.analysis.trace import patterns

    rows = [rx for _, rx in patterns.CATEGORY_PATTERNS] + [patterns.SIMT_PATTERN, patterns.TENSOR_CORE_PATTERN]
    assert not [rx for rx in rows if re.search(r"(?<!\\)[A-Z]", rx)]


# ----------------------------------------------------------------------------- intervals
def test_interval_union_and_overlap_against_brute_force():
    rng = np.random.default_rng(0)
    for _ in range(50):
        s = rng.integers(0, 200, 30).astype(float)
        e = s + rng.integers(0, 20, 30)
        covered = np.zeros(260, dtype=bool)
        for a, b in zip(s, e):
            covered[int(a):int(b)] = True
        u = iv.merge(s, e)
        assert iv.length(u) == covered.sum()
        a = rng.integers(0, 200, 10).astype(float)
        b = a + rng.integers(0, 60, 10)
        want = [covered[int(x):int(y)].sum() for x, y in zip(a, b)]
        assert np.allclose(iv.overlap(u, a, b), want)


def test_the_step_merge_in_arrays_is_the_walk_on_any_layout():
    """The array form of the host-step / runtime-call merge (every trace whose step ends are in order) gives
    the walk's values exactly: zero-length steps and calls, calls on step edges, before and after every step."""
    from gpulens.profiler.analysis.trace.steps import _merge_sorted, _merge_walk

    rng = np.random.default_rng(0)
    for _ in range(2000):
        n, m, groups = int(rng.integers(1, 6)), int(rng.integers(0, 25)), 6
        edges = np.sort(rng.integers(0, 30, 2 * n)).astype(float)
        h0, h1 = edges[0::2], edges[1::2]
        r0 = np.sort(rng.integers(-2, 32, m).astype(float))
        r1 = r0 + rng.choice([0.0, 0.0, 1.0, 2.0, 5.0], m)
        pos, has = rng.integers(0, groups, m), rng.random(m) < 0.8
        g_min = rng.random(groups) * 10
        g_max, g_cnt = g_min + rng.random(groups), rng.integers(1, 4, groups)
        args = (r0, r1, has, pos, g_min, g_max, g_cnt)
        assert _merge_sorted(h0, h1, *args) == _merge_walk(list(zip(h0.tolist(), h1.tolist())), *args)


def test_cpu_op_self_times_do_not_depend_on_the_walks_batches(resnet, monkeypatch):
    """The self-time walk goes a batch of ops at a time (bounded memory on huge traces); parents that began
    in an earlier batch lose their children's time just the same, to the last bit."""
    from gpulens.profiler.analysis.trace import cpu_ops

    whole = cpu_ops.cpu_op_table(resnet, limit=None)
    monkeypatch.setattr(cpu_ops, "WALK_BATCH", 7)
    assert cpu_ops.cpu_op_table(resnet, limit=None) == whole and len(whole) > 50


# ----------------------------------------------------------------------------- CPU traces
def test_cpu_only_trace_from_real_training(tmp_path):
    import torch
    import torch.nn as nn

    import gpulens

    model = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = torch.randn(32, 64), torch.randint(0, 10, (32,))
    with gpulens.track("cpu-prof", runs_dir=tmp_path, quiet=True,
                       profile=gpulens.ProfileConfig(every=10, first=3, warmup=1, active=2, record_shapes=True)) as run:
        for _ in range(25):
            loss = nn.functional.cross_entropy(model(x), y)
            loss.backward()
            opt.step()
            opt.zero_grad()
            run.step(loss=loss)
    reader = open_run(run.path)
    windows = reader.windows()
    # the third window starts at step 23 and is cut short by the end of the run after step 24
    assert [(w.first_step, w.last_step) for w in windows] == [(4, 5), (14, 15), (24, 24)]
    trace = load_trace(windows[0].path)
    a = analyze(trace)
    assert a.has_gpu is False and a.note == "no GPU activity in this trace"
    assert a.kernels == [] and a.temporal_breakdown is None and a.gpu_summary == []
    ops = {o.name for o in a.cpu_ops}
    assert {"aten::addmm", "aten::mm"} & ops
    assert [s.name for s in a.step_breakdown.steps] == ["ProfilerStep#4", "ProfilerStep#5"]
    summary = summarize(reader)
    assert summary["trace_analysis"]["reason"].startswith("no GPU activity")
    flags = reader.steps().flags
    assert all(flags[i] & 2 for i in (3, 4, 5, 13, 14, 15))
    # shapes asked for are kept for GEMM-like ops (GEMM alignment advice needs them), in every window
    for window in windows:
        shaped = load_trace(window.path)
        assert any(shaped.names[shaped.name[i]] == "aten::addmm" for i in shaped.input_dims)


def test_profiling_can_be_turned_off(tmp_path):
    import gpulens

    with gpulens.track("no-prof", runs_dir=tmp_path, quiet=True, profile=False, count_flops=False) as run:
        for _ in range(15):
            run.step()
    reader = open_run(run.path)
    assert reader.windows() == [] and reader.flops() == []
    assert summarize(reader)["trace_analysis"]["reason"] == "no profiler windows in this run"


def test_flops_counted_per_dtype_on_a_real_step(tmp_path):
    import torch
    import torch.nn as nn

    import gpulens

    model = nn.Linear(256, 512)
    x = torch.randn(64, 256)
    with gpulens.track("flops", runs_dir=tmp_path, quiet=True, profile=False, flops_step=2) as run:
        for _ in range(5):
            model(x).sum().backward()
            run.step()
    [count] = open_run(run.path).flops()
    # forward 2*64*256*512 and the weight gradient as much again (x needs no gradient)
    assert count.step == 2 and count.total == pytest.approx(2 * 2 * 64 * 256 * 512)
    assert count.by_dtype == {"fp32": count.total}


def test_user_given_flops_per_token_make_mfu_inputs(tmp_path):
    import gpulens

    with gpulens.track("given", runs_dir=tmp_path, quiet=True, profile=False, flops_per_token=6e6,
                       flops_dtype="bf16") as run:
        for _ in range(6):
            run.step(tokens=1000)
    mfu = summarize(open_run(run.path))["mfu"]
    assert mfu["flops_per_step"] == pytest.approx(6e9)
    assert mfu["by_dtype"] == {"bf16": 6e9} and mfu["mfu_pct"] is None and mfu["reason"] == "no GPU in this run"


# ----------------------------------------------------------------------------- import and bad files
def test_import_makes_a_run_the_report_shows(tmp_path, capsys):
    assert cli_main(["import", str(RESNET), "--runs-dir", str(tmp_path)]) == 0
    run_dir = Path(capsys.readouterr().out.strip())
    assert run_dir.parent == tmp_path.resolve()
    assert cli_main(["report", str(run_dir), "--json"]) == 0
    s = json.loads(capsys.readouterr().out)
    assert s["steps"] == 6 and s["status"] == "finished"
    [g] = s["gpu_summary"]
    assert g["gpu_utilization_pct"] == pytest.approx(55.51, abs=0.1)
    assert s["step_breakdown_us"]["DataLoader"] == pytest.approx(59262, abs=1)
    assert s["temporal_breakdown"][0]["idle_pct"] == pytest.approx(39.43, abs=0.01)
    assert {"name", "calls", "total_us", "category", "tensor_core"} <= set(s["kernels"][0])
    assert len(s["kernels"]) == len({k["name"] for k in s["kernels"]}) > 50
    assert s["gpus"][0]["name"] == "Tesla V100-DGXS-32GB"


def test_import_with_report_prints_what_report_prints_in_one_process(tmp_path, capsys):
    """Trace to figures in one command; the report is the one ``gpulens report --json`` gives of the run."""
    assert cli_main(["import", str(RESNET), "--runs-dir", str(tmp_path / "a"), "--report", "--json"]) == 0
    out, err = capsys.readouterr()
    one = json.loads(out)
    run_dir = Path(err.split("imported into ", 1)[1].strip()).resolve()
    assert run_dir.parent == (tmp_path / "a").resolve() and one["run"]["id"] == run_dir.name
    assert cli_main(["report", str(run_dir), "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == one
    assert cli_main(["import", str(RESNET), "--runs-dir", str(tmp_path / "b"), "--json"]) == 2  # --json alone
    assert "--json goes with --report" in capsys.readouterr().err and not (tmp_path / "b").exists()


def _bad(tmp_path, name, content: bytes) -> Path:
    p = tmp_path / name
    p.write_bytes(content)
    return p


@pytest.mark.parametrize("name, content, fragment", [
    ("empty.json", b"", "empty file"),
    ("text.json", b"hello world", "not valid JSON"),
    ("cut.json", b'{"traceEvents": [{"ph": "X", "cat": "kernel", "name": "k", "ts": 1', "truncated JSON"),
    ("nolist.json", b'{"foo": 1}', "no traceEvents"),
    ("none.json", b'{"traceEvents": []}', "empty trace"),
    ("chrome.json", json.dumps({"traceEvents": [{"ph": "X", "cat": "blink", "name": "Paint", "ts": 1, "dur": 2,
                                                 "pid": 1, "tid": 1}]}).encode(), "not a PyTorch profiler trace"),
    ("cut.json.gz", gzip.compress(json.dumps({"traceEvents": [{"ph": "X", "cat": "kernel", "name": f"k{i}",
                                                               "ts": i * 7919 % 10007, "dur": i % 97}
                                                              for i in range(5000)]}).encode())[:20000],
     "truncated gzip"),
])
def test_bad_trace_files_give_one_line_errors(tmp_path, name, content, fragment):
    path = _bad(tmp_path, name, content)
    with pytest.raises(TraceError) as err:
        load_trace(path)
    assert fragment in str(err.value) and name in str(err.value)
    out = subprocess.run([sys.executable, "-m", "gpulens", "import", str(path), "--runs-dir", str(tmp_path / "r")],
                         capture_output=True, text=True)
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and fragment in lines[0]
    assert not (tmp_path / "r").exists() or not any((tmp_path / "r").iterdir())  # nothing half-imported


def test_unusual_value_types_go_through_the_generic_parser(tmp_path):
    """A trace whose args have unexpected types (string ids) still loads, with the same columns."""
    events = [
        {"ph": "X", "cat": "cpu_op", "name": "aten::mm", "pid": 1, "tid": "1", "ts": 10, "dur": 5,
         "args": {"External id": "7", "Input Dims": [[4, 8], [8, 16]]}},
        {"ph": "X", "cat": "cuda_runtime", "name": "cudaLaunchKernel", "pid": 1, "tid": 1, "ts": 11, "dur": 2,
         "args": {"correlation": "42", "External id": 7}},
        {"ph": "X", "cat": "kernel", "name": "nvjet_sm90_tst_64x64", "pid": 0, "tid": "stream 7", "ts": 14,
         "dur": 3, "args": {"correlation": 42, "stream": "7", "device": 0, "blocks per SM": "n/a"}},
    ]
    path = tmp_path / "odd.json"
    path.write_text(json.dumps({"schemaVersion": 1, "traceEvents": events}))
    trace = load_trace(path)
    assert trace.corr.tolist() == [-1, 42, 42] and trace.ext.tolist() == [7, 7, -1]
    assert trace.stream.tolist() == [-1, -1, 7] and np.isnan(trace.blocks_per_sm[2])
    assert trace.shapes(0)[0] == [[4, 8], [8, 16]]
    assert analyze(trace).kernels[0].tensor_core is True
