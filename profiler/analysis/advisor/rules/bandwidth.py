"""Memory-bandwidth-bound work: time in elementwise, reduction and normalisation kernels."""
from __future__ import annotations

from gpulens import fmt
from gpulens.profiler.analysis.advisor.measure import Measurements
from gpulens.profiler.analysis.advisor.model import Evidence, Suggestion
from gpulens.profiler.analysis.advisor.rules._shared import busy_fraction

MEMORY_BOUND = ("elementwise", "reduction", "normalization")


def bandwidth_bound(m: Measurements) -> Suggestion | None:
    if not m.has_kernels or not m.category_share:
        return None
    share = sum(m.category_share.get(c, 0.0) for c in MEMORY_BOUND)
    if share < 0.5 or (m.tc_share or 0.0) >= 0.3:
        return None
    parts = ", ".join(f"{c} {fmt.share(m.category_share.get(c, 0.0), 0)}" for c in MEMORY_BOUND)
    finding = f"{fmt.share(share, 0)} of kernel time is memory-bound work ({parts})"
    if m.dram_bw_pct is not None and m.sm_active_pct:
        finding += f"; GPM DRAM bandwidth {m.dram_bw_pct:.0f}% against SM activity {m.sm_active_pct:.0f}%"
    gain = share * 0.5 * busy_fraction(m)
    return Suggestion(
        id="bandwidth_bound", severity="medium", title="Kernels move memory more than they compute",
        finding=finding,
        action=("Fuse the elementwise and normalisation chains so data is read once: torch.compile, fused "
                "optimizers (fused=True), scaled_dot_product_attention instead of hand-written attention."),
        snippet="model = torch.compile(model)  # fuses elementwise/normalisation chains into Triton kernels",
        expected_gain=f"about {fmt.share(gain, 0)} of step time",
        gain_estimate="memory-bound kernel share x 1/2 (fusion halves the traffic) x GPU-busy share; "
                      "bounded by that share",
        confidence="low" if m.dram_bw_pct is None else "medium",
        evidence=[Evidence("kernels", "memory-bound kernels", {"category": list(MEMORY_BOUND)}),
                  Evidence("metric", "DRAM bandwidth", {"metric": "gpm.dram_bw", "gpu": 0})],
        gain_fraction=gain)
