"""The ``optimizer=fused`` / ``optimizer=foreach`` what-if's stretch: the loop's own optimizers step with another
torch implementation for a few steps.

torch's optimizers read ``group["fused"]`` and ``group["foreach"]`` at every
``step()``, so the stretch sets them on each param group of every optimizer
that steps in it and puts the user's values back at its end (or the run's).
Nothing else about the optimizer changes: the same state tensors, the same
hyper-parameters.  The fused kernels want a parameter's ``step`` counter on
the parameter's device (the default implementations keep it on the CPU for
CUDA parameters): such counters move for the stretch and move back with
their counts.

Shown safe before it runs: a throwaway optimizer of the same class and
hyper-parameters, with the implementation asked for, steps a two-element
parameter of every device and dtype the real one holds; torch's own checks
(a device without fused kernels, ``differentiable=True``) refuse there, never
in the loop.  Refused before that: classes outside ``torch.optim`` (a
subclass may override ``step``), classes torch has no such implementation
for, and an optimizer that already uses it.

The stretch's steps update the weights with another implementation's
arithmetic: its weights differ from a run without the what-if in the last
bits, as with any what-if that trains (they are opt-in and short).
"""
from __future__ import annotations

import inspect
from typing import Any

FUSED, FOREACH = "fused", "foreach"
IMPLEMENTATIONS = (FUSED, FOREACH)


def current(optimizer: Any) -> str | None:
    """The implementation the optimizer uses now (None: a class without torch's switches)."""
    from gpulens.hooks.track.modelinfo import optimizer_meta

    return optimizer_meta(optimizer).get("impl")


def why_not(optimizer: Any, implementation: str) -> str | None:
    """Why ``optimizer`` cannot be tried with ``implementation`` (before the trial); None when it can."""
    cls = type(optimizer)
    name = f"{cls.__module__}.{cls.__qualname__}"
    if not cls.__module__.startswith("torch.optim"):
        return f"{name} is not one of torch.optim's optimizers (its step() may not read the implementation switch)"
    defaults = getattr(optimizer, "defaults", {})
    if implementation not in defaults:
        return f"torch has no {implementation} implementation of {cls.__name__}"
    if any(group.get("differentiable") for group in optimizer.param_groups):
        return f"{cls.__name__} is differentiable=True, which the {implementation} implementation does not support"
    if current(optimizer) == implementation:
        return f"{cls.__name__} already uses the {implementation} implementation"
    return None


def _switches(implementation: str) -> dict[str, bool]:
    return {"fused": True, "foreach": False} if implementation == FUSED else {"fused": False, "foreach": True}


def trial(optimizer: Any, implementation: str, torch: Any) -> str | None:
    """A throwaway optimizer of the same class and hyper-parameters steps tiny parameters of each device and dtype
    the real one holds with ``implementation``: why that failed, or None."""
    params = [p for group in optimizer.param_groups for p in group["params"]]
    kinds = {(p.device, p.dtype) for p in params}
    try:
        accepted = inspect.signature(type(optimizer).__init__).parameters  # AdamW's group holds keys it sets itself
        hyper = {k: v for k, v in optimizer.param_groups[0].items() if k != "params" and k in accepted}
        tiny = [torch.zeros(2, device=device, dtype=dtype, requires_grad=True) for device, dtype in kinds]
        for t in tiny:
            t.grad = torch.zeros_like(t)
        throwaway = type(optimizer)(tiny, **{**hyper, **_switches(implementation)})
        throwaway.step()
    except Exception as exc:
        return (f"a trial step of {type(optimizer).__name__}({implementation}=True) failed "
                f"({type(exc).__name__}: {str(exc)[:200]})")
    return None


class ImplementationSwap:
    """The switches and ``step`` counters of the optimizers a stretch changed, to put them back."""

    def __init__(self, implementation: str) -> None:
        self.implementation = implementation
        self._groups: list[tuple[dict[str, Any], Any, Any]] = []  # (group, its fused, its foreach)
        self._moved: list[tuple[dict[str, Any], Any]] = []  # (a parameter's state, its step's device before)
        self._seen: set[int] = set()

    def seen(self, optimizer: Any) -> bool:
        return id(optimizer) in self._seen

    def apply(self, optimizer: Any, torch: Any) -> None:
        """``optimizer`` steps with the implementation from its next step on."""
        self._seen.add(id(optimizer))
        for group in optimizer.param_groups:
            self._groups.append((group, group.get("fused"), group.get("foreach")))
            group.update(_switches(self.implementation))
            if self.implementation != FUSED:
                continue
            for p in group["params"]:
                state = optimizer.state.get(p)
                step = state.get("step") if isinstance(state, dict) else None
                if isinstance(step, torch.Tensor) and step.device != p.device:
                    self._moved.append((state, step.device))
                    state["step"] = step.to(p.device)

    def restore(self) -> None:
        """Every changed optimizer as it was (its counters, counted on, back where they lived).  Never raises
        halfway: each part is put back on its own."""
        groups, self._groups = self._groups, []
        moved, self._moved = self._moved, []
        for group, fused, foreach in groups:
            group["fused"], group["foreach"] = fused, foreach
        for state, device in moved:
            try:
                state["step"] = state["step"].to(device)
            except Exception:
                pass
