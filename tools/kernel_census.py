"""Kernel names and GPM tensor activity for known workloads, on a real GPU.

    python tools/kernel_census.py OUT.json

For each case (fp32 / TF32 / bf16 / fp16 / fp64 / int8 / fp8 matmuls, convs in
several precisions and layouts, SDPA backends, a torch.compile'd block) this
runs the workload for ~1.5 s under gpulens' real GPM sampler and captures a
few iterations with torch.profiler.  The output pairs every kernel name with
the GPM tensor activity measured while it ran: tests/data/ keeps it to check
the tensor-core name patterns against hardware truth.
"""
from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from gpulens.profiler import open_run
from gpulens.profiler.record.recorder import Recorder, SamplingConfig


def cases():
    dev = "cuda"
    n = 4096
    out = {}

    def mm(dtype, tf32=False):
        a = torch.randn(n, n, device=dev, dtype=dtype)
        b = torch.randn(n, n, device=dev, dtype=dtype)

        def run():
            torch.backends.cuda.matmul.allow_tf32 = tf32
            a @ b
        return run

    out["mm_fp32"] = mm(torch.float32)
    out["mm_tf32"] = mm(torch.float32, tf32=True)
    out["mm_bf16"] = mm(torch.bfloat16)
    out["mm_fp16"] = mm(torch.float16)
    out["mm_fp64"] = mm(torch.float64)
    a8 = torch.randint(-8, 8, (n, n), device=dev, dtype=torch.int8)
    b8 = torch.randint(-8, 8, (n, n), device=dev, dtype=torch.int8).t().contiguous().t()
    out["mm_int8"] = lambda: torch._int_mm(a8, b8)
    try:
        af = torch.randn(n, n, device=dev).to(torch.float8_e4m3fn)
        bf = torch.randn(n, n, device=dev).to(torch.float8_e4m3fn).t().contiguous().t()
        one = torch.tensor(1.0, device=dev)
        torch._scaled_mm(af, bf, scale_a=one, scale_b=one, out_dtype=torch.bfloat16)
        out["mm_fp8"] = lambda: torch._scaled_mm(af, bf, scale_a=one, scale_b=one, out_dtype=torch.bfloat16)
    except Exception as exc:  # noqa: BLE001
        print("fp8 skipped:", exc, file=sys.stderr)
    xb = torch.randn(64, 512, 512, device=dev, dtype=torch.bfloat16)
    out["bmm_bf16"] = lambda: torch.bmm(xb, xb)
    lin = torch.randn(8, 4096, device=dev)
    w = torch.randn(4096, 4096, device=dev)
    out["gemv_fp32"] = lambda: lin @ w

    def conv(dtype, channels_last, tf32=False):
        x = torch.randn(64, 64, 56, 56, device=dev, dtype=dtype)
        wt = torch.randn(128, 64, 3, 3, device=dev, dtype=dtype, requires_grad=True)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
            wt = wt.detach().contiguous(memory_format=torch.channels_last).requires_grad_()
        x.requires_grad_()

        def run():
            torch.backends.cudnn.allow_tf32 = tf32
            y = F.conv2d(x, wt, padding=1)
            y.sum().backward()
        return run

    out["conv_fp32_nchw"] = conv(torch.float32, False)
    out["conv_tf32_nchw"] = conv(torch.float32, False, tf32=True)
    out["conv_bf16_nhwc"] = conv(torch.bfloat16, True)
    out["conv_fp16_nchw"] = conv(torch.float16, False)

    def sdpa(dtype, backend):
        q = torch.randn(16, 16, 1024, 64, device=dev, dtype=dtype, requires_grad=True)

        def run():
            from torch.nn.attention import SDPBackend, sdpa_kernel

            with sdpa_kernel(backend):
                F.scaled_dot_product_attention(q, q, q, is_causal=True).sum().backward()
        return run, SDPBackend

    from torch.nn.attention import SDPBackend

    out["sdpa_flash_bf16"] = sdpa(torch.bfloat16, SDPBackend.FLASH_ATTENTION)[0]
    out["sdpa_efficient_fp32"] = sdpa(torch.float32, SDPBackend.EFFICIENT_ATTENTION)[0]
    out["sdpa_efficient_bf16"] = sdpa(torch.bfloat16, SDPBackend.EFFICIENT_ATTENTION)[0]
    out["sdpa_cudnn_bf16"] = sdpa(torch.bfloat16, SDPBackend.CUDNN_ATTENTION)[0]
    out["sdpa_math_fp32"] = sdpa(torch.float32, SDPBackend.MATH)[0]

    block = torch.nn.Sequential(torch.nn.LayerNorm(1024), torch.nn.Linear(1024, 4096), torch.nn.GELU(),
                                torch.nn.Linear(4096, 1024)).to(dev)
    comp = torch.compile(block)
    xc = torch.randn(64, 256, 1024, device=dev, requires_grad=True)

    def compiled():
        with torch.autocast("cuda", dtype=torch.bfloat16):
            comp(xc).float().sum().backward()
    out["compiled_mlp_bf16"] = compiled
    big = torch.randn(64 * 1024 * 1024, device=dev)
    out["elementwise_fp32"] = lambda: big.mul_(1.0001).add_(0.5)
    out["layernorm_fp32"] = lambda: F.layer_norm(big.view(-1, 4096), (4096,))
    out["softmax_fp32"] = lambda: torch.softmax(big.view(-1, 4096), -1)
    out["adamw_fused"] = _adam()
    return out


