"""The PyTorch profiler TensorBoard plugin's overview, reproduced.

Its users lost this view when the plugin was deleted from Kineto; the
definitions (from the plugin's code) are kept exactly so the figures match
what they used to read:

- GPU utilization: union of kernel intervals (memcpy/memset excluded) inside
  [first step start, last step end] over that window;
- estimated SM efficiency: each kernel's ``blocks per SM``, summed over
  concurrently running kernels and clipped to 1, integrated over the window;
- estimated achieved occupancy: kernel-time-weighted ``est. achieved
  occupancy %`` inside the window;
- tensor-core share: tensor-core kernel time over kernel time in the window
  (with today's kernel-name table, see patterns.py);
- step breakdown: every instant of a step goes to the first category active
  then, in the order Kernel > Memcpy > Memset > Communication > Runtime >
  DataLoader > CPU Exec, else Other.

One deliberate difference: ``gpu_user_annotation`` spans (GPU-side copies of
annotations in recent traces) are not counted as CPU work or as steps.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from gpulens.profiler.analysis.trace import intervals as iv
from gpulens.profiler.analysis.trace.kernels import tensor_core_share
from gpulens.profiler.analysis.trace.model import Cat, Trace
from gpulens.profiler.analysis.trace.steps import device_steps

ROLES = ("Kernel", "Memcpy", "Memset", "Communication", "Runtime", "DataLoader", "CPU Exec")
COMM_OPS = frozenset({f"{lib}:{op}" for lib in ("nccl", "gloo")
                      for op in ("broadcast", "reduce", "all_reduce", "all_gather", "reduce_scatter")})


def _role_unions(trace: Trace) -> list[iv.Union]:
    ops = trace.mask(Cat.CPU_OP, Cat.USER_ANNOTATION)
    op_idx = np.flatnonzero(ops)
    is_loader = trace.name_flags(lambda n: (n.startswith("enumerate(DataLoader)#") and n.endswith(".__next__"))
                                 or n.startswith("enumerate(DataPipe)#"))[op_idx]
    is_comm = trace.name_flags(lambda n: n in COMM_OPS)[op_idx]
    comm_ext = np.unique(trace.ext[op_idx[is_comm]])
    kern = trace.mask(Cat.KERNEL)
    comm_kern = kern & np.isin(trace.ext, comm_ext) & (trace.ext >= 0) if comm_ext.size else np.zeros_like(kern)

    def u(mask: np.ndarray) -> iv.Union:
        return iv.merge(trace.ts[mask], trace.ends(mask))

    def sub(index: np.ndarray) -> iv.Union:
        return iv.merge(trace.ts[index], trace.ends(index))

    cpu_exec = np.concatenate((op_idx[~is_loader & ~is_comm], np.flatnonzero(trace.mask(Cat.PYTHON))))
    return [
        u(kern & ~comm_kern),
        u(trace.mask(Cat.MEMCPY)),
        u(trace.mask(Cat.MEMSET)),
        iv.combine(u(comm_kern), sub(op_idx[is_comm])),
        u(trace.mask(Cat.RUNTIME)),
        sub(op_idx[is_loader]),
        sub(cpu_exec),
    ]


def step_breakdown(trace: Trace) -> dict[str, Any]:
    """Per step and on average: the plugin's category split of the step time (µs)."""
    spans = device_steps(trace)
    a = np.asarray([s.start for s in spans])
    b = np.asarray([s.end for s in spans])
    roles = _role_unions(trace)
    per_step = np.zeros((len(spans), len(ROLES) + 1))
    taken_prev = np.zeros(len(spans))
    taken = iv.EMPTY
    for k, role in enumerate(roles):
        taken = iv.combine(taken, role)
        now = iv.overlap(taken, a, b)
        per_step[:, k] = now - taken_prev
        taken_prev = now
    per_step[:, -1] = (b - a) - taken_prev
    labels = (*ROLES, "Other")
    steps = [{"name": s.name, "start_us": s.start, "end_us": s.end, "duration_us": s.end - s.start,
              "breakdown_us": dict(zip(labels, map(float, row)))} for s, row in zip(spans, per_step)]
    avg = {label: float(per_step[:, k].mean()) for k, label in enumerate(labels)} if len(spans) else {}
    avg["Total"] = float((b - a).mean()) if len(spans) else 0.0
    return {"steps": steps, "average_us": avg}


def gpu_summary(trace: Trace) -> list[dict[str, Any]]:
    """Per device: GPU utilization, est. SM efficiency, est. occupancy, tensor-core share (percent)."""
    kern = trace.mask(Cat.KERNEL)
    if not kern.any():
        return []
    spans = device_steps(trace)
    w0, w1 = spans[0].start, spans[-1].end
    window = w1 - w0
    out = []
    for dev in np.unique(trace.device[kern]):
        on = kern & (trace.device == dev)
        ts, end = trace.ts[on], trace.ends(on)
        busy = iv.length(iv.clip(iv.merge(ts, end), w0, w1))
        bps = trace.blocks_per_sm[on]
        has_bps = np.isfinite(bps) & (bps > 0)
        ps, pe, pv = iv.weighted_sum_clipped(ts[has_bps], end[has_bps], bps[has_bps])
        cs, ce = np.maximum(ps, w0), np.minimum(pe, w1)
        keep = ce > cs
        sm_eff = float(((ce - cs)[keep] * pv[keep]).sum() / window) if window > 0 and keep.any() else None
        occ = trace.occupancy[on]
        has_occ = np.isfinite(occ) & (occ >= 0)
        os_, oe = np.maximum(ts[has_occ], w0), np.minimum(end[has_occ], w1)
        ok = oe > os_
        occ_time = float((oe - os_)[ok].sum())
        occupancy = float(((oe - os_)[ok] * occ[has_occ][ok]).sum() / occ_time) if occ_time > 0 else None
        tc = tensor_core_share(trace, (w0, w1), int(dev))
        out.append({
            "device": int(dev),
            "gpu_utilization_pct": 100.0 * busy / window if window > 0 else None,
            "sm_efficiency_pct": 100.0 * sm_eff if sm_eff is not None else None,
            "achieved_occupancy_pct": occupancy,
            "tensor_core_pct": 100.0 * tc if tc is not None else None,
            "window_us": window,
            "steps": len(spans),
        })
    return out
