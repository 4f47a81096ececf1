"""Errors that reach the user as one line, never as a traceback."""
from __future__ import annotations

from pathlib import Path


class GpulensError(Exception):
    """An error whose message is complete enough to show the user as is."""


class RunError(GpulensError):
    """A run or run file that cannot be read; the message names the file."""

    def __init__(self, path: str | Path, message: str) -> None:
        self.path = str(path)
        self.message = one_line(message)
        super().__init__(f"{self.path}: {self.message}")


def one_line(text: str, limit: int = 300) -> str:
    """``text`` (SQLite quotes whole schemas in some errors) as one line of at most ``limit`` characters."""
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[:limit - 3] + "..."
