"""Human formatting of measured values: the terminal report, the dashboard and the advisor's findings.

Two names for two meanings: :func:`percent` takes a value that is a
percentage already, :func:`share` a fraction.
"""
from __future__ import annotations

import math
import re


def is_num(x: object) -> bool:
    return isinstance(x, (int, float)) and not (isinstance(x, float) and math.isnan(x))


def bytes_(x: float | None) -> str:
    if not is_num(x):
        return "n/a"
    value = float(x)  # type: ignore[arg-type]
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"


def ago(age_s: float | None) -> str:
    """How long ago, in the unit a person reads: "4.2 s ago", "12 min ago", "6.8 days ago"."""
    if not is_num(age_s):
        return "never"
    v = max(float(age_s), 0.0)  # type: ignore[arg-type]
    if v < 120:
        return f"{v:.1f} s ago"
    if v < 2 * 3600:
        return f"{v / 60:.0f} min ago"
    if v < 48 * 3600:
        return f"{v / 3600:.1f} h ago"
    return f"{v / 86400:.1f} days ago"


def seconds(x: float | None) -> str:
    if not is_num(x):
        return "n/a"
    v = float(x)  # type: ignore[arg-type]
    if v >= 120:
        return f"{v / 60:.1f} min"
    if v >= 1:
        return f"{v:.2f} s"
    if v >= 1e-3:
        return f"{v * 1e3:.1f} ms"
    return f"{v * 1e6:.0f} µs"


def percent(value: float | None, digits: int = 1) -> str:
    """A value that is a percentage already (GPU busy 93.2): '93.2%'."""
    if not is_num(value):
        return "n/a"
    return f"{float(value):.{digits}f}%"  # type: ignore[arg-type]


def share(fraction: float | None, digits: int = 1) -> str:
    """A fraction (0.932 of the step) as a percentage: '93.2%'."""
    if fraction is None:
        return "n/a"
    return f"{100 * float(fraction):.{digits}f}%"


def ms(seconds: float | None) -> str:
    """Always in milliseconds (findings compare like with like): '12.3 ms'."""
    return "n/a" if seconds is None else f"{seconds * 1e3:.1f} ms"


def gib(nbytes: float | None) -> str:
    """Always in GiB: '1.2 GiB'."""
    return "n/a" if nbytes is None else f"{nbytes / 2**30:.1f} GiB"


def value(x: float | None, unit: str) -> str:
    """A value with its catalog unit."""
    if not is_num(x):
        return "n/a"
    v = float(x)  # type: ignore[arg-type]
    if unit == "B":
        return bytes_(v)
    if unit == "B/s":
        return bytes_(v) + "/s"
    if unit == "%":
        return f"{v:.1f}%"
    if unit == "cores":
        return f"{v:.2f}"
    if unit == "bitmask":
        return f"0x{int(v):x}"
    if unit in ("count",):
        return f"{v:.0f}"
    if unit == "W":
        return f"{v:.0f} W"
    if unit == "J":
        return f"{v:.0f} J"
    if unit == "MHz":
        return f"{v:.0f} MHz"
    if unit == "°C":
        return f"{v:.0f} °C"
    return f"{v:.3g} {unit}".strip()


def rate(x: float | None, what: str) -> str:
    if not is_num(x):
        return "n/a"
    v = float(x)  # type: ignore[arg-type]
    if v >= 1e6:
        return f"{v / 1e6:.2f} M {what}/s"
    if v >= 1e3:
        return f"{v / 1e3:.2f} k {what}/s"
    return f"{v:.1f} {what}/s"


def phase(name: str) -> str:
    """A step phase as prose, legends and tables name it ("data_wait" is "data wait"; a custom phase keeps
    its own words): one spelling on every surface."""
    return name.replace("_", " ")


def short_name(name: str, width: int = 60) -> str:
    """A kernel or op name without template arguments, parameters and return type."""
    out = []
    depth_angle = depth_paren = 0
    for ch in name:
        if ch == "<":
            depth_angle += 1
            if depth_angle == 1:
                out.append("<…>")
            continue
        if ch == ">" and depth_angle:
            depth_angle -= 1
            continue
        if depth_angle:
            continue
        if ch == "(":
            depth_paren += 1
            continue
        if ch == ")" and depth_paren:
            depth_paren -= 1
            continue
        if depth_paren:
            continue
        out.append(ch)
    text = "".join(out).strip()
    if text.startswith("void "):
        text = text[5:]
    text = text or name
    return text if len(text) <= width else text[: width - 1] + "…"


