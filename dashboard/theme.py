"""Colours and figure styling shared by every page.

One colour per GPU everywhere (time series, per-GPU tables, compare), so a
user who learnt "GPU 3 is orange" on one panel reads every other panel at a
glance.  The palette is Okabe-Ito plus two, distinguishable with the common
colour-vision deficiencies.
"""
from __future__ import annotations

from typing import Any

from gpulens import fmt

GPU_COLORS = ("#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442", "#7F3C8D")
HOST_COLORS = ("#555555", "#999999", "#333333")
RANK_COLORS = GPU_COLORS

PHASE_COLORS = {
    "data_wait": "#D55E00",
    "forward": "#0072B2",
    "backward": "#56B4E9",
    "optimizer": "#009E73",
    "other": "#999999",
}
PHASE_LABELS = {p: fmt.phase(p) for p in PHASE_COLORS}  # legends' names: the prose's (gpulens.fmt.phase)

CATEGORY_COLORS = {
    "gemm": "#0072B2",
    "convolution": "#56B4E9",
    "attention": "#7F3C8D",
    "elementwise": "#E69F00",
    "reduction": "#F0E442",
    "normalization": "#CC79A7",
    "memcpy": "#D55E00",
    "memset": "#A6761D",
    "communication": "#009E73",
    "other": "#999999",
}

#: TensorBoard profiler plugin's step-time breakdown, in its order.
BREAKDOWN_COLORS = {"Kernel": "#0072B2", "Memcpy": "#D55E00", "Memset": "#CC79A7", "Communication": "#009E73",
                    "Runtime": "#E69F00", "DataLoader": "#56B4E9", "CPU Exec": "#7F3C8D", "Other": "#BBBBBB"}
TEMPORAL_COLORS = {"compute": "#0072B2", "communication": "#009E73", "memcpy": "#D55E00", "idle": "#BBBBBB"}

THEMES = ("light", "dark")
_INK = {"light": "#1f2328", "dark": "#e6edf3"}
_GRID = {"light": "rgba(31,35,40,0.10)", "dark": "rgba(230,237,243,0.12)"}
_MUTED = {"light": "#59636e", "dark": "#9198a1"}


def gpu_color(i: int) -> str:
    return GPU_COLORS[i % len(GPU_COLORS)]


def theme_name(value: Any) -> str:
    return value if value in THEMES else "light"


def base_layout(theme: str, **extra: Any) -> dict[str, Any]:
    """Transparent backgrounds (the page colours show through) and theme-aware ink and grid."""
    theme = theme_name(theme)
    ink, grid = _INK[theme], _GRID[theme]
    layout: dict[str, Any] = {
        "paper_bgcolor": "rgba(0,0,0,0)",
        "plot_bgcolor": "rgba(0,0,0,0)",
        "font": {"family": "system-ui, -apple-system, 'Segoe UI', Roboto, sans-serif", "size": 12, "color": ink},
        "margin": {"l": 70, "r": 20, "t": 30, "b": 45},
        "hoverlabel": {"namelength": -1},
        "legend": {"orientation": "h", "yanchor": "bottom", "y": 1.0, "xanchor": "left", "x": 0},
        "colorway": list(GPU_COLORS),
        "_grid": grid,  # popped by axis() users; kept here so builders share one source
        "_muted": _MUTED[theme],
    }
    layout.update(extra)
    return layout


def axis(layout: dict[str, Any], **extra: Any) -> dict[str, Any]:
    """An axis styled for ``layout``'s theme."""
    out = {"gridcolor": layout["_grid"], "zerolinecolor": layout["_grid"], "linecolor": layout["_grid"],
           "automargin": True}
    out.update(extra)
    return out


def finish(layout: dict[str, Any]) -> dict[str, Any]:
    """Drop the private keys before the layout goes to the browser; titles start at the left edge, where
    Plotly's toolbar (top right) never covers them."""
    out = {k: v for k, v in layout.items() if not k.startswith("_")}
    if isinstance(out.get("title"), dict):
        out["title"] = {"x": 0.0, "xanchor": "left", "xref": "paper", **out["title"]}
    return out
