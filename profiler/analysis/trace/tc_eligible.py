"""Share of kernel time launched by tensor-core-eligible operators (the plugin's AMP hint).

A kernel belongs to the CPU operator whose launch call it came from (Kineto
ties runtime calls to operators by external id); it counts as eligible when
that operator is a GEMM, convolution, attention or RNN-cell op
(patterns.TC_ELIGIBLE_OPS) -- the plugin's "bottom-most eligible operator"
rule, since kernels of a non-eligible child op (a bias add inside a
convolution) belong to that child.
"""
from __future__ import annotations

import numpy as np

from gpulens.profiler.analysis.trace.linking import launcher_of
from gpulens.profiler.analysis.trace.model import Cat, Trace
from gpulens.profiler.analysis.trace.patterns import TC_ELIGIBLE_OPS


def tc_eligible_share(trace: Trace) -> float | None:
    """Kernel time launched by eligible ops over kernel time launched by any op (None: no kernels)."""
    kern = trace.mask(Cat.KERNEL)
    if not kern.any():
        return None
    launch = launcher_of(trace, kern)
    ext = np.where(launch >= 0, trace.ext[np.clip(launch, 0, None)], -1)
    ops = np.flatnonzero(trace.mask(Cat.CPU_OP, Cat.USER_ANNOTATION) & (trace.ext >= 0))
    if ops.size == 0:
        return None
    # several ops can carry one external id; the innermost (shortest) one launched the kernel
    order = ops[np.lexsort((trace.dur[ops], trace.ext[ops]))]
    op_ext = trace.ext[order]
    first = np.r_[True, op_ext[1:] != op_ext[:-1]]
    op_ext, op_at = op_ext[first], order[first]
    eligible_name = np.zeros(len(trace.names), dtype=bool)
    for i, n in enumerate(trace.names):
        if n in TC_ELIGIBLE_OPS:
            eligible_name[i] = True
    pos = np.searchsorted(op_ext, ext)
    pos_c = np.clip(pos, 0, op_ext.size - 1)
    found = (ext >= 0) & (op_ext[pos_c] == ext)
    dur = trace.dur[kern]
    total = float(dur[found].sum())
    if total <= 0:
        return None
    good = found & eligible_name[trace.name[op_at[pos_c]]]
    return float(dur[good].sum() / total)
