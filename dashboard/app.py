"""``create_app()``: the Dash app over one runs root, with its security layer and download route.

Pages live in :mod:`gpulens.dashboard.pages` and register their layouts and
callbacks with ``dash.register_page`` / ``dash.callback``.  Dash keeps both
in process-wide registries that the first app to serve a request takes
over, so the factory re-imports the page modules for every app it builds and
finishes the app's set-up right away: two apps in one process (tests) each
get their own complete set of callbacks.
"""
from __future__ import annotations

import importlib
import re
import sys
from pathlib import Path
from typing import Any

import dash
from dash import ClientsideFunction, Dash, Input, Output, State, clientside_callback, dcc, html

from gpulens import __version__
from gpulens.dashboard import data
from gpulens.dashboard.on_demand import ACCESS_KEY, STORE_KEY
from gpulens.dashboard.security import Access, content_security_policy, install

PAGE_MODULES = (
    "gpulens.dashboard.pages.runs",
    "gpulens.dashboard.pages.run",
    "gpulens.dashboard.pages.kernels",
    "gpulens.dashboard.pages.compare",
    "gpulens.dashboard.pages.live",
    "gpulens.dashboard.pages.not_found_404",
)
ASSETS = Path(__file__).resolve().parent / "assets"


def _shell() -> html.Div:
    return html.Div([
        dcc.Store(id="theme", storage_type="local"),
        dcc.Store(id="viewport", data={"width": 1400}),
        html.Header([
            dcc.Link([html.Span("gpu", className="brand-a"), html.Span("lens", className="brand-b")],
                     href="/", className="brand"),
            html.Nav([dcc.Link("Runs", href="/"), dcc.Link("Compare", href="/compare")], className="nav"),
            html.Div(className="spacer"),
            html.Button("◐ theme", id="theme-toggle", className="btn btn-ghost", title="light / dark"),
            html.Span(f"v{__version__}", className="muted small"),
        ], className="topbar"),
        html.Main(dash.page_container, className="main"),
        # Markdown's renderer is a chunk the browser fetches the first time one is drawn: drawn here, it loads
        # with the app, not after a page's tables (components.text_table) arrive (~0.5-0.8 s on the kernels page)
        dcc.Markdown(id="markdown-preload", style={"display": "none"}),
    ], className="shell")


#: The pages that show a run's analysis: their HTML asks for it, before the front end has even loaded.
_ANALYSED_PAGE = re.compile(r"^/run/([^/]+)(?:/kernels)?/?$")


def create_app(runs_root: str | Path, access: Access | None = None, fallback: str | Path | None = None,
               store: str | None = None, **dash_kwargs: Any) -> Dash:
    """The dashboard for the runs under ``runs_root``; ``access`` guards it (loopback defaults).

    ``fallback`` (the sample runs) is shown while ``runs_root`` holds no run; the first run recorded there
    takes over without a restart.  ``store``: the store URL whose mirror ``runs_root`` is (its running jobs
    are asked for windows through the store)."""
    app = Dash(
        "gpulens.dashboard",
        use_pages=True,
        pages_folder="",
        assets_folder=str(ASSETS),
        title="gpulens",
        update_title=None,  # type: ignore[arg-type]  # None: the tab title never says "Updating..."
        suppress_callback_exceptions=True,
        serve_locally=True,
        **dash_kwargs,
    )
    app.server.config[data.CONFIG_KEY] = str(Path(runs_root).resolve())
    if fallback is not None:
        app.server.config[data.FALLBACK_KEY] = str(Path(fallback).resolve())
    data.configure(runs_root, fallback)
    install(app.server, access or Access())
    app.server.config[ACCESS_KEY] = access or Access()  # who may ask a running job for a window
    app.server.config[STORE_KEY] = store

    dash._callback.GLOBAL_CALLBACK_LIST.clear()
    dash._callback.GLOBAL_CALLBACK_MAP.clear()
    for name in PAGE_MODULES:
        if name in sys.modules:
            importlib.reload(sys.modules[name])
        else:
            importlib.import_module(name)
    _register_shell_callbacks()
    app.layout = _shell()
    _register_routes(app)
    with app.server.app_context():
        app._setup_server()  # take this app's callbacks out of the global registry now
    content_security_policy(app.server, lambda: app.csp_hashes())  # per response: Dash adds inline scripts late
    return app


def _register_shell_callbacks() -> None:
    clientside_callback(  # the functions live in assets/gpulens.js (no inline scripts: see the CSP)
        ClientsideFunction("gpulens", "theme"),
        Output("theme", "data"),
        Input("theme-toggle", "n_clicks"),
        State("theme", "data"),
    )
    clientside_callback(
        ClientsideFunction("gpulens", "viewport"),
        Output("viewport", "data"),
        Input("theme-toggle", "id"),
    )


def _register_routes(app: Dash) -> None:
    from flask import Response, abort, request, send_file

    from gpulens.profiler import GpulensError

    @app.server.route("/download/trace/<run_id>/<int:rank>/<int:index>")
    def download_trace(run_id: str, rank: int, index: int) -> Any:
        """A profiler window's chrome trace, gzipped as recorded: opens in Perfetto or chrome://tracing."""
        try:
            run = data.reader(run_id)
            windows = [w for w in run.windows(rank) if w.index == index]
        except GpulensError as exc:
            return Response(f"gpulens: {exc}\n", 404, mimetype="text/plain")
        if not windows or windows[0].path is None or not windows[0].path.is_file():
            abort(404)
        w = windows[0]
        return send_file(w.path, mimetype="application/gzip", as_attachment=True,
                         download_name=f"{run.info.id}-rank{rank}-window{index}.pt.trace.json.gz")

    @app.server.before_request
    def start_analysis() -> None:
        """A run's page, asked for as a whole (typed, bookmarked, reloaded), starts the run's analysis now,
        ~1 s sooner than its layout would on a small machine (the front end loads in between): an analysis
        of seconds is that much nearer done when the page's callbacks ask, and the page polls less.  Runs
        after the security layer's checks (registered first); never answers the request itself."""
        if request.method != "GET" or (match := _ANALYSED_PAGE.match(request.path)) is None:
            return
        try:
            data.analysis(match.group(1))
        except GpulensError:  # no such run, a bad id: the page says so
            pass

    @app.server.route("/healthz")
    def healthz() -> Any:
        return Response("ok\n", mimetype="text/plain")
