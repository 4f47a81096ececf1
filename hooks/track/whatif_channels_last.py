"""The ``channels-last`` what-if's stretch: the model and its image inputs in NHWC for a few steps.

``model.to(memory_format=torch.channels_last)`` swaps each 4-D parameter's
data in place (the Parameter objects, and so the optimizer's references,
stay), the forward's 4-D floating-point inputs are laid out the same way by
the forward pre-hook, and its 4-D outputs go back to the loop contiguous, so
code after the forward (``out.view(n, -1)``) works as it always did.  At the
stretch's end (or the run's) the parameters go back to the contiguous layout.

Shown safe before it runs, like autocast: a deep copy of the model, laid out
channels-last, runs the first stretch forward's inputs in eval mode without
gradients; an error there (a ``.view`` on an activation that is no longer
contiguous, say) skips the what-if with that reason.  Refused: a model
without 4-D parameters (no convolution to lay out), a DDP or FSDP model (its
gradient buckets are views of the parameters' layout), a compiled model.
"""
from __future__ import annotations

import copy
import sys
from typing import Any


def why_not(module: Any, torch: Any) -> str | None:
    """Why the model cannot be tried channels-last; None when it can (before the trial)."""
    if not any(p.dim() == 4 for p in module.parameters()):
        return "the model has no 4-D (convolution) weights to lay out channels-last"
    name = type(module).__name__
    if name in ("DistributedDataParallel", "FullyShardedDataParallel"):
        return f"a {name} model's gradient buckets follow its parameters' layout"
    frames = sys.modules.get("torch._dynamo.eval_frame")  # not imported: nothing was compiled
    if frames is not None and isinstance(module, getattr(frames, "OptimizedModule", ())):
        return "a compiled model would recompile channels-last"
    return None


def lay_out(module: Any, torch: Any, channels_last: bool) -> None:
    """The model's parameters and buffers channels-last, or back to contiguous (in place)."""
    module.to(memory_format=torch.channels_last if channels_last else torch.contiguous_format)


def inputs(args: tuple[Any, ...], kwargs: dict[str, Any], torch: Any) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """The forward's 4-D floating-point tensor arguments channels-last (the others as they are)."""
    def one(x: Any) -> Any:
        if isinstance(x, torch.Tensor) and x.dim() == 4 and x.is_floating_point():
            return x.contiguous(memory_format=torch.channels_last)
        return x

    return tuple(one(a) for a in args), {k: one(v) for k, v in kwargs.items()}


def outputs(output: Any, torch: Any) -> Any:
    """The forward's 4-D tensor outputs (top level, or in a tuple/list) contiguous again."""
    def one(x: Any) -> Any:
        if isinstance(x, torch.Tensor) and x.dim() == 4:
            return x.contiguous()
        return x

    if isinstance(output, torch.Tensor):
        return one(output)
    if type(output) in (tuple, list):
        return type(output)(one(x) for x in output)
    return output


def trial(module: Any, args: tuple[Any, ...], kwargs: dict[str, Any], torch: Any) -> str | None:
    """The first stretch forward on a channels-last copy, in eval mode, without gradients: why it failed, or
    None."""
    try:
        twin = copy.deepcopy(module).eval()
        lay_out(twin, torch, True)
    except Exception as exc:
        return f"the model cannot be copied for a trial forward ({type(exc).__name__}: {exc})"
    try:
        a, k = inputs(args, kwargs, torch)
        with torch.no_grad():
            twin(*a, **k)
    except Exception as exc:
        return f"a trial forward channels-last failed ({type(exc).__name__}: {str(exc)[:200]})"
    finally:
        del twin
    return None
