"""The optimizer step's share of the step, and an implementation only where it is known to be faster."""
from __future__ import annotations

from gpulens import fmt
from gpulens.profiler.analysis.advisor.measure import Measurements
from gpulens.profiler.analysis.advisor.model import Evidence, NotEvaluated, Prediction, Suggestion
from gpulens.profiler.analysis.advisor.predict_accumulation import predict_accumulation
from gpulens.profiler.analysis.advisor.rules._shared import how, predicted_gain

THRESHOLD = 0.10  # optimizer phase > 10% of the step, judged on typical steps
MICRO_BATCHES = 2  # the accumulation proposed: the optimizer once per 2 micro-batches
#: torch.optim classes with a fused CUDA implementation (fused=True).
FUSED_ON_CUDA = ("Adam", "AdamW", "SGD", "Adagrad")


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


def _implementation(m: Measurements) -> tuple[str, str, float] | None:
    """(action, snippet, gain factor) when a faster implementation is known for this optimizer and device."""
    name, impl = m.optimizer, m.optimizer_impl
    if m.device != "cuda" or name is None or impl == "fused":
        return None  # on CPUs, foreach/fused are not reliably faster than the default; fused is the fastest
    if name in FUSED_ON_CUDA:
        ctor = f"torch.optim.{name}(model.parameters(), lr=..., fused=True)"
        was = f"the {impl} implementation" if impl else "the default implementation"
        return (f"Use the fused CUDA implementation (one kernel per parameter group) instead of {was}.",
                f"opt = {ctor}", 0.5 if impl == "for-loop" else 0.3)
    if impl == "for-loop":
        return (f"Use the multi-tensor implementation: {name}(..., foreach=True) updates all parameters in a few "
                "kernels instead of several per parameter.",
                f"opt = torch.optim.{name}(model.parameters(), lr=..., foreach=True)", 0.5)
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
    amortise = ("Spread its cost over more samples: the optimizer runs once per step whatever the batch, so a "
                "larger batch, or gradients accumulated over k micro-batches per optimizer step, cut its share "
                "per sample k-fold (scale the learning rate with the effective batch).")
    if known is not None:
        action, snippet, factor = known
        action = f"{action} Or: {amortise[0].lower()}{amortise[1:]}"
        gain_text = f"{factor:.0%} of the optimizer's share: fused/multi-tensor updates launch far fewer kernels"
    else:
        action = amortise
        if m.device != "cuda":
            action += (" On CPUs PyTorch's foreach/fused implementations are not reliably faster than the default, "
                       "so none is recommended.")
        elif m.optimizer_impl == "fused":
            action += " The fused implementation is already in use."
        snippet = ("for i, (x, y) in enumerate(loader):\n"
                   "    loss = model(x, y) / k\n"
                   "    loss.backward()\n"
                   "    if (i + 1) % k == 0:\n"
                   "        opt.step(); opt.zero_grad(set_to_none=True)")
        factor = 0.5
        gain_text = "half of the optimizer's share per sample with k=2 micro-batches per optimizer step"
    gain = judged * factor
    change, prediction = None, None
    if known is None and m.step_s:
        p = predict_accumulation(m.step_s, judged * m.step_s, MICRO_BATCHES)
        if p is not None:
            change = {"gradient_accumulation_steps": MICRO_BATCHES}
            prediction = Prediction(
                p.gain, p.low, p.high,
                f"model: the optimizer step ({fmt.ms(judged * m.step_s)} of the {fmt.ms(m.step_s)} median step) "
                f"runs once per {MICRO_BATCHES} micro-batches, the rest of the step once per micro-batch",
                measure="time_per_sample")
    expected = f"up to {fmt.share(gain, 0)} of step time"
    if prediction is not None:
        expected = predicted_gain(prediction, expected)
    return Suggestion(
        id="slow_optimizer", severity="high" if judged >= 0.25 else "medium",
        title="The optimizer step is a large part of each step",
        finding=finding, action=action, snippet=snippet,
        expected_gain=expected,
        gain_estimate=gain_text + " (judged on typical steps: outlier steps left out)", confidence="medium",
        evidence=[Evidence("phase", "optimizer per step", {"phase": "optimizer", "share": share})],
        gain_fraction=gain, change=change, prediction=prediction)
