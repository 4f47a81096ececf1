"""Launch statistics and synchronisation points: is the run launch-bound?"""
from __future__ import annotations

import numpy as np

from gpulens.profiler.analysis.trace.linking import launcher_of
from gpulens.profiler.analysis.trace.model import Cat, Trace
from gpulens.profiler.analysis.trace.patterns import SYNC_OPS, SYNC_RUNTIME

SHORT_KERNEL_US = 10.0
RUNTIME_OUTLIER_US = 50.0
LAUNCH_DELAY_OUTLIER_US = 100.0


def launch_stats(trace: Trace) -> dict[str, float | int | None] | None:
    kern = trace.mask(Cat.KERNEL)
    n = int(kern.sum())
    if n == 0:
        return None
    dur = trace.dur[kern]
    launch = launcher_of(trace, kern)
    linked = launch >= 0
    rt_dur = np.where(linked, trace.dur[np.clip(launch, 0, None)], np.nan)
    delay = np.where(linked, trace.ts[kern] - trace.ts[np.clip(launch, 0, None)], np.nan)
    steps = int(trace.mask(Cat.PROFILER_STEP).sum())
    runtime = trace.mask(Cat.RUNTIME)
    rt_all = trace.dur[runtime]
    return {
        "kernels": n,
        "steps": steps,
        "kernels_per_step": n / steps if steps else None,
        "median_kernel_us": float(np.median(dur)),
        "mean_kernel_us": float(dur.mean()),
        "short_kernel_share": float(np.mean(dur < SHORT_KERNEL_US)),
        "shorter_than_launch_share": float(np.mean(dur[linked] < rt_dur[linked])) if linked.any() else None,
        "median_launch_us": float(np.nanmedian(rt_dur)) if linked.any() else None,
        "median_launch_delay_us": float(np.nanmedian(delay)) if linked.any() else None,
        "launch_delay_outliers": int(np.sum(delay[linked] > LAUNCH_DELAY_OUTLIER_US)),
        "runtime_calls": int(runtime.sum()),
        "runtime_outliers": int(np.sum(rt_all > RUNTIME_OUTLIER_US)),
        "linked_share": float(linked.mean()),
    }


def sync_stats(trace: Trace) -> dict[str, dict[str, float | int]]:
    """Host calls that wait for the GPU, and ops that force a device-to-host sync."""
    out: dict[str, dict[str, float | int]] = {}
    if not trace.has_gpu:
        return out  # .item() on a CPU tensor waits for nothing
    runtime = trace.mask(Cat.RUNTIME, Cat.DRIVER)
    sync = runtime & trace.name_flags(lambda n: n in SYNC_RUNTIME)
    # .item() & co. only wait for the GPU when their tensor lives there, i.e. when the op
    # issued a runtime call (the device-to-host copy); on CPU tensors they cost nothing
    on_gpu = np.isin(trace.ext, np.unique(trace.ext[runtime & (trace.ext >= 0)])) & (trace.ext >= 0)
    sync |= trace.mask(Cat.CPU_OP) & trace.name_flags(lambda n: n in SYNC_OPS) & on_gpu
    ids = trace.name[sync]
    if ids.size:
        uniq, inv = np.unique(ids, return_inverse=True)
        calls = np.bincount(inv)
        total = np.bincount(inv, weights=trace.dur[sync])
        for k, nid in enumerate(uniq):
            out[trace.names[nid]] = {"calls": int(calls[k]), "total_us": float(total[k])}
    dtoh = trace.mask(Cat.MEMCPY) & trace.name_flags(lambda n: "DtoH" in n)
    if dtoh.any():
        out["Memcpy DtoH (device-to-host copies)"] = {"calls": int(dtoh.sum()),
                                                      "total_us": float(trace.dur[dtoh].sum())}
    return dict(sorted(out.items(), key=lambda kv: -kv[1]["total_us"]))
