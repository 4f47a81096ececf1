"""The optimizer step's share of the step, and an implementation only where it is known to be faster.

Two changes are predicted: a faster implementation measured by ``--what-if
optimizer=fused`` (or ``foreach``) in the run itself, and gradients
accumulated over more micro-batches (modelled, :mod:`predict_accumulation`).
An implementation that was not measured keeps an upper bound and the hint to
measure it: how much fewer kernels (or, on a CPU, one vectorised pass instead
of a dozen small ops per parameter) save depends on the parameters' count and
sizes, which no recorded figure gives.
"""
from __future__ import annotations

from gpulens import fmt
from gpulens.profiler.analysis.advisor.measure import Measurements
from gpulens.profiler.analysis.advisor.model import Evidence, NotEvaluated, Prediction, Suggestion
from gpulens.profiler.analysis.advisor.predict_accumulation import predict_accumulation
from gpulens.profiler.analysis.advisor.rules._shared import (
    WHAT_IF_STEP_ERROR,
    WORTH_PROPOSING,
    how,
    measured_what_if,
    predicted_gain,
)

THRESHOLD = 0.10  # optimizer phase > 10% of the step, judged on typical steps
MICRO_BATCHES = 2  # the accumulation proposed: the optimizer once per 2 micro-batches
#: torch.optim classes with a fused implementation (fused=True): CUDA kernels, and CPU ones since torch 2.4.
FUSED = ("Adam", "AdamW", "SGD", "Adagrad")
FUSED_ON_CPU_SINCE = (2, 4)


def _judged_share(m: Measurements) -> float:
    """The optimizer's share of a typical step: the smaller of the share without outlier steps and the median
    step's share, so a few contended seconds cannot make a fast optimizer look slow."""
    share = m.phase_share.get("optimizer", 0.0)
    typical = m.phase_share_typical.get("optimizer", share)
    median = m.phase_share_median.get("optimizer")
    judged = min(typical, median) if median is not None else typical
    gpu_share = (m.gpu_phase_share or {}).get("optimizer")
    if m.device == "cuda" and gpu_share is not None:
        judged = max(judged, gpu_share)  # the GPU stream's own time in the optimizer phase
    return judged


def _torch_at_least(version: str | None, wanted: tuple[int, int]) -> bool:
    try:
        major, minor = (int(x) for x in (version or "").split("+")[0].split(".")[:2])
    except ValueError:
        return False
    return (major, minor) >= wanted


def _implementation(m: Measurements) -> tuple[str, str, float, str] | None:
    """(action, snippet, gain factor, what-if value) when a faster implementation is known for this optimizer
    and device."""
    name, impl = m.optimizer, m.optimizer_impl
    if name is None or impl == "fused":
        return None  # fused is the fastest
    was = f"the {impl} implementation" if impl else "the default implementation"
    ctor = f"torch.optim.{name}(model.parameters(), lr=..., fused=True)"
    if m.device == "cuda" and name in FUSED:
        return (f"Use the fused CUDA implementation (one kernel per parameter group) instead of {was}.",
                f"opt = {ctor}", 0.5 if impl == "for-loop" else 0.3, "fused")
    if m.device != "cuda" and name in FUSED and _torch_at_least(m.torch_version, FUSED_ON_CPU_SINCE):
        # measured on a 2-core VM, torch 2.13: AdamW's step over 16-240 parameters 4-9x faster fused
        return (f"Use the fused CPU implementation (torch 2.4 and later: one vectorised pass over all parameters) "
                f"instead of {was}, which runs several small ops per parameter.", f"opt = {ctor}", 0.7, "fused")
    if m.device == "cuda" and impl == "for-loop":
        return (f"Use the multi-tensor implementation: {name}(..., foreach=True) updates all parameters in a few "
                "kernels instead of several per parameter.",
                f"opt = torch.optim.{name}(model.parameters(), lr=..., foreach=True)", 0.5, "foreach")
    return None


