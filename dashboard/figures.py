"""Plotly figures as plain dicts: pure functions of already-read data.

Arrays go out as base64 typed arrays (``{"dtype": "f4", "bdata": ...}``,
understood by plotly.js since 2.28): a 2,000-point float32 trace is ~11 KB
instead of ~40 KB of JSON numbers, and nothing passes through plotly.py's
validators on the hot path.  All traces are SVG ``scatter``: downsampled data
never needs WebGL, and a page full of WebGL contexts is what makes browsers
drop plots.
"""
from __future__ import annotations

import base64
from collections.abc import Sequence
from typing import Any

import numpy as np

from gpulens.dashboard import theme as th
from gpulens.dashboard.panels import Timeseries

#: (divisor, axis label) for the time axis, by run length.
TIME_UNITS = ((3 * 3600.0, 3600.0, "h"), (600.0, 60.0, "min"), (0.0, 1.0, "s"))


def typed(values: np.ndarray | Sequence[float], dtype: str = "f4") -> dict[str, str] | list:
    arr = np.ascontiguousarray(values, dtype=np.float32 if dtype == "f4" else np.float64)
    if arr.size == 0:
        return []
    return {"dtype": dtype, "bdata": base64.b64encode(arr.tobytes()).decode("ascii")}


def _plain(values: np.ndarray) -> list:
    """A JSON list with NaN as null (live figures are extended point by point, see pages.live)."""
    arr = np.asarray(values, dtype=np.float64)
    return [None if not np.isfinite(v) else round(float(v), 4) for v in arr]


def time_unit(duration_s: float) -> tuple[float, str]:
    """How the time axis is labelled: seconds for short runs, minutes, hours for long ones."""
    for threshold, divisor, label in TIME_UNITS:
        if duration_s >= threshold:
            return divisor, label
    return 1.0, "s"


