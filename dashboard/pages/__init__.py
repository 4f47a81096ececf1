"""Dash Pages: one module per page, each registering its layout and callbacks."""
from __future__ import annotations

from typing import Any

import dash


def register(module: str, **kwargs: Any) -> None:
    """``dash.register_page``, except when no app exists yet (a page module imported by a test or tool)."""
    try:
        dash.register_page(module, **kwargs)
    except dash.exceptions.PageError:
        pass
