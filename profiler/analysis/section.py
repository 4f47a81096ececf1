"""The base of every typed record the analysis hands out (report sections, trace analyses, the kernel view).

A msgspec Struct, so a record is checked when it is made from JSON (a cached
trace analysis, ``report --json``) and printed back without a per-type
encoder; ``forbid_unknown_fields``: a key without a field is a bug or a
foreign file, never silently dropped.
"""
from __future__ import annotations

from typing import Any

import msgspec
from msgspec import Struct


class Section(Struct, kw_only=True, forbid_unknown_fields=True):
    """A typed record: attribute access, and the dict its JSON prints (UNSET keys left out)."""

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = msgspec.to_builtins(self)
        return out
