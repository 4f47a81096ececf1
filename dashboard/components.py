"""Small UI pieces shared by the pages: badges, cards, notices, suggestion cards.

Every string that comes from a run (names, kernel names, error messages,
suggestion text) is passed as a component child or prop, which React
renders as text: nothing here builds HTML from data (``text_table``'s Markdown
writes each punctuation character of the data as a character reference).
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from dash import dcc, html

from gpulens import fmt

#: AG Grid's Quartz theme, denser: dashboards show many columns (dark mode follows data-ag-theme-mode).
GRID_THEME = {"function": "themeQuartz.withParams({spacing: 5, fontSize: 13, headerFontSize: 13})"}

STATUS_TITLES = {
    "running": "still being written",
    "finished": "closed normally",
    "crashed": "the process ended without closing the run; everything up to its last flush is kept",
    "interrupted": "stopped by a signal or KeyboardInterrupt",
    "broken": "cannot be read",
    "replay": "a replay of a recorded run, not a live measurement",
}


def status_badge(status: str, replay: bool = False, reason: str | None = None) -> html.Span:
    label = f"{status} · replay" if replay else status
    title = STATUS_TITLES.get(status, "")
    if replay:
        title += "; " + STATUS_TITLES["replay"]
    if reason:
        title += f" ({reason})"
    return html.Span(label, className=f"badge badge-{status}", title=title)


def card(label: str, value: str, sub: str | None = None, cid: str | None = None, title: str | None = None,
         muted: bool = False) -> html.Div:
    kids: list[Any] = [html.Div(label, className="card-label"), html.Div(value, className="card-value")]
    if sub:
        kids.append(html.Div(sub, className="card-sub"))
    extra: dict[str, Any] = {"id": cid} if cid else {}
    return html.Div(kids, className="card muted" if muted else "card", title=title or "", **extra)


def notice(text: str, kind: str = "info", cid: str | None = None) -> html.Div:
    extra: dict[str, Any] = {"id": cid} if cid else {}
    return html.Div(text, className=f"notice notice-{kind}", role="alert" if kind == "error" else "status",
                    **extra)


def error_page(title: str, message: str) -> html.Div:
    return html.Div([html.H2(title), notice(message, "error", cid="page-error"),
                     dcc.Link("← all runs", href="/")], className="page")


def text_table(head: Sequence[str], rows: Sequence[Sequence[Any]], cid: str | None = None) -> dcc.Markdown:
    """A read-only table as ONE component.  Dash's front end re-checks every rendered component on each update
    of its store (a callback's answer is several), so a table of ``html.Td`` cells costs per cell and per
    update: the kernels page's six tables were ~600 components and most of its open time in the browser.

    A Markdown table whose cells write every ASCII punctuation character as a numeric character reference:
    Markdown finds its syntax (emphasis, links, HTML, the cell's ``|``) in the characters as written, and
    only then decodes references to text, so each cell shows exactly its text and nothing else."""
    row = "| " + " | ".join(["{}"] * len(head)) + " |"
    lines = [row.format(*map(_md_text, head)), "|" + "---|" * len(head)]
    lines += [row.format(*map(_md_text, r)) for r in rows]
    extra: dict[str, Any] = {"id": cid} if cid else {}
    return dcc.Markdown("\n".join(lines), className="md-table table", **extra)


#: Each ASCII punctuation character as its numeric character reference (``:`` → ``&#58;``).
_MD_REFS = {ord(c): f"&#{ord(c)};" for c in "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~"}


def _md_text(value: Any) -> str:
    return " ".join(str(value).split()).translate(_MD_REFS) or " "  # one line: a row ends at its newline


def kv_table(rows: Sequence[tuple[str, Any]], cid: str | None = None) -> html.Table:
    extra: dict[str, Any] = {"id": cid} if cid else {}
    return html.Table([html.Tbody([html.Tr([html.Th(k), html.Td(str(v))]) for k, v in rows])],
                      className="kv", **extra)


def suggestion_card(s: dict[str, Any], index: int, evidence_buttons: list[Any]) -> html.Details:
    """One advisor suggestion: finding, action, snippet, expected gain and its evidence."""
    summary = html.Summary([
        html.Span(s["severity"], className=f"sev sev-{s['severity']}"),
        html.Span(s["title"], className="sugg-title"),
        html.Span(s.get("expected_gain") or "", className="sugg-gain"),
    ])
    body: list[Any] = [
        html.P([html.B("Finding: "), s["finding"]]),
        html.P([html.B("Action: "), s["action"]]),
    ]
    if s.get("snippet"):
        body.append(html.Pre(html.Code(s["snippet"]), className="snippet"))
    if s.get("change"):
        body.append(html.P([html.B("Change: "), html.Code(fmt.change(s["change"]))], className="sugg-change"))
    if s.get("prediction"):
        body.append(html.P([html.B("Predicted: "), fmt.prediction(s["prediction"])], className="sugg-prediction"))
    body.append(html.P([html.B("Expected gain: "), f"{s.get('expected_gain')} — {s.get('gain_estimate')}",
                        html.Span(f" (confidence {s.get('confidence')})", className="muted")]))
    if s.get("overlaps"):
        body.append(html.P(["Overlaps with ", *[html.Code(o) for o in s["overlaps"]],
                            ": they reclaim part of the same time, so their gains do not add up."],
                           className="muted small"))
    if evidence_buttons:
        body.append(html.Div([html.B("Evidence: "), *evidence_buttons], className="evidence"))
    body.append(html.Div(f"rule {s['id']}", className="muted small"))
    return html.Details([summary, html.Div(body, className="sugg-body")], open=index == 0,
                        className="suggestion", id=f"suggestion-{s['id']}")


#: How often a page asks again for an analysis that is still being computed.
ANALYSIS_POLL_MS = 1000


def analysis_poll(cid: str) -> dcc.Interval:
    """Re-runs a page's analysis callbacks until the analysis is there: request threads never wait for one
    (a few heavy runs would otherwise hold every server thread), they answer "analysing" and are asked
    again.  One tick at a time: each answer arms the next (:func:`poll_again` into ``max_intervals``) or
    stops it (:data:`POLL_DONE`).  A free-running interval on a server slower than its period never filled
    the page: every answer came after the next tick had sent a newer request, and Dash drops an answer that a
    newer request of the same callback supersedes (a loaded 2-core host: answers 12 s late, the compare page
    blank for good)."""
    return dcc.Interval(id=cid, interval=ANALYSIS_POLL_MS, n_intervals=0, max_intervals=1)


#: ``max_intervals`` that stops an :func:`analysis_poll`.
POLL_DONE = 0


def poll_again(n_intervals: int | None) -> int:
    """``max_intervals`` for one more tick of an :func:`analysis_poll` after this answer."""
    return (n_intervals or 0) + 1


def poll(done: bool, n_intervals: int | None) -> int:
    return POLL_DONE if done else poll_again(n_intervals)


def analysing(what: str = "this run") -> html.Div:
    return notice(f"analysing {what}… (this page fills in by itself)", "info", cid="analysing")
