"""Run a callback the moment ``import torch`` finishes: how a process started before its script imported torch
attaches to it (``gpulens run``'s start, an armed child process)."""
from __future__ import annotations

import importlib.abc
import importlib.util
import logging
import sys
import threading
from typing import Any

log = logging.getLogger("gpulens")


def when_torch_imported(callback: Any) -> None:
    """Call ``callback(torch)`` the moment ``import torch`` has finished."""
    sys.meta_path.insert(0, _TorchImportHook(callback))


class _TorchImportHook(importlib.abc.MetaPathFinder):
    """Calls ``callback(torch)`` the moment ``import torch`` has finished."""

    def __init__(self, callback: Any) -> None:
        self.callback = callback
        self._busy = threading.local()

    def find_spec(self, fullname: str, path: Any, target: Any = None) -> Any:
        if fullname != "torch" or getattr(self._busy, "on", False):
            return None
        self._busy.on = True
        try:
            spec = importlib.util.find_spec("torch")
        finally:
            self._busy.on = False
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        loader, callback, finder = spec.loader, self.callback, self
        original = loader.exec_module

        def exec_module(module: Any) -> None:
            original(module)
            try:
                sys.meta_path.remove(finder)
            except ValueError:
                pass
            try:
                callback(module)
            except Exception as exc:  # recording must never break the user's import
                log.warning("gpulens: could not attach to torch: %s", exc)

        loader.exec_module = exec_module  # type: ignore[method-assign]  # this loader serves torch/__init__ only
        return spec
