"""Kernel-name patterns: category and tensor-core use, as data.

One table so that adding a GPU generation means adding rows, and so that the
tests can run every row against real kernel names.  The rows were checked on
real traces: V100 (Kineto's ResNet-50 sample), A100 and V100 traces from HTA,
and an H100 census (tests/data/h100_kernel_census.json) where each kernel's
tensor-core use was measured with GPM tensor activity while it ran.

Tensor-core use is decided only for GEMM, convolution and attention kernels:
a SIMT marker (``ffma``, ``sgemm``, ``simt``, ``gemv``, ...) means no, then a
tensor-core marker (``tensorop``, ``wgmma``, ``nvjet``, ``xmma``, ``tf32``,
``bf16``, ``16816``, ``flash``, ``fmha``, ...) means yes, otherwise no.
Measured on the H100: ``sm80_xmma_gemm_f32f32_f32f32_f32_..._ffma_...`` (fp32,
TF32 off) shows 0% tensor activity although its name says xmma -- which is
why the old plugin's bare ``xmma_gemm`` rule is not enough -- while
``sm90_xmma_gemm_f64f64_..._tensor16x8x8`` (fp64) runs on the DMMA tensor
cores and ``fmha_cutlassF_f32_...`` (memory-efficient attention in fp32)
shows tensor activity too.
"""
from __future__ import annotations

import re
from functools import lru_cache

CATEGORIES = ("gemm", "convolution", "attention", "elementwise", "reduction", "normalization",
              "memcpy", "memset", "communication", "other")

#: (category, regex) tried in order; the first match wins.  Case-insensitive.
CATEGORY_PATTERNS: tuple[tuple[str, str], ...] = (
    ("memcpy", r"^memcpy"),
    ("memset", r"^memset"),
    ("communication", r"nccl|^all_?reduce|^all_?gather|^reduce_?scatter|sendrecv|c10d"),
    # attention before gemm/conv: flash/fmha kernels are GEMM-like inside
    ("attention", r"flash_|flash::|fmha|_sdpa_|sdpa_|attention|attn_|mha_|dot_do_o|convert_dq"),
    # "conv" but not "convert"; cuDNN implicit GEMMs, Winograd, FFT convolution, layout helpers
    ("convolution", r"conv(?!ert)|fprop|dgrad|wgrad|implicit_gemm|implicit_convolve|winograd|fft2d|"
                    r"pointwise_mult_and_sum_complex|flip_filter|scudnn|cudnn::detail|im2col|col2im|"
                    r"nchwtonhwc|nhwctonchw|cask_plugin"),
    ("gemm", r"gemm|gemv|nvjet|matmul|splitkreduce|triton_tem|cutlass::kernel|cublas|_mm_|"
             r"xmma_gemm|\bmm\b|bmm|dot_kernel"),
    ("normalization", r"batch_?norm|layer_?norm|group_?norm|instance_?norm|rms_?norm|_norm_|norm_kernel|"
                      r"bn_fw|bn_bw|bn_back|welford|native_layer_norm|native_batch_norm"),
    ("reduction", r"reduce|softmax|triton_red|triton_per|argmax|argmin|topk|cross_entropy|nll_loss|"
                  r"cumsum|scan|sort|radix|histogram|sum_functor"),
    ("elementwise", r"elementwise|triton_poi|functor|fill|copy|index|gather|scatter|cat_?array|where|"
                    r"dropout|multi_tensor_apply|embedding|transpose|permute|clamp|masked|triu|tril|"
                    r"at::native::|cunn_|upsample|pad"),
)

TENSOR_CORE_CATEGORIES = frozenset({"gemm", "convolution", "attention"})

#: Names that mean CUDA-core (SIMT) arithmetic even inside a GEMM/conv library.
SIMT_PATTERN = (r"ffma|sgemm|dgemm(?!.*tensor)|simt|gemv|gemmsn|gemm_?sn|dgrad_engine|wgrad_alg|"
                r"implicit_convolve_sgemm|winograd|fft|pointwise_mult_and_sum_complex|scudnn(?!.*1688)|"
                r"splitkreduce|explicit_convolve|precomputed_convolve|flip_filter|nchwtonhwc|nhwctonchw|"
                r"init_device_workspace|cgemm|zgemm|_cf32|_cf64")

#: Markers of tensor-core (MMA) kernels, Volta through Hopper (and Blackwell's tcgen05).
TENSOR_CORE_PATTERN = (r"tensorop|wgmma|gmma|hmma|imma|dmma|tcgen05|utcmma|mma_|_mma|nvjet|xmma|"
                       r"tf32|bf16|f16|fp16|half|e4m3|e5m2|fp8|s8_|i8816|i16832|16816|1688|884|"
                       r"tensor\d+x\d+x\d+|flash|fmha|cudnn_generated_fort_native_sdpa|triton_tem|"
                       r"first_layer_wgrad|dgrad_1x1_stride_2x2|conv1x1|conv2d_c1_k1|direct_group")

