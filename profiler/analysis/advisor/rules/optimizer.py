"""The optimizer step's share of the step."""
from __future__ import annotations

from gpulens import fmt
from gpulens.profiler.analysis.advisor.measure import Measurements
from gpulens.profiler.analysis.advisor.model import Evidence, NotEvaluated, Suggestion
from gpulens.profiler.analysis.advisor.rules._fmt import how

THRESHOLD = 0.10  # ADVISOR-RULES [heur]: optimizer phase > 10% of step


def slow_optimizer(m: Measurements) -> Suggestion | NotEvaluated | None:
    if m.steps == 0 or not m.phase_share:
        return None
    instrumented = any(m.phase_share.get(p, 0.0) > 0 for p in ("forward", "backward", "optimizer"))
    if not instrumented:
        return NotEvaluated("slow_optimizer", how(
            m, "needs the optimizer phase: wrap opt.step() in run.phase('optimizer')",
            "needs the optimizer phase: gpulens run saw no torch.optim optimizer step"))
    share = m.phase_share.get("optimizer", 0.0)
    gpu_share = (m.gpu_phase_share or {}).get("optimizer")
    if m.device == "cuda" and gpu_share is not None:
        share = max(share, gpu_share) if share < THRESHOLD else share
    if share <= THRESHOLD:
        return None
    opt = f" ({m.optimizer})" if m.optimizer else ""
    finding = f"the optimizer step{opt} takes {fmt.share(share)} of step time"
    if gpu_share is not None:
        finding += f" (GPU stream: {fmt.share(gpu_share)})"
    multi = sum(k["calls"] for k in m.top_kernels if "multi_tensor_apply" in k["name"])
    if multi:
        finding += f"; {multi} multi_tensor_apply launches in the profiled steps"
    return Suggestion(
        id="slow_optimizer", severity="high" if share >= 0.25 else "medium",
        title="The optimizer step is a large part of each step",
        finding=finding,
        action=("Use the fused implementation (one kernel for all parameters) and drop gradients instead of "
                "zeroing them."),
        snippet=("opt = torch.optim.AdamW(model.parameters(), lr=..., fused=True)  # or foreach=True\n"
                 "opt.zero_grad(set_to_none=True)"),
        expected_gain=f"up to {fmt.share(share * 0.5, 0)} of step time",
        gain_estimate="half of the optimizer share: fused/foreach kernels are typically 2x+ faster than per-"
                      "parameter loops", confidence="medium",
        evidence=[Evidence("phase", "optimizer per step", {"phase": "optimizer", "share": share})],
        gain_fraction=share * 0.5)
