"""What the advisor needs to know about the model and optimizer (passed to track())."""
from __future__ import annotations

from typing import Any


def model_meta(model: Any = None, optimizer: Any = None) -> dict[str, Any] | None:
    if model is None and optimizer is None:
        return None
    out: dict[str, Any] = {}
    if model is not None:
        try:
            params = list(model.parameters())
            out["params"] = int(sum(p.numel() for p in params))
            out["param_bytes"] = int(sum(p.numel() * p.element_size() for p in params))
            dtypes = sorted({str(p.dtype).replace("torch.", "") for p in params})
            out["param_dtypes"] = dtypes
            out["param_tensors"] = len(params)
        except Exception:
            pass
        wrapper = type(model).__name__
        if wrapper in ("DataParallel", "DistributedDataParallel", "FullyShardedDataParallel"):
            out["wrapper"] = wrapper
        elif hasattr(model, "_orig_mod"):
            out["wrapper"] = "torch.compile"
            inner = type(model._orig_mod).__name__
            if inner in ("DataParallel", "DistributedDataParallel"):
                out["wrapper"] = inner
    if optimizer is not None:
        described = optimizer_meta(optimizer)
        out["optimizer"] = described["type"]
        out["optimizer_fused"] = bool(described.get("fused"))
        out["optimizer_foreach"] = described.get("foreach")
        out["optimizer_impl"] = described.get("impl")
        out["optimizer_device"] = described.get("device")
        out["lr"] = described.get("lr")
    return out


def optimizer_meta(optimizer: Any) -> dict[str, Any]:
    """Type, device and implementation of an optimizer: the advisor recommends an implementation only
    where it is known to be faster, and never the one already in use.

    ``impl`` resolves PyTorch's defaults (``foreach=None, fused=None``): the
    multi-tensor ``foreach`` path when every parameter is on a CUDA device,
    the per-parameter ``for-loop`` otherwise.
    """
    out: dict[str, Any] = {"type": type(optimizer).__name__}
    try:
        defaults = optimizer.defaults
        fused, foreach = defaults.get("fused"), defaults.get("foreach")
        params = [p for group in optimizer.param_groups for p in group["params"]]
        devices = sorted({p.device.type for p in params})
        out.update(fused=fused, foreach=foreach, lr=defaults.get("lr"), param_tensors=len(params),
                   device=devices[0] if len(devices) == 1 else ",".join(devices) or None)
        if fused:
            out["impl"] = "fused"
        elif foreach:
            out["impl"] = "foreach"
        elif foreach is False:
            out["impl"] = "for-loop"
        elif "fused" in defaults or "foreach" in defaults:
            out["impl"] = "foreach" if devices == ["cuda"] else "for-loop"
    except Exception:  # a custom optimizer without torch's defaults: its type is all we know
        pass
    return out


def live_root_modules(torch: Any) -> list[Any]:
    """Live modules that are nobody's child: the models, wrappers and loss modules a script made."""
    import gc

    module_type = torch.nn.Module  # type(), not isinstance(): some objects warn when asked for __class__
    modules = [obj for obj in gc.get_objects() if issubclass(type(obj), module_type)]
    children = {id(child) for module in modules for child in module._modules.values() if child is not None}
    return [module for module in modules if id(module) not in children]
