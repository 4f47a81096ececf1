"""What ``gpulens run`` puts in the environment of the processes it starts, and how a process reads it.

Shared by the launcher (:mod:`gpulens.hooks.launcher.launch`), the in-process start
(:mod:`gpulens.hooks.launcher.autorun`), child processes (:mod:`gpulens.hooks.launcher.children`)
and the track API; it imports nothing of theirs, so none of them imports
another to learn a variable's name.
"""
from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

ENV_OPTIONS = "GPULENS_AUTORUN"
ENV_OWNER = "GPULENS_AUTORUN_OWNER"
ENV_RUN_ID_SCOPE = "GPULENS_RUN_ID_SCOPE"  # job | node: is GPULENS_RUN_ID the same on every node of the job
BOOTSTRAP_DIR = Path(__file__).resolve().parent / "launcher" / "_bootstrap"


def without_autorun(env: Mapping[str, str]) -> dict[str, str]:
    """``env`` without what ``gpulens run`` added to it: for a helper process of ours (the store publisher)
    that must keep the script's credentials and proxies but never record itself."""
    out = {k: v for k, v in env.items() if k not in (ENV_OPTIONS, ENV_OWNER)}
    path = [p for p in out.get("PYTHONPATH", "").split(os.pathsep) if p and Path(p) != BOOTSTRAP_DIR]
    if path:
        out["PYTHONPATH"] = os.pathsep.join(path)
    else:
        out.pop("PYTHONPATH", None)
    return out


#: Command lines of launchers: they start the ranks and must not record themselves.
LAUNCHER_SCRIPTS = {"torchrun", "accelerate", "deepspeed", "lightning", "fabric"}
LAUNCHER_MODULES = {"torch.distributed.run", "torch.distributed.launch", "accelerate.commands.launch",
                    "accelerate.commands.accelerate_cli", "deepspeed.launcher.runner"}


def is_launcher(argv: list[str]) -> bool:
    """True for torchrun & co. (``sys.orig_argv``: the interpreter, its options, then the program)."""
    args = argv[1:]
    i = 0
    while i < len(args):
        arg = args[i]
        if arg == "-m" and i + 1 < len(args):
            return args[i + 1] in LAUNCHER_MODULES
        if arg in ("-c",):
            return False
        if arg.startswith("-"):
            i += 2 if arg in ("-W", "-X", "-Q") else 1
            continue
        return Path(arg).name in LAUNCHER_SCRIPTS
    return False


def program_name(argv: list[str]) -> str:
    """The script's stem or the module's name (``python -m pkg.train`` -> ``train``)."""
    args = argv[1:]
    for i, arg in enumerate(args):
        if arg == "-m" and i + 1 < len(args):
            return args[i + 1].rsplit(".", 1)[-1]
        if arg == "-c":
            return "python-c"
        if not arg.startswith("-"):
            return Path(arg).stem or "run"
    return "python"