def slow_optimizer(m: Measurements) -> Suggestion | NotEvaluated | None:
    if m.steps == 0 or not m.phase_share:
        return None
    instrumented = any(m.phase_share.get(p, 0.0) > 0 for p in ("forward", "backward", "optimizer"))
    if not instrumented:
        return NotEvaluated("slow_optimizer", how(
            m, "needs the optimizer phase: wrap opt.step() in run.phase('optimizer')",
            "needs the optimizer phase: gpulens run saw no torch.optim optimizer step"))
    judged = _judged_share(m)
    if judged <= THRESHOLD:
        return None
    share = m.phase_share.get("optimizer", 0.0)
    what = ", ".join(x for x in (m.optimizer, f"{m.optimizer_impl} implementation" if m.optimizer_impl else None,
                                  f"parameters on {m.optimizer_device}" if m.optimizer_device else None) if x)
    finding = f"the optimizer step{f' ({what})' if what else ''} takes {fmt.share(share)} of step time"
    median = m.phase_share_median.get("optimizer")
    if median is not None:
        finding += f" ({fmt.share(median)} of the median step)"
    gpu_share = (m.gpu_phase_share or {}).get("optimizer")
    if gpu_share is not None:
        finding += f"; GPU stream: {fmt.share(gpu_share)}"
    multi = sum(k.calls for k in m.top_kernels if "multi_tensor_apply" in k.name)
    if multi:
        finding += f"; {multi} multi_tensor_apply launches in the profiled steps"
    known = _implementation(m)
    measured = (measured_what_if(m, "optimizer", f"the optimizer's {m.what_if.implementation} implementation",
                                 WHAT_IF_STEP_ERROR) if m.what_if is not None and m.what_if.implementation else None)
    tried = m.what_if.implementation if measured is not None and m.what_if is not None else None
    if measured is not None:
        finding += f"; {measured[0]}"
        if measured[1].gain_fraction < WORTH_PROPOSING and known is not None and known[3] == tried:
            known = None  # measured not to help here: not recommended on a general belief
    amortise = ("Spread its cost over more samples: the optimizer runs once per step whatever the batch, so a "
                "larger batch, or gradients accumulated over k micro-batches per optimizer step, cut its share "
                "per sample k-fold (scale the learning rate with the effective batch).")
    accumulate = ("for i, (x, y) in enumerate(loader):\n"
                  "    loss = model(x, y) / k\n"
                  "    loss.backward()\n"
                  "    if (i + 1) % k == 0:\n"
                  "        opt.step(); opt.zero_grad(set_to_none=True)")
    if known is not None:
        action, snippet, factor, _ = known
        if measured is None:
            flag = f"optimizer={known[3]}"
            hint = how(m, f'track(..., what_if="{flag}")', f"gpulens run --what-if {flag}")
            action += f" Measure its gain first: {hint}."
        action = f"{action} Or: {amortise[0].lower()}{amortise[1:]}"
        gain_text = f"{factor:.0%} of the optimizer's share: fused/multi-tensor updates run far fewer ops"
    else:
        action = amortise
        if m.device != "cuda" and m.optimizer in FUSED and m.torch_version \
                and not _torch_at_least(m.torch_version, FUSED_ON_CPU_SINCE):
            action += f" PyTorch {m.torch_version} has no fused CPU implementation to switch to (2.4 and later do)."
        elif m.optimizer_impl == "fused":
            action += " The fused implementation is already in use."
        snippet, factor = accumulate, 0.5
        gain_text = "half of the optimizer's share per sample with k=2 micro-batches per optimizer step"
    gain = judged * factor
    change: dict[str, bool | int] | None = None
    prediction = None
    if measured is not None and measured[1].gain_fraction >= WORTH_PROPOSING and tried:
        change, prediction = {tried: True}, measured[1]
        action = (f"Use torch's {tried} implementation of the optimizer ({measured[1].gain_fraction:.0%} shorter "
                  f"steps measured in this run). Or: {amortise[0].lower()}{amortise[1:]}")
        snippet = f"opt = torch.optim.{m.optimizer or 'AdamW'}(model.parameters(), lr=..., {tried}=True)"
        gain = max(gain, judged)  # an implementation cannot save more than the whole optimizer step
        gain_text = "the optimizer's whole share: a faster implementation cannot save more"
    elif m.step_s:
        p = predict_accumulation(m.step_s, judged * m.step_s, MICRO_BATCHES)
        if p is not None:
            change = {"gradient_accumulation_steps": MICRO_BATCHES}
            prediction = Prediction(
                p.gain, p.low, p.high,
                f"model: the optimizer step ({fmt.ms(judged * m.step_s)} of the {fmt.ms(m.step_s)} median step) "
                f"runs once per {MICRO_BATCHES} micro-batches, the rest of the step once per micro-batch",
                measure="time_per_sample")
            if known is not None:
                snippet = f"{snippet}\n# or, predicted below: accumulate over k={MICRO_BATCHES} micro-batches\n" \
                          f"{accumulate}"
    expected = f"up to {fmt.share(gain, 0)} of step time"
    if known is not None and (change is None or tried is None):
        expected += f" ({known[3]}, not measured)"
    if prediction is not None:
        expected = predicted_gain(prediction, expected)
        if "gradient_accumulation_steps" in (change or {}):
            expected = f"gradient accumulation (k={MICRO_BATCHES}): {expected}"
    return Suggestion(
        id="slow_optimizer", severity="high" if judged >= 0.25 else "medium",
        title="The optimizer step is a large part of each step",
        finding=finding, action=action, snippet=snippet,
        expected_gain=expected,
        gain_estimate=gain_text + " (judged on typical steps: outlier steps left out)", confidence="medium",
        evidence=[Evidence("phase", "optimizer per step", {"phase": "optimizer", "share": share})],
        gain_fraction=gain, change=change, prediction=prediction)