# The patterns are lower case and run on the lower-cased name: the same matches as re.IGNORECASE on these
# ASCII names, 4-6x faster on templated kernel names of hundreds of characters (a trace's first analysis
# classifies every distinct name)
_CAT_RES = tuple((cat, re.compile(rx)) for cat, rx in CATEGORY_PATTERNS)
_SIMT_RE = re.compile(SIMT_PATTERN)
_TC_RE = re.compile(TENSOR_CORE_PATTERN)


@lru_cache(maxsize=65536)
def classify(name: str) -> tuple[str, bool]:
    """(category, uses tensor cores) for a GPU kernel / memcpy / memset name, in any case."""
    low = name.lower()
    category = "other"
    for cat, rx in _CAT_RES:
        if rx.search(low):
            category = cat
            break
    if category not in TENSOR_CORE_CATEGORIES:
        return category, False
    if _SIMT_RE.search(low):
        return category, False
    return category, bool(_TC_RE.search(low))


#: CPU ops whose input shapes the parser keeps (GEMM alignment, FLOPs checks).
SHAPE_OPS = frozenset({
    "aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", "aten::matmul", "aten::linear",
    "aten::conv1d", "aten::conv2d", "aten::conv3d", "aten::convolution", "aten::_convolution",
    "aten::cudnn_convolution", "aten::_scaled_mm", "aten::_int_mm",
    "aten::scaled_dot_product_attention", "aten::_scaled_dot_product_flash_attention",
    "aten::_scaled_dot_product_efficient_attention", "aten::_scaled_dot_product_cudnn_attention",
})

#: Operators whose kernels could run on tensor cores (the plugin's list, extended to
#: today's attention and scaled-matmul ops and the autograd names of their backward).
TC_ELIGIBLE_OPS = frozenset({
    "aten::_convolution", "aten::_convolution_nogroup", "aten::conv1d", "aten::conv2d", "aten::conv3d",
    "aten::conv_tbc", "aten::conv_transpose1d", "aten::conv_transpose2d", "aten::conv_transpose3d",
    "aten::convolution", "aten::cudnn_convolution", "aten::cudnn_convolution_transpose", "aten::prelu",
    "aten::addmm", "aten::addmv", "aten::addr", "aten::matmul", "aten::mm", "aten::mv", "aten::linear",
    "aten::addbmm", "aten::baddbmm", "aten::bmm", "aten::chain_matmul", "aten::linalg_multi_dot",
    "aten::_thnn_fused_lstm_cell", "aten::_thnn_fused_gru_cell", "aten::lstm_cell", "aten::gru_cell",
    "aten::rnn_tanh_cell", "aten::rnn_relu_cell", "CudnnConvolutionBackward", "BmmBackward0",
    "aten::cudnn_convolution_transpose_backward", "CudnnConvolutionTransposeBackward", "MmBackward",
    "aten::cudnn_convolution_backward_weight", "aten::addmm_", "AddmvBackward", "MvBackward",
    "aten::cudnn_convolution_transpose_backward_weight", "aten::cudnn_convolution_transpose_backward_input",
    "AddmmBackward", "aten::cudnn_convolution_backward_input", "AddbmmBackward",
    "aten::cudnn_convolution_backward", "aten::convolution_backward", "MmBackward0", "AddmmBackward0",
    "ConvolutionBackward0", "BaddbmmBackward0", "aten::_scaled_mm", "aten::_int_mm",
    "aten::_scaled_dot_product_flash_attention", "aten::_scaled_dot_product_efficient_attention",
    "aten::_scaled_dot_product_cudnn_attention", "aten::_flash_attention_forward",
    "aten::_efficient_attention_forward", "aten::_flash_attention_backward",
    "aten::_efficient_attention_backward", "aten::_scaled_dot_product_flash_attention_backward",
    "aten::_scaled_dot_product_efficient_attention_backward",
    "aten::_scaled_dot_product_cudnn_attention_backward",
})

#: Host calls that wait for the GPU (synchronisation points).
SYNC_RUNTIME = frozenset({
    "cudaDeviceSynchronize", "cudaStreamSynchronize", "cudaEventSynchronize", "cudaStreamWaitEvent",
    "cudaMemcpy", "cudaMemcpy2D", "cudaMemcpyFromSymbol", "cudaMemcpyToSymbol",
    "cuCtxSynchronize", "cuStreamSynchronize", "cuEventSynchronize",
})
#: CPU ops that force a device-to-host sync when their input lives on the GPU.
SYNC_OPS = frozenset({"aten::item", "aten::_local_scalar_dense", "aten::nonzero", "aten::unique",
                      "aten::_unique2", "aten::masked_select", "aten::is_nonzero", "aten::equal"})
LAUNCH_RUNTIME = frozenset({"cudaLaunchKernel", "cudaLaunchKernelExC", "cuLaunchKernel", "cuLaunchKernelEx",
                            "cudaLaunchCooperativeKernel", "cudaGraphLaunch", "cudaLaunchKernelEx"})
