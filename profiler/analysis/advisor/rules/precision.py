"""Precision and tensor cores: AMP, TF32, GEMM alignment, channels_last."""
from __future__ import annotations

from gpulens import fmt
from gpulens.profiler.analysis.advisor.measure import Measurements
from gpulens.profiler.analysis.advisor.model import Evidence, NotEvaluated, Suggestion
from gpulens.profiler.analysis.advisor.rules._shared import (
    WORTH_PROPOSING,
    busy_fraction,
    how,
    measured_what_if,
    predicted_gain,
)

TF32_PEAKS = {"H100": "67 -> 494.5 TFLOP/s on H100 SXM", "H200": "67 -> 494.5 TFLOP/s on H200",
              "A100": "19.5 -> 156 TFLOP/s on A100"}


def _kernels_needed(m: Measurements, rule: str) -> NotEvaluated | None:
    if m.device == "cuda" and not m.has_kernels:
        return NotEvaluated(rule, how(m, "needs a profiler window with CUDA kernels (track(profile_every=...))",
                                          "needs a profiler window with CUDA kernels (gpulens run --profile-every N)"))
    return None


def no_mixed_precision(m: Measurements) -> Suggestion | NotEvaluated | None:
    missing = _kernels_needed(m, "no_mixed_precision")
    if missing or not m.has_kernels:
        return missing
    cc = m.compute_capability
    if cc is None or cc < 7.0 or m.tc_share is None or m.tc_eligible_share is None:
        return None
    if m.tc_share >= 0.01 or m.tc_eligible_share < 0.2:
        return None
    bf16 = cc >= 8.0
    busy = busy_fraction(m)
    gain = m.tc_eligible_share * 0.5 * busy
    expected = (f"about {fmt.share(gain, 0)} of step time "
                "(NVIDIA quotes up to 3x on eligible math, Volta and newer)")
    finding = (f"{fmt.share(m.tc_eligible_share, 0)} of kernel time is launched by tensor-core-eligible operators "
               f"(matmul, convolution, attention) and {fmt.share(m.tc_share)} of kernel time runs on tensor cores")
    prediction, change = None, None
    measured = measured_what_if(m, "autocast", "the forward in bf16")
    if measured is not None:
        finding += f"; {measured[0]}"
        prediction = measured[1]
        if prediction.gain_fraction >= WORTH_PROPOSING:
            change = {"autocast": "bf16"}
            expected = predicted_gain(prediction, expected)
        else:
            prediction = None
    return Suggestion(
        id="no_mixed_precision", severity=_by_gain(gain),
        title="Matrix math runs without tensor cores",
        finding=finding,
        action=(f"Enable automatic mixed precision "
                f"({'bf16 on this Ampere-or-newer GPU' if bf16 else 'fp16 with a GradScaler'}): "
                "matmuls and convolutions then run on tensor cores."),
        snippet=("with torch.autocast(device_type=\"cuda\", dtype=torch.bfloat16):\n"
                 "    loss = loss_fn(model(x), y)\nloss.backward()" if bf16 else
                 "scaler = torch.amp.GradScaler()\nwith torch.autocast(device_type=\"cuda\", dtype=torch.float16):\n"
                 "    loss = loss_fn(model(x), y)\nscaler.scale(loss).backward(); scaler.step(opt); scaler.update()"),
        expected_gain=expected,
        gain_estimate="eligible kernel share x (1 - 1/2) x GPU-busy share: eligible kernels assumed 2x faster",
        confidence="medium",
        evidence=[Evidence("kernels", "tensor-core-eligible kernels", {"category": ["gemm", "convolution"]})],
        gain_fraction=gain, change=change, prediction=prediction)


def tf32_off(m: Measurements) -> Suggestion | NotEvaluated | None:
    missing = _kernels_needed(m, "tf32_off")
    if missing or not m.has_kernels:
        return missing
    cc = m.compute_capability
    if cc is None or cc < 8.0 or m.fp32_gemm_share is None or m.fp32_gemm_share < 0.10:
        return None
    busy = busy_fraction(m)
    gain = m.fp32_gemm_share * (1 - 1 / 3) * busy
    peak = next((v for k, v in TF32_PEAKS.items() if m.gpu_name and k in m.gpu_name), "about 8x dense peak")
    return Suggestion(
        id="tf32_off", severity=_by_gain(gain),
        title="fp32 matrix math runs on CUDA cores (TF32 is off)",
        finding=(f"{fmt.share(m.fp32_gemm_share, 0)} of kernel time is fp32 GEMM/convolution kernels on CUDA cores "
                 f"(e.g. {_first_fp32(m)}) on a compute-capability {cc:.1f} GPU"),
        action=(f"Allow TF32 for fp32 matmuls (PyTorch's default is off since 1.12): tensor cores at "
                f"reduced mantissa, {peak}."),
        snippet="torch.set_float32_matmul_precision(\"high\")  # TF32 matmuls\ntorch.backends.cudnn.allow_tf32 = True",
        expected_gain=f"about {fmt.share(gain, 0)} of step time",
        gain_estimate="fp32 GEMM share x (1 - 1/3) x GPU-busy share: TF32 GEMMs assumed 3x faster",
        confidence="medium", evidence=[Evidence("kernels", "fp32 GEMM kernels", {"category": ["gemm"]})],
        gain_fraction=gain)