def us(x: float | None) -> str:
    """Microseconds, scaled."""
    if not is_num(x):
        return "n/a"
    return seconds(float(x) / 1e6)  # type: ignore[arg-type]


_UNSAFE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\ud800-\udfff]")


def safe_text(value: object) -> str:
    """Untrusted text (run, host, kernel names) for a terminal: control characters and undecodable bytes escaped.

    A name read from a file or a directory may carry ANSI escape sequences
    (which would drive the user's terminal) or bytes that are not UTF-8
    (which would stop printing with an encoding error).
    """
    return _UNSAFE.sub(_escape, str(value))


def _escape(match: re.Match[str]) -> str:
    code = ord(match.group())
    if 0xDC80 <= code <= 0xDCFF:  # a byte that was not UTF-8 (surrogateescape)
        return f"\\x{code - 0xDC00:02x}"
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def shown_path(path: object) -> str:
    """A path as a message shows it: relative to the working directory when it is inside it."""
    import os

    text = os.fspath(path)  # type: ignore[call-overload]
    try:
        rel = os.path.relpath(text)
    except ValueError:  # another drive (Windows)
        return safe_text(text)
    return safe_text(rel if not rel.startswith("..") else text)


def change(values: dict[str, object]) -> str:
    """``num_workers=2, persistent_workers=True``: a suggestion's change as the user would write it."""
    return ", ".join(f"{k}={v!r}" if isinstance(v, str) else f"{k}={v}" for k, v in values.items())


def prediction(p: dict[str, object]) -> str:
    """``37% shorter steps (20% to 45%); model: ...``: a predicted gain, its interval and its basis."""
    def num(key: str) -> float | None:
        v = p.get(key)
        return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None

    return (f"{share(num('gain_fraction'), 0)} {gain_words(p.get('measure'))} ({share(num('low'), 0)} to "
            f"{share(num('high'), 0)}); {p.get('basis')}")


def what_if(kind: object, batch_size: object = None, num_workers: object = None,
            implementation: object = None) -> str:
    """A measured what-if as ``--what-if`` names it (synthetic-data, batch-size=256, num-workers=4,
    autocast=bf16, optimizer=fused)."""
    if kind == "batch-size":
        return f"batch-size={batch_size}"
    if kind == "num-workers":
        return f"num-workers={num_workers}"
    if kind == "autocast":
        return "autocast=bf16"
    if kind == "optimizer":
        return f"optimizer={implementation}"
    return str(kind)  # synthetic-data, channels-last


def gain_words(measure: object) -> str:
    """What a predicted gain shortens: ``shorter steps`` (the median step, or the mean step for a rate) or
    ``less time per sample`` (a larger batch, or gradients accumulated over more batches: each step gets
    longer) or ``less training time`` (the wall time per step, the gaps between steps included)."""
    return ("less time per sample" if measure == "time_per_sample" else
            "less training time" if measure == "wall_per_step" else "shorter steps")


def fix_texts(predicted: float, low: float, high: float, measure: str, got: float | None,
              got_low: float | None, got_high: float | None, inside: bool | None) -> tuple[str, str, str]:
    """(predicted, got, verdict) of a change a comparison checked, as ``gpulens compare`` and the dashboard's
    compare page both say them: ``58% shorter median step (44% to 71%)``, ``59% (95% CI 57% to 60%)``,
    ``inside``."""
    got_text = "not measured" if got is None else share(got, 0) + (
        f" (95% CI {share(got_low, 0)} to {share(got_high, 0)})" if got_low is not None and got_high is not None
        else "")
    verdict = "—" if inside is None else "inside" if inside else "outside"
    words = (gain_words(measure) if measure in ("time_per_sample", "wall_per_step") else  # what compare measured
             "shorter mean step" if measure == "mean_step" else "shorter median step")
    return f"{share(predicted, 0)} {words} ({share(low, 0)} to {share(high, 0)})", got_text, verdict
