"""Run metadata that only the training process knows: command line, ranks, torch."""
from __future__ import annotations

import os
import sys
from typing import Any


def rank_env(env: dict[str, str] | None = None) -> dict[str, Any]:
    """torch.distributed / torchrun rank variables (defaults: a single process)."""
    env = os.environ if env is None else env

    def num(name: str, default: int) -> int:
        try:
            return int(env.get(name, default))
        except ValueError:
            return default

    return {
        "rank": num("RANK", 0),
        "local_rank": num("LOCAL_RANK", 0),
        "world_size": num("WORLD_SIZE", 1),
        "local_world_size": num("LOCAL_WORLD_SIZE", 1),
    }


def torch_meta() -> dict[str, Any]:
    """Versions of torch and its CUDA stack, only if the user's code imported torch.

    Importing torch ourselves would cost seconds for code that does not use it
    (and viewing runs must never need it).
    """
    torch = sys.modules.get("torch")
    if torch is None:
        return {"torch_version": None}
    out: dict[str, Any] = {"torch_version": getattr(torch, "__version__", None)}
    try:
        out["torch_cuda"] = torch.version.cuda
        out["cudnn"] = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
        out["cuda_available"] = bool(torch.cuda.is_available())
        out["torch_threads"] = torch.get_num_threads()
    except Exception:
        pass
    return out


def command_meta() -> dict[str, Any]:
    return {
        "command": [sys.executable, *sys.argv],
        "cwd": os.getcwd(),
        "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
    }


def distributed_backend() -> str | None:
    """The torch.distributed backend if the user's code initialised a process group."""
    torch = sys.modules.get("torch")
    if torch is None:
        return None
    try:
        dist = torch.distributed
        if dist.is_available() and dist.is_initialized():
            return str(dist.get_backend())
    except Exception:
        return None
    return None
