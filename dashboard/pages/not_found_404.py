"""Unknown paths get a page with a way back instead of a blank screen."""
from dash import dcc, html

from gpulens.dashboard.pages import register


def layout(**_: object) -> html.Div:
    return html.Div([html.H2("Page not found"), dcc.Link("← all runs", href="/")], className="page")


register(__name__, path="/404", title="gpulens · not found", layout=layout)
