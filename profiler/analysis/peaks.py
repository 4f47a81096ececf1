"""Dense peak throughput per GPU model and dtype, and MFU.

Dense (no 2:4 sparsity) tensor-core peaks in TFLOP/s from NVIDIA's
datasheets; fp32 is the non-tensor CUDA-core rate.  Rows are matched on the
device name NVML / torch report.  An unknown GPU gives MFU "unknown", never a
guess.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class GpuPeak:
    label: str
    pattern: str  # regex on the device name, case-insensitive
    tflops: dict[str, float]  # dtype label -> dense TFLOP/s
    source: str


# Sparse datasheet figures are halved where the datasheet gives only "with sparsity".
PEAKS: tuple[GpuPeak, ...] = (
    GpuPeak("H200 SXM", r"H200", {"fp64": 67, "fp32": 67, "tf32": 494.5, "bf16": 989.5, "fp16": 989.5,
                                  "fp8": 1979, "int8": 1979},
            "NVIDIA H200 Tensor Core GPU datasheet (H200 SXM column; sparsity figures halved)"),
    GpuPeak("H100 NVL", r"H100 NVL", {"fp64": 60, "fp32": 60, "tf32": 417.5, "bf16": 835.5, "fp16": 835.5,
                                      "fp8": 1670.5, "int8": 1670.5},
            "NVIDIA H100 Tensor Core GPU datasheet (H100 NVL column; sparsity figures halved)"),
    GpuPeak("H100 PCIe", r"H100 PCIe", {"fp64": 51, "fp32": 51, "tf32": 378, "bf16": 756, "fp16": 756,
                                        "fp8": 1513, "int8": 1513},
            "NVIDIA H100 Tensor Core GPU datasheet (H100 PCIe column; sparsity figures halved)"),
    GpuPeak("H100 SXM", r"H100", {"fp64": 67, "fp32": 67, "tf32": 494.5, "bf16": 989.5, "fp16": 989.5,
                                  "fp8": 1979, "int8": 1979},
            "NVIDIA H100 Tensor Core GPU datasheet (H100 SXM column; sparsity figures halved)"),
    GpuPeak("A100", r"A100", {"fp64": 19.5, "fp32": 19.5, "tf32": 156, "bf16": 312, "fp16": 312, "int8": 624},
            "NVIDIA A100 Tensor Core GPU datasheet (dense figures; fp64 is the FP64 tensor-core rate)"),
    GpuPeak("L40S", r"L40S", {"fp32": 91.6, "tf32": 183, "bf16": 362.05, "fp16": 362.05, "fp8": 733, "int8": 733},
            "NVIDIA L40S datasheet (sparsity figures halved)"),
    GpuPeak("L4", r"\bL4\b", {"fp32": 30.3, "tf32": 60, "bf16": 121, "fp16": 121, "fp8": 242.5, "int8": 242.5},
            "NVIDIA L4 Tensor Core GPU datasheet (sparsity figures halved)"),
    GpuPeak("A10", r"\bA10\b", {"fp32": 31.2, "tf32": 62.5, "bf16": 125, "fp16": 125, "int8": 250},
            "NVIDIA A10 Tensor Core GPU datasheet (dense figures)"),
    GpuPeak("V100 SXM2", r"V100-SXM|V100-DGXS|V100 SXM", {"fp64": 7.8, "fp32": 15.7, "fp16": 125},
            "NVIDIA Tesla V100 datasheet (SXM2 column; fp16 = tensor performance)"),
    GpuPeak("V100 PCIe", r"V100", {"fp64": 7, "fp32": 14, "fp16": 112},
            "NVIDIA Tesla V100 datasheet (PCIe column; fp16 = tensor performance)"),
    GpuPeak("T4", r"\bT4\b", {"fp32": 8.1, "fp16": 65, "int8": 130},
            "NVIDIA T4 Tensor Core GPU datasheet"),
    GpuPeak("RTX 4090", r"RTX 4090", {"fp32": 82.6, "tf32": 82.6, "bf16": 165.2, "fp16": 165.2, "fp8": 330.3,
                                      "int8": 660.6},
            "NVIDIA Ada Lovelace architecture whitepaper, GeForce RTX 4090 (fp16/bf16 with fp32 accumulate, "
            "dense)"),
)


def peak_for(device_name: str | None) -> GpuPeak | None:
    if not device_name:
        return None
    for row in PEAKS:
        if re.search(row.pattern, device_name, re.IGNORECASE):
            return row
    return None


def mfu(flops_by_dtype: dict[str, float], step_time_s: float | None, device_name: str | None,
        n_gpus: int = 1) -> dict[str, Any]:
    """Achieved TFLOP/s and model FLOPs utilisation for a step's FLOPs.

    With mixed dtypes the ideal step time is the sum over dtypes of FLOPs at
    that dtype's peak; MFU is that ideal time over the measured step time.
    """
    total = float(sum(flops_by_dtype.values()))
    out: dict[str, Any] = {"flops_per_step": total, "by_dtype": flops_by_dtype, "achieved_tflops": None,
                           "mfu_pct": None, "peak": None, "reason": None}
    if not step_time_s or step_time_s <= 0 or total <= 0:
        out["reason"] = "no step time or no FLOPs recorded"
        return out
    out["achieved_tflops"] = total / step_time_s / 1e12
    peak = peak_for(device_name)
    if peak is None:
        out["reason"] = f"no peak table entry for {device_name!r}" if device_name else "no GPU in this run"
        return out
    ideal = 0.0
    for dtype, flops in flops_by_dtype.items():
        rate = peak.tflops.get(dtype)
        if rate is None:
            out["reason"] = f"no {dtype} peak for {peak.label}"
            return out
        ideal += flops / (rate * 1e12 * n_gpus)
    out["mfu_pct"] = 100.0 * ideal / step_time_s
    out["peak"] = {"gpu": peak.label, "tflops": peak.tflops, "source": peak.source}
    return out