def plain_text(text: str) -> str:
    """Text from a run (its name, an error naming a path) as Plotly shows it: as text.

    Plotly renders a subset of HTML in names, titles and hover labels --
    ``<a href>`` becomes a live link -- and reads ``%{...}`` in hover
    templates; both are escaped.
    """
    return (str(text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
            .replace("%{", "&#37;{"))


def empty_figure(message: str, theme: str = "light", height: int = 200) -> dict[str, Any]:
    layout = th.base_layout(theme, height=height)
    layout.update(xaxis={"visible": False}, yaxis={"visible": False},
                  annotations=[{"text": plain_text(message), "showarrow": False, "xref": "paper", "yref": "paper",
                                "x": 0.5, "y": 0.5, "font": {"size": 14, "color": layout["_muted"]}}])
    return {"data": [], "layout": th.finish(layout)}


def _color(index: int) -> str:
    return th.gpu_color(index) if index >= 0 else th.HOST_COLORS[(-index - 1) % len(th.HOST_COLORS)]


def timeseries_figure(ts: Timeseries, theme: str = "light", uirevision: str = "run",
                      xrange: tuple[float, float] | None = None, duration_s: float | None = None,
                      panel_height: int = 125, typed_arrays: bool = True,
                      span: tuple[float, float] | None = None) -> dict[str, Any]:
    """Stacked panels sharing one x axis: one crosshair and one hover across every panel.

    All traces use the single x axis ``x`` and one y axis per panel stacked by
    domain, which is what lets ``hoversubplots="axis"`` show every panel's
    value at the hovered time and draw the spike line through all of them.
    """
    if not ts.panels:
        return empty_figure("no time series recorded in this range", theme)
    enc = typed if typed_arrays else _plain
    divisor, unit = time_unit(duration_s if duration_s is not None else ts.t1)
    n = len(ts.panels)
    gap = 0.022 if n > 1 else 0.0
    height = 95 + panel_height * n
    layout = th.base_layout(theme, height=height, hovermode="x unified", hoversubplots="axis",
                            uirevision=uirevision, dragmode="zoom", showlegend=True)
    layout["margin"] = {"l": PLOT_LEFT, "r": 20, "t": 64, "b": 45}
    # the legend sits above the top panel's own time axis
    layout["legend"] = {**layout["legend"], "y": 1.0 + 26.0 / max(height - 109, 1)}
    data: list[dict[str, Any]] = []
    seen_groups: set[str] = set()
    cell = (1.0 - gap * (n - 1)) / n
    for i, panel in enumerate(ts.panels):
        yname = "y" if i == 0 else f"y{i + 1}"
        top = 1.0 - i * (cell + gap)
        yaxis = th.axis(layout, title={"text": panel.spec.title, "font": {"size": 11}},
                        domain=[max(top - cell, 0.0), top], fixedrange=True, anchor="x",
                        showspikes=False, automargin=False)  # fixed margin: lines up with the breakdown
        if panel.spec.percent:
            yaxis.update(range=[0, 105], tickvals=[0, 25, 50, 75, 100], autorange=False)
        else:
            yaxis.update(rangemode="tozero" if panel.spec.key != "loss" else "normal")
        key = line_key(panel)
        notes = [key] if key else []
        clip = None if panel.spec.percent else _clip_top(panel)
        if clip is not None:  # a few huge outliers (first steps, compile) would flatten everything else
            yaxis.update(range=[0, clip], autorange=False)
            notes.append("outliers above the axis")
        if notes:  # headroom above the lines for the key: no line crosses it
            _headroom(yaxis, panel, clip)
        if notes:  # what each line style means, readable without hovering
            layout.setdefault("annotations", []).append({
                "text": " · ".join(notes), "showarrow": False, "xref": "paper", "yref": f"{yname} domain",
                # top left: the top right belongs to Plotly's toolbar
                "x": 0.0, "y": 1.0, "xanchor": "left", "yanchor": "top",
                "font": {"size": 10, "color": layout["_muted"]}})
        layout["yaxis" if i == 0 else f"yaxis{i + 1}"] = yaxis
        for tr in panel.traces:
            first = tr.group not in seen_groups  # one legend entry per GPU (or host, steps) toggles all its lines
            seen_groups.add(tr.group)
            data.append({
                "type": "scatter", "mode": "lines", "name": tr.group, "legendgroup": tr.group,
                "showlegend": first, "yaxis": yname, "xaxis": "x",
                "x": enc(tr.x / np.float32(divisor)), "y": enc(tr.y),
                # step lines keep every vertex: Plotly's line simplification would thin a slow stretch
                "line": {"color": _color(tr.color_index), "width": 1.4, "dash": tr.dash,
                         "simplify": tr.metric != "step"},
                "hovertemplate": f"{tr.name}: %{{y:.4~g}} {panel.spec.unit}<extra></extra>",
                "connectgaps": False,
            })
    xaxis = th.axis(layout, title={"text": f"time since start ({unit})"}, anchor="y" if n == 1 else f"y{n}",
                    showspikes=True, spikemode="across", spikesnap="cursor", spikethickness=1,
                    spikedash="solid", spikecolor=layout["_muted"], hoverformat=".2f",
                    ticksuffix=f" {unit}")  # the unified hover's header reads "8.62 s", not "8.6193"
    if xrange is not None:
        xaxis.update(range=[xrange[0] / divisor, xrange[1] / divisor], autorange=False)
    layout["xaxis"] = xaxis
    if span is not None and xrange is None:  # the whole run, start to end: the step breakdown's axis too
        data.append({"type": "scatter", "mode": "lines", "x": [span[0] / divisor, span[1] / divisor], "y": [0, 0],
                     "xaxis": "x", "yaxis": "y", "line": {"width": 0}, "showlegend": False, "hoverinfo": "skip",
                     "name": "run span"})
    layout["shapes"] = [_mark_shape(m, divisor, layout) for m in ts.marks]
    for kind, label in _mark_kinds(ts.marks):  # named in the legend, where nothing overlaps
        data.append({"type": "scatter", "mode": "markers", "x": [None], "y": [None], "xaxis": "x", "yaxis": "y",
                     "name": label, "legendgroup": f"mark-{kind}", "showlegend": True, "hoverinfo": "skip",
                     "marker": {"symbol": "square", "size": 11, "color": _MARK_COLORS.get(kind, layout["_muted"]),
                                "opacity": 0.45}})
    # a time axis on top of each panel group (GPU, host, training loop) besides the one at the bottom, so
    # one is in view while scrolling through a dozen panels; each follows the bottom axis's zoom
    extra = 2
    for i, panel in enumerate(ts.panels):
        group = _group(panel)
        if i == 0 or group != _group(ts.panels[i - 1]):
            if i == n - 1:
                continue  # its own bottom axis is there
            name = f"x{extra}"
            layout[f"xaxis{extra}"] = th.axis(layout, matches="x", anchor="y" if i == 0 else f"y{i + 1}",
                                              side="top", showgrid=False, showline=False, zeroline=False,
                                              ticksuffix=f" {unit}",
                                              tickfont={"size": 10, "color": layout["_muted"]})
            data.append({"type": "scatter", "mode": "lines", "x": [], "y": [], "xaxis": name,
                         "yaxis": "y" if i == 0 else f"y{i + 1}", "showlegend": False, "hoverinfo": "skip",
                         "name": f"{group} time axis"})
            extra += 1
    layout["meta"] = {"time_divisor": divisor, "level": ts.level}
    return {"data": data, "layout": th.finish(layout)}


#: How each dash style is named in a panel's line key.
DASH_GLYPHS = {"solid": "── ", "dot": "┈┈ ", "dash": "╌╌ "}


def line_key(panel: Any) -> str:
    """'── busy (NVML)  ┈┈ SM active (GPM)': the line styles of a panel with more than one kind of line."""
    seen: dict[str, str] = {}
    for tr in panel.traces:
        for line in panel.spec.lines:
            if line.metric == tr.metric and line.label not in seen:
                seen[line.label] = line.dash
    if len(seen) < 2:
        return ""
    return "  ".join(DASH_GLYPHS.get(dash, "") + label for label, dash in seen.items())


def _group(panel: Any) -> str:
    """Which group of panels a panel belongs to: GPU counters, host and process, the training loop."""
    if panel.spec.key in ("step", "loss"):
        return "training loop"
    return "host" if panel.spec.host else "GPU"


_MARK_COLORS = {"flops": "#E69F00", "what_if": "#009E73"}
_MARK_LEGEND = {"window": "profiler windows", "flops": "FLOPs counted", "what_if": "what-if"}


def _mark_kinds(marks: list[Any]) -> list[tuple[str, str]]:
    """One legend entry per kind of band (its label says what the band is; the shapes carry no text, which
    would print over each other and over the legend)."""
    kinds: dict[str, str] = {}
    for mark in marks:
        if mark.kind not in kinds:
            kinds[mark.kind] = mark.label if mark.kind == "what_if" else _MARK_LEGEND.get(mark.kind, mark.kind)
    return list(kinds.items())


def _mark_shape(mark: Any, divisor: float, layout: dict[str, Any]) -> dict[str, Any]:
    """A shaded band over every panel where a profiler window ran (a thin one for the FLOP-counted step)."""
    t0, t1 = mark.t0 / divisor, mark.t1 / divisor
    color = _MARK_COLORS.get(mark.kind, layout["_muted"])
    return {"type": "rect", "xref": "x", "yref": "paper", "x0": t0, "x1": t1, "y0": 0, "y1": 1,
            "fillcolor": color, "opacity": 0.25 if mark.kind == "flops" else 0.12, "line": {"width": 0},
            "layer": "below", "name": mark.label}


#: Share of a panel's height kept free above its lines for the key in its top left corner.
KEY_ROOM = 0.22


def _headroom(yaxis: dict[str, Any], panel: Any, clip: float | None) -> None:
    """Set the panel's range so its top ``KEY_ROOM`` holds no line (percent panels: up to 100 + room)."""
    if panel.spec.percent:
        yaxis.update(range=[0, 100 / (1 - KEY_ROOM)], autorange=False)
        return
    values = _finite_values(panel)
    if not values.size:
        return
    top = clip if clip is not None else float(values.max())
    low = 0.0 if panel.spec.key != "loss" else float(values.min())
    low = min(low, float(values.min()))
    if top <= low:
        top = low + 1.0
    yaxis.update(range=[low, low + (top - low) / (1 - KEY_ROOM)], autorange=False)


def _finite_values(panel: Any) -> np.ndarray:
    """Every finite value of a panel's lines."""
    ys = [tr.y[np.isfinite(tr.y)] for tr in panel.traces]
    ys = [y for y in ys if y.size]
    return np.concatenate(ys) if ys else np.zeros(0)


def _clip_top(panel: Any) -> float | None:
    """An upper axis limit that leaves out rare extreme values, or None when there are none."""
    values = _finite_values(panel)
    return _clip_values(values) if values.size else None


def _clip_values(y: np.ndarray) -> float | None:
    y = y[np.isfinite(y)]
    if y.size < 20:
        return None
    p99, top = float(np.percentile(y, 99)), float(y.max())
    if top > 3 * p99 > 0:
        return p99 * 1.5
    return None


#: Left margin shared by the stacked time series and the step breakdown, so their time axes line up.
PLOT_LEFT = 80


def phase_breakdown_figure(t: np.ndarray, phases: dict[str, np.ndarray], means: dict[str, float] | None,
                           theme: str = "light", uirevision: str = "run", duration_s: float | None = None,
                           xrange: tuple[float, float] | None = None, share_of: str = "steady steps") -> dict[str, Any]:
    """Mean time per step in each phase over time, stacked: where every step's time goes.

    ``means`` are the shares in the legend; ``share_of`` says what they are shares of (the run's steady
    steps, as on the cards and in the advice, or the zoomed range)."""
    if t.size == 0:
        return empty_figure("no steps recorded in this range", theme)
    divisor, unit = time_unit(duration_s if duration_s is not None else float(t[-1]))
    layout = th.base_layout(theme, height=300, hovermode="x unified", uirevision=uirevision)
    layout["margin"] = {"l": PLOT_LEFT, "r": 20, "t": 40, "b": 45}
    data = []
    x = typed(t / divisor)
    for phase, values in phases.items():
        share = ""
        if means and means.get(phase) is not None:
            share = f" ({means[phase] * 100:.1f}%)"
        data.append({"type": "scatter", "mode": "lines", "stackgroup": "phases", "name": th.PHASE_LABELS[phase] + share,
                     "x": x, "y": typed(values * 1e3), "line": {"width": 0.5, "color": th.PHASE_COLORS[phase]},
                     "hovertemplate": f"{th.PHASE_LABELS[phase]}: %{{y:.3~g}} ms<extra></extra>"})
    layout["xaxis"] = th.axis(layout, title={"text": f"time since start ({unit})"})
    if xrange is not None:
        layout["xaxis"].update(range=[xrange[0] / divisor, xrange[1] / divisor], autorange=False)
    layout["yaxis"] = th.axis(layout, title={"text": "time per step (ms)"}, rangemode="tozero", fixedrange=True,
                              automargin=False)
    total = np.nansum(np.vstack(list(phases.values())), axis=0) * 1e3 if phases else np.zeros(0)
    clip = _clip_values(total)
    notes = [f"legend: share of {share_of}"]
    if clip is not None:  # a 1.2 s first step would flatten 45 ms steps
        layout["yaxis"].update(range=[0, clip], autorange=False)
        notes.append("outliers above the axis")
    layout["annotations"] = [{"text": " · ".join(notes), "showarrow": False, "xref": "paper", "yref": "paper",
                              "x": 1.0, "y": 1.0, "xanchor": "right", "yanchor": "bottom",
                              "font": {"size": 10, "color": layout["_muted"]}}]
    return {"data": data, "layout": th.finish(layout)}


def rank_figure(ranks: list[dict[str, Any]], theme: str = "light") -> dict[str, Any]:
    """Mean phase times per rank, stacked horizontally: a straggler is the longest bar."""
    if not ranks:
        return empty_figure("one rank only", theme)
    layout = th.base_layout(theme, height=90 + 36 * len(ranks), barmode="stack")
    names = [f"rank {r['rank']}" for r in ranks]
    data = []
    for phase in th.PHASE_COLORS:
        data.append({"type": "bar", "orientation": "h", "name": th.PHASE_LABELS[phase], "y": names,
                     "x": [r["phases"].get(phase, 0.0) * 1e3 for r in ranks],
                     "marker": {"color": th.PHASE_COLORS[phase]},
                     "hovertemplate": f"%{{y}} {th.PHASE_LABELS[phase]}: %{{x:.3~g}} ms<extra></extra>"})
    layout["xaxis"] = th.axis(layout, title={"text": "mean time per step (ms)"})
    layout["yaxis"] = th.axis(layout, autorange="reversed")
    return {"data": data, "layout": th.finish(layout)}


_BOTTOM_LEGEND = {"orientation": "h", "yanchor": "top", "y": -0.45, "xanchor": "left", "x": 0, "traceorder": "normal"}


def share_bar_figure(shares: dict[str, float], colors: dict[str, str], title: str, theme: str = "light",
                     unit: str = "%") -> dict[str, Any]:
    """One horizontal bar split by share (kernel categories, temporal breakdown)."""
    items = [(k, v) for k, v in shares.items() if v and v > 0]
    if not items:
        return empty_figure("nothing recorded", theme, height=120)
    layout = th.base_layout(theme, height=190, barmode="stack", title={"text": title, "font": {"size": 13}},
                            legend=_BOTTOM_LEGEND)
    data = [{"type": "bar", "orientation": "h", "name": k, "y": [""], "x": [v],
             "marker": {"color": colors.get(k, "#999999")},
             "hovertemplate": f"{k}: %{{x:.1f}} {unit}<extra></extra>"} for k, v in items]
    layout["xaxis"] = th.axis(layout, range=[0, 100] if unit == "%" else None, ticksuffix=unit if unit == "%" else "")
    layout["yaxis"] = th.axis(layout, showticklabels=False)
    layout["margin"] = {"l": 20, "r": 20, "t": 40, "b": 80}
    return {"data": data, "layout": th.finish(layout)}


def temporal_figure(rows: list[dict[str, Any]], theme: str = "light") -> dict[str, Any]:
    """Compute / communication / memcpy / idle share per rank and device (HTA's temporal breakdown)."""
    if not rows:
        return empty_figure("no GPU kernels in this window", theme, height=120)
    names = [f"rank {r['rank']}" + (f" GPU {r['device']}" if "device" in r else "") for r in rows]
    layout = th.base_layout(theme, height=150 + 36 * len(rows), barmode="stack", legend=_BOTTOM_LEGEND,
                            title={"text": "GPU time by kind, % of the window (HTA temporal breakdown)",
                                   "font": {"size": 13}})
    keys = (("compute", "compute_pct"), ("communication", "non_compute_pct"), ("idle", "idle_pct"))
    data = []
    for label, key in keys:
        data.append({"type": "bar", "orientation": "h", "name": label if label != "communication" else
                     "non-compute (comm + memcpy)", "y": names, "x": [r.get(key, 0.0) for r in rows],
                     "marker": {"color": th.TEMPORAL_COLORS[label]},
                     "hovertemplate": f"%{{y}} {label}: %{{x:.1f}}%<extra></extra>"})
    layout["xaxis"] = th.axis(layout, range=[0, 100], ticksuffix="%")
    layout["yaxis"] = th.axis(layout, autorange="reversed")
    return {"data": data, "layout": th.finish(layout)}


def grouped_bars_figure(categories: list[str], series: dict[str, list[float]], colors: list[str], unit: str,
                        title: str, theme: str = "light") -> dict[str, Any]:
    """A few named bar groups (compare: phase times of run A vs run B)."""
    layout = th.base_layout(theme, height=320, barmode="group", title={"text": title, "font": {"size": 13}},
                            legend={**_BOTTOM_LEGEND, "y": -0.15})
    data = [{"type": "bar", "name": plain_text(name), "x": categories, "y": values,
             "marker": {"color": colors[i % len(colors)]},
             "hovertemplate": f"{plain_text(name)} %{{x}}: %{{y:.3~g}} {unit}<extra></extra>"}
            for i, (name, values) in enumerate(series.items())]
    layout["yaxis"] = th.axis(layout, title={"text": unit}, rangemode="tozero")
    layout["xaxis"] = th.axis(layout)
    return {"data": data, "layout": th.finish(layout)}


def distribution_figure(dists: dict[str, tuple[np.ndarray, np.ndarray]], colors: list[str], xtitle: str,
                        theme: str = "light") -> dict[str, Any]:
    """Share of time spent at each value (histograms given as (bin edges, weights)), overlaid."""
    if not dists:
        return empty_figure("no samples", theme)
    layout = th.base_layout(theme, height=320, barmode="overlay", legend={**_BOTTOM_LEGEND, "y": -0.25},
                            title={"text": "How busy the GPU was: share of samples per level", "font": {"size": 13}})
    data = []
    for i, (name, (edges, weights)) in enumerate(dists.items()):
        centers = (edges[:-1] + edges[1:]) / 2
        data.append({"type": "bar", "name": plain_text(name), "x": centers.tolist(), "y": (weights * 100).tolist(),
                     "width": float(edges[1] - edges[0]) if edges.size > 1 else 1.0, "opacity": 0.6,
                     "marker": {"color": colors[i % len(colors)]},
                     "hovertemplate": f"{plain_text(name)}: %{{y:.1f}}% of samples at %{{x:.0f}}<extra></extra>"})
    layout["xaxis"] = th.axis(layout, title={"text": xtitle}, range=[0, 100])
    layout["yaxis"] = th.axis(layout, title={"text": "% of samples"}, rangemode="tozero")
    return {"data": data, "layout": th.finish(layout)}


def overlay_figure(panels: list[tuple[str, dict[str, tuple[np.ndarray, np.ndarray]]]], colors: list[str],
                   xtitle: str, theme: str = "light", uirevision: str = "overlay") -> dict[str, Any]:
    """Runs' series on one x axis, one stacked panel per quantity (title -> {run name: (x, y)})."""
    panels = [(title, lines) for title, lines in panels if lines]
    if not panels:
        return empty_figure("nothing recorded in both runs", theme)
    n = len(panels)
    gap = 0.06 if n > 1 else 0.0
    cell = (1.0 - gap * (n - 1)) / n
    layout = th.base_layout(theme, height=90 + 170 * n, hovermode="x unified", hoversubplots="axis",
                            uirevision=uirevision, showlegend=True)
    layout["margin"] = {"l": PLOT_LEFT, "r": 20, "t": 40, "b": 45}
    data: list[dict[str, Any]] = []
    names: list[str] = []  # one colour and one legend entry per run, across panels
    for i, (title, lines) in enumerate(panels):
        yname = "y" if i == 0 else f"y{i + 1}"
        top = 1.0 - i * (cell + gap)
        yaxis = th.axis(layout, title={"text": plain_text(title), "font": {"size": 11}},
                        domain=[max(top - cell, 0.0), top], anchor="x", fixedrange=True, rangemode="tozero",
                        automargin=False)
        values = [y for _, (_, y) in lines.items() if y.size]
        clip = _clip_values(np.concatenate(values)) if values else None
        if clip is not None:
            yaxis.update(range=[0, clip], autorange=False)
        layout["yaxis" if i == 0 else f"yaxis{i + 1}"] = yaxis
        for name, (x, y) in lines.items():
            first = name not in names
            if first:
                names.append(name)
            k = names.index(name)
            data.append({"type": "scatter", "mode": "lines", "name": plain_text(name), "legendgroup": name,
                         "showlegend": first,
                         "xaxis": "x", "yaxis": yname, "x": typed(x), "y": typed(y),
                         "line": {"color": colors[k % len(colors)], "width": 1.4},
                         "hovertemplate": f"{plain_text(name)}: %{{y:.4~g}}<extra></extra>"})
    layout["xaxis"] = th.axis(layout, title={"text": xtitle}, anchor="y" if n == 1 else f"y{n}",
                              showspikes=True, spikemode="across", spikethickness=1)
    return {"data": data, "layout": th.finish(layout)}
