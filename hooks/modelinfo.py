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
        out["optimizer"] = type(optimizer).__name__
        try:
            defaults = optimizer.defaults
            out["optimizer_fused"] = bool(defaults.get("fused"))
            out["optimizer_foreach"] = defaults.get("foreach")
            out["lr"] = defaults.get("lr")
        except Exception:
            pass
    return out