def _by_gain(gain: float) -> str:
    """Severity from the expected share of step time: a big change to a small part of the step is minor."""
    return "high" if gain >= 0.15 else "medium" if gain >= 0.05 else "low"


def _first_fp32(m: Measurements) -> str:
    for k in m.top_kernels:
        if k.category in ("gemm", "convolution") and not k.tensor_core:
            return k.name[:60]
    return "sgemm kernels"


def gemm_alignment(m: Measurements) -> Suggestion | None:
    if not m.has_kernels or not m.gemm_shapes:
        return None
    bad = [g for g in m.gemm_shapes if g.misaligned and g.kernel_us > 0]
    total_gemm = sum(g.kernel_us for g in m.gemm_shapes) or 0.0
    if not bad or total_gemm <= 0:
        return None
    share = sum(g.kernel_us for g in bad) / total_gemm
    gemm_share = m.category_share.get("gemm", 0.0)
    if share < 0.2 or gemm_share < 0.1:
        return None
    g = bad[0]
    shape = f"{g.op} M={g.m} N={g.n} K={g.k} ({g.dtype or '?'})"
    return Suggestion(
        id="gemm_alignment", severity="low", title="GEMM dimensions are not multiples of 8",
        finding=(f"{fmt.share(share, 0)} of GEMM kernel time is in shapes with a dimension that is not a multiple of "
                 f"{g.multiple}, e.g. {shape} ({', '.join(g.misaligned)} misaligned)"),
        action=("Pad the odd dimensions: vocabulary to a multiple of 64, hidden and head sizes and batch x "
                "sequence to multiples of 8 (64 for full efficiency on A100/H100)."),
        snippet="vocab_padded = (vocab_size + 63) // 64 * 64\nembedding = nn.Embedding(vocab_padded, d_model)",
        expected_gain=f"part of {fmt.share(share * gemm_share, 0)} of kernel time",
        gain_estimate="heuristic: a quarter of the misaligned GEMMs' time", confidence="low",
        evidence=[Evidence("kernels", "misaligned GEMMs",
                           {"shapes": [f"{b.m}x{b.n}x{b.k}" for b in bad[:5]]})],
        gain_fraction=share * gemm_share * 0.25 * busy_fraction(m))


def channels_last(m: Measurements) -> Suggestion | None:
    if not m.has_kernels or m.transpose_share is None:
        return None
    conv = m.category_share.get("convolution", 0.0)
    if conv < 0.3 or m.transpose_share < 0.05:
        return None
    gain = m.transpose_share * busy_fraction(m)
    finding = (f"convolutions take {fmt.share(conv, 0)} of kernel time and cuDNN's NCHW<->NHWC layout transposes "
               f"another {fmt.share(m.transpose_share, 0)}")
    expected = f"about {fmt.share(gain, 0)} of step time (the transposes' share)"
    prediction, change = None, None
    measured = measured_what_if(m, "channels-last", "the model and its inputs channels-last")
    if measured is not None:
        finding += f"; {measured[0]}"
        if measured[1].gain_fraction >= WORTH_PROPOSING:
            prediction, change = measured[1], {"channels_last": True}
            expected = predicted_gain(prediction, expected)
    return Suggestion(
        id="channels_last", severity=_by_gain(gain), title="Convolutions pay for NCHW <-> NHWC transposes",
        finding=finding,
        action=("Keep the model and inputs in channels_last (NHWC) so tensor-core convolutions need no "
                "transposes; with AMP and cudnn.benchmark for fixed shapes (+22% on ResNet-50 in PyTorch's "
                "tuning guide)."),
        snippet=("model = model.to(memory_format=torch.channels_last)\n"
                 "x = x.to(device, non_blocking=True).contiguous(memory_format=torch.channels_last)\n"
                 "torch.backends.cudnn.benchmark = True"),
        expected_gain=expected,
        gain_estimate="measured transpose kernel time x GPU-busy share", confidence="medium",
        evidence=[Evidence("kernels", "layout transposes", {"names": ["nchwToNhwcKernel", "nhwcToNchwKernel"]})],
        gain_fraction=gain, change=change, prediction=prediction)
