"""GPU utilisation, launch overhead and synchronisation points."""
from __future__ import annotations

from gpulens import fmt
from gpulens.profiler.analysis.advisor.measure import Measurements
from gpulens.profiler.analysis.advisor.model import Evidence, NotEvaluated, Suggestion
from gpulens.profiler.analysis.advisor.rules._shared import busy_fraction, busy_words, how, windows_typical
from gpulens.profiler.analysis.kernel_view import steps_in_windows


def low_gpu_busy(m: Measurements) -> Suggestion | None:
    if m.device != "cuda":
        return None
    busy = busy_fraction(m)
    if busy >= 0.5:
        return None
    finding = busy_words(m)
    if m.sm_active_pct is not None:
        finding += f"; GPM SM activity {fmt.percent(m.sm_active_pct)}"
    pa = m.phase_activity
    busy_by_phase = m.phase_gpu_busy
    traced = busy_by_phase.phases if busy_by_phase is not None and busy_by_phase.complete else {}
    if traced:  # exact for the profiled steps: the trace holds the phase ranges and the kernels
        finding += ("; GPU busy while the host was in each phase (profiled steps, from the trace): "
                    + ", ".join(f"{fmt.phase(name)} {fmt.share(row.gpu_busy_share, 0)}"
                                for name, row in traced.items() if row.gpu_busy_share is not None))
    elif pa is not None and pa.precise() and len(pa.by_phase) >= 2:
        finding += ("; SM activity while the host was in each phase (GPU work runs after its launch): "
                    + ", ".join(f"{fmt.phase(name)} {fmt.percent(v, 0)}" for name, v in pa.by_phase.items()))
    return Suggestion(
        id="low_gpu_busy", severity="medium", title="The GPU is idle most of the time",
        finding=finding,
        action="Find what it waits for: the suggestions above name the cause when gpulens can see it "
               "(data, launches, synchronisation); otherwise raise the batch size.",
        expected_gain=f"up to {fmt.share(1 - busy, 0)} of step time, only by removing what the GPU waits for",
        gain_estimate="the GPU's idle share: a step can shrink at most to the GPU's busy time", confidence="high",
        evidence=[Evidence("metric", "GPU busy", {"metric": "gpu.util", "gpu": 0}),
                  Evidence("metric", "SM activity", {"metric": "gpm.sm_active", "gpu": 0})],
        gain_fraction=None)


def launch_bound(m: Measurements) -> Suggestion | NotEvaluated | None:
    if m.device != "cuda":
        return None
    if not m.launch:
        return NotEvaluated("launch_bound", how(m,
                                                "needs a profiler window with CUDA kernels (track(profile_every=...))",
                                 "needs a profiler window with CUDA kernels (gpulens run --profile-every N)"))
    # judge the compute part of the step: time waiting for data is not launch overhead
    data = m.phase_share.get("data_wait", 0.0) if m.phase_share else 0.0
    compute = max(1e-6, 1.0 - data)
    busy = min(1.0, busy_fraction(m) / compute)
    short = m.launch.shorter_than_launch_share
    median = m.launch.median_kernel_us
    if short is None or median is None or short < 0.4 or median > 20 or busy >= 0.7:
        return None
    host_wait = m.host_wait_share if m.host_wait_share is not None else 0.5
    gain = compute * (1 - busy) * host_wait
    severity = "high" if busy < 0.4 and short >= 0.6 and gain >= 0.15 else "medium"
    finding = (f"{fmt.share(short, 0)} of kernels finish before their launch call returns (median kernel "
               f"{median:.1f} µs, {m.launch.kernels_per_step or 0:.0f} kernels per step); "
               f"{busy_words(m, outside_data=data > 0.05)}")
    if m.host_wait_share is not None:
        finding += f"; {fmt.share(m.host_wait_share, 0)} of GPU idle time is spent waiting for the host to launch"
    typical, windows = windows_typical(m)
    if windows:
        finding += f"; {windows}" + ("" if typical else " (the profiled steps are not typical of the run)")
    return Suggestion(
        id="launch_bound", severity=severity, title="Kernel launches, not the GPU, set the pace",
        finding=finding,
        action=("Launch fewer, bigger kernels: a larger batch; torch.compile to fuse small ops, with "
                "mode='reduce-overhead' to replay the step as a CUDA graph; fewer Python-side ops per step."),
        snippet="model = torch.compile(model, mode=\"reduce-overhead\")  # CUDA graphs: one launch per step",
        expected_gain=f"up to {fmt.share(gain, 0)} of step time (GPU idle time spent waiting for launches)",
        gain_estimate="non-data-wait share x GPU idle share x share of idle time attributed to host launches "
                      "(HTA's idle categories); "
                      "torch.compile gained 43% on average over 163 models (PyTorch 2.0 figures)",
        confidence="medium" if typical else "low",
        evidence=[Evidence("kernels", "shortest frequent kernels", {"window": 0}),
                  Evidence("metric", "GPU busy", {"metric": "gpu.util", "gpu": 0})],
        gain_fraction=gain)


def sync_points(m: Measurements) -> Suggestion | None:
    if m.device != "cuda" or not m.sync or not m.step_s:
        return None
    n_steps = steps_in_windows(m.windows) or 1
    calls = {k: v for k, v in m.sync.items() if not k.startswith("Memcpy")}
    if not calls:
        return None
    total_us = sum(v.total_us for v in calls.values()) / n_steps
    share = total_us / (m.step_s * 1e6)
    per_step = sum(v.calls for v in calls.values()) / n_steps
    if share < 0.05 or per_step < 1:
        return None
    top = ", ".join(f"{k} x{v.calls / n_steps:.1f}/step" for k, v in list(calls.items())[:3])
    return Suggestion(
        id="sync_points", severity="medium" if share >= 0.15 else "low",
        title="The host waits for the GPU inside the step",
        finding=f"{per_step:.1f} synchronising calls per step take {fmt.share(share)} of the step ({top})",
        action=("Keep values on the GPU: log losses every N steps (or through gpulens' async loss), avoid "
                ".item()/.cpu()/nonzero() in the loop; find the calls with torch.cuda.set_sync_debug_mode."),
        snippet="torch.cuda.set_sync_debug_mode(\"warn\")  # warns at every synchronising call",
        expected_gain=f"up to {fmt.share(share, 0)} of step time",
        gain_estimate="upper bound: time spent inside the synchronising calls",
        confidence="medium", evidence=[Evidence("kernels", "synchronisation calls", {"names": list(calls)[:5]})],
        gain_fraction=share)
