"""Launch statistics and synchronisation points: is the run launch-bound?"""
from __future__ import annotations

import numpy as np

from gpulens.profiler.trace.linking import launcher_of
from gpulens.profiler.trace.model import Cat, Trace
from gpulens.profiler.trace.patterns import SYNC_OPS, SYNC_RUNTIME

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
    host = trace.mask(Cat.RUNTIME, Cat.DRIVER, Cat.CPU_OP)
    idx = np.flatnonzero(host)
    names = trace.names
    for i in idx:
        name = names[trace.name[i]]
        if name in SYNC_RUNTIME or name in SYNC_OPS:
            row = out.setdefault(name, {"calls": 0, "total_us": 0.0})
            row["calls"] += 1
            row["total_us"] += float(trace.dur[i])
    dtoh = trace.mask(Cat.MEMCPY)
    dtoh_names = [n for n in trace.names_where(dtoh) if "DtoH" in n]
    if dtoh_names:
        out["Memcpy DtoH (device-to-host copies)"] = {"calls": len(dtoh_names), "total_us": float(
            sum(trace.dur[i] for i in np.flatnonzero(dtoh) if "DtoH" in trace.names[trace.name[i]]))}
    return dict(sorted(out.items(), key=lambda kv: -kv[1]["total_us"]))
