"""Names a package exports, imported from their modules on first use (PEP 562's module ``__getattr__``).

Three packages export this way -- ``gpulens`` (the recorder's names: reading runs must not pay for its
imports), ``gpulens.profiler`` (the reader: ``gpulens import`` and the CLI's argument errors never use it) and
``gpulens.profiler.analysis.trace`` (the parser: a kept analysis is read without it).
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any


def lazy_getattr(package: str, namespace: dict[str, Any],
                 table: dict[str, str] | dict[str, tuple[str, str]]) -> Callable[[str], Any]:
    """The package's ``__getattr__``: ``table`` maps a name to its module (the same name there) or to
    (module, attribute); a name once imported is kept in ``namespace`` (the package's globals)."""

    def __getattr__(name: str) -> Any:
        target = table.get(name)
        if target is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        module, attr = target if isinstance(target, tuple) else (target, name)
        import importlib

        value = getattr(importlib.import_module(module), attr)
        namespace[name] = value
        return value

    return __getattr__