def _adam():
    params = [torch.nn.Parameter(torch.randn(1024, 1024, device="cuda")) for _ in range(32)]
    for p in params:
        p.grad = torch.randn_like(p)
    opt = torch.optim.AdamW(params, fused=True)
    return opt.step


def main() -> None:
    out_path = Path(sys.argv[1]) if len(sys.argv) > 1 else None
    result = {"gpu": torch.cuda.get_device_name(0), "torch": torch.__version__, "cases": {}}
    for name, fn in cases().items():
        try:
            for _ in range(3):
                fn()
            torch.cuda.synchronize()
        except Exception as exc:  # noqa: BLE001
            result["cases"][name] = {"error": f"{type(exc).__name__}: {exc}"[:300]}
            continue
        with tempfile.TemporaryDirectory() as tmp:
            rec = Recorder(Path(tmp) / "r" / "rank-0.db", {"name": name},
                           SamplingConfig(host=False, device_interval=0.1, gpm_interval=0.2))
            time.sleep(0.3)
            t0 = time.time()
            end = time.perf_counter() + 1.5
            while time.perf_counter() < end:
                fn()
                torch.cuda.synchronize()
            t1 = time.time()
            rec.close()
            run = open_run(Path(tmp) / "r")
            gpm = {}
            for metric in ("gpm.tensor_active", "gpm.hmma_active", "gpm.imma_active", "gpm.dfma_active",
                           "gpm.sm_active", "gpm.fp32_active", "gpm.fp16_active", "gpm.fp64_active",
                           "gpm.dram_bw"):
                s = run.series(metric, 0, t0=t0 + 0.25, t1=t1)
                gpm[metric] = round(float(s.v.mean()), 2) if s is not None and len(s) else None
            run.close()
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU,
                                                torch.profiler.ProfilerActivity.CUDA]) as prof:
            for _ in range(3):
                fn()
            torch.cuda.synchronize()
        kernels: dict[str, float] = {}
        for ev in prof.events():
            if ev.device_type == torch.autograd.DeviceType.CUDA:
                kernels[ev.name] = kernels.get(ev.name, 0.0) + ev.device_time_total
        total = sum(kernels.values()) or 1.0
        result["cases"][name] = {
            "gpm": gpm,
            "kernels": sorted(([k, round(v / total, 4)] for k, v in kernels.items()), key=lambda kv: -kv[1]),
        }
        print(name, gpm["gpm.tensor_active"], [k[:60] for k, _ in result["cases"][name]["kernels"][:3]], flush=True)
    text = json.dumps(result, indent=1)
    if out_path:
        out_path.write_text(text)


def export_step_trace(path: Path) -> None:
    """One profiled training step of a small bf16 transformer block, as a gzipped chrome trace."""
    import gzip
    import shutil

    torch.manual_seed(0)
    layer = torch.nn.TransformerEncoderLayer(512, 8, 2048, batch_first=True).cuda()
    opt = torch.optim.AdamW(layer.parameters())
    x = torch.randn(16, 256, 512, device="cuda")

    def step():
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = layer(x).float().square().mean()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    for _ in range(3):
        step()
    torch.cuda.synchronize()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU,
                                            torch.profiler.ProfilerActivity.CUDA],
                                record_shapes=True, schedule=torch.profiler.schedule(wait=0, warmup=1, active=3)) as prof:
        for _ in range(5):
            step()
            prof.step()
    raw = path.with_suffix("")
    prof.export_chrome_trace(str(raw))
    with open(raw, "rb") as src, gzip.open(path, "wb") as dst:
        shutil.copyfileobj(src, dst)
    raw.unlink()


if __name__ == "__main__":
    main()
    if len(sys.argv) > 2:
        export_step_trace(Path(sys.argv[2]))
