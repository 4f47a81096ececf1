"""The ``autocast=bf16`` what-if's stretch: the model's forward under ``torch.autocast`` for a few steps.

The forward's own hooks (a pre-hook enters the autocast context, a post-hook
that torch calls even when the forward raises leaves it) run the loop's model
in bfloat16 mixed precision, as ``with torch.autocast(...)`` around the
forward would.  Its floating-point outputs go back to the loop in the
parameters' dtype, so code after the forward (a loss, ``.numpy()``, a metric)
sees what it always sees.  bf16 only: fp16 needs a GradScaler's loss scaling,
which a stretch cannot add to the loop.

Shown safe before it runs: the first forward of the stretch is tried first on
a deep copy of the model in eval mode, without gradients, under autocast,
with the loop's own inputs; an error there (an op without a bf16 kernel, a
model that cannot be copied) skips the what-if with that reason and the
forward runs as always.  Refused too: a loop already under autocast, a model
not in float32, a compiled model (autocast would recompile it), a device
without bf16.  What the trial cannot show -- an error only in training mode,
or in backward -- would reach the loop as the user's own autocast would.
"""
from __future__ import annotations

import copy
import sys
from typing import Any


def device_type(module: Any) -> str | None:
    """Where the model's parameters live (cpu, cuda); None without floating-point parameters."""
    for p in module.parameters():
        if p.is_floating_point():
            return str(p.device.type)
    return None


def why_not(module: Any, torch: Any) -> str | None:
    """Why the forward cannot be tried under bf16 autocast; None when it can (before the trial)."""
    device = device_type(module)
    if device is None:
        return "the model has no floating-point parameters"
    if device not in ("cpu", "cuda"):
        return f"autocast on {device} is not tried"
    if torch.is_autocast_enabled(device):
        return "the loop already runs its forward under autocast"
    dtypes = {p.dtype for p in module.parameters() if p.is_floating_point()}
    if dtypes != {torch.float32}:
        return f"the model's parameters are {', '.join(sorted(str(d) for d in dtypes))}, not float32"
    frames = sys.modules.get("torch._dynamo.eval_frame")  # not imported: nothing was compiled
    if frames is not None and isinstance(module, getattr(frames, "OptimizedModule", ())):
        return "a compiled model would recompile under autocast"
    if device == "cuda" and not torch.cuda.is_bf16_supported():
        return "this GPU has no bfloat16"
    return None


def trial(module: Any, args: tuple[Any, ...], kwargs: dict[str, Any], torch: Any) -> str | None:
    """Run the forward once on a copy, in eval mode, without gradients, under bf16 autocast: the reason it
    failed, or None.  The copy and its activations are freed before the loop goes on."""
    device = device_type(module) or "cpu"
    try:
        twin = copy.deepcopy(module).eval()
    except Exception as exc:
        return f"the model cannot be copied for a trial forward ({type(exc).__name__}: {exc})"
    try:
        with torch.no_grad(), torch.autocast(device_type=device, dtype=torch.bfloat16):
            twin(*args, **kwargs)
    except Exception as exc:
        return f"a trial forward in bf16 failed ({type(exc).__name__}: {str(exc)[:200]})"
    finally:
        del twin
    return None


class AutocastContext:
    """One forward's autocast context: entered by the pre-hook, left by the post-hook."""

    def __init__(self, torch: Any, device: str) -> None:
        self._torch = torch
        self._ctx = torch.autocast(device_type=device, dtype=torch.bfloat16)
        self._ctx.__enter__()

    def leave(self, output: Any, dtype: Any) -> Any:
        """Leave autocast; ``output``'s bf16 tensors back in ``dtype`` (the output as it was, if it cannot be
        rebuilt)."""
        self._ctx.__exit__(None, None, None)
        try:
            return _cast_back(output, self._torch, dtype, 0)
        except Exception:
            return output


def _cast_back(obj: Any, torch: Any, dtype: Any, depth: int) -> Any:
    """``obj`` with its bf16 tensors in ``dtype``: tensors, and dicts, lists, tuples and namedtuples of them two
    levels deep.  A dict (a Hugging Face ``ModelOutput`` too) is copied and its items set, never rebuilt from
    pairs: a dataclass-like mapping would take the pairs as its first field."""
    if isinstance(obj, torch.Tensor):
        return obj.to(dtype) if obj.dtype == torch.bfloat16 else obj
    if depth >= 2:
        return obj
    if isinstance(obj, dict):
        new = copy.copy(obj)
        for key, value in obj.items():
            cast = _cast_back(value, torch, dtype, depth + 1)
            if cast is not value:
                new[key] = cast
        return new
    if isinstance(obj, tuple) and hasattr(obj, "_fields"):  # namedtuple
        return type(obj)(*(_cast_back(v, torch, dtype, depth + 1) for v in obj))
    if type(obj) in (list, tuple):
        return type(obj)(_cast_back(v, torch, dtype, depth + 1) for v in obj)
    return obj
