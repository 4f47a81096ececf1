"""The in-process half of ``gpulens run``: decide whether this process records, and start.

``gpulens run`` (gpulens/cli.py) sets ``GPULENS_AUTORUN`` (JSON options) and
``GPULENS_RUN_ID`` and puts ``_bootstrap/`` on PYTHONPATH; every Python
process of the command then calls :func:`start` from its sitecustomize.
Launchers (torchrun's agent, accelerate, deepspeed) do not record -- their
ranks do.  The first process that records marks the environment its
children inherit; a child (a DataLoader or compile worker, an ``mp.spawn``
rank, a hogwild process) records only once it trains
(:mod:`gpulens.hooks.children`).
"""
from __future__ import annotations

import importlib.abc
import importlib.util
import json
import logging
import os
import sys
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

log = logging.getLogger("gpulens")

ENV_OPTIONS = "GPULENS_AUTORUN"
ENV_OWNER = "GPULENS_AUTORUN_OWNER"
ENV_RUN_ID_SCOPE = "GPULENS_RUN_ID_SCOPE"  # job | node: is GPULENS_RUN_ID the same on every node of the job
BOOTSTRAP_DIR = Path(__file__).resolve().parent / "_bootstrap"


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

_started: Any = None


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


def _script_missing(argv: list[str]) -> bool:
    """``python missing.py``: Python is about to say it cannot open the file; there is nothing to record."""
    from gpulens.hooks.launch import python_script

    script = python_script([Path(sys.executable).name, *argv[1:]])
    return script is not None and not Path(script).is_file()


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


def start() -> Any:
    """Start recording this process if ``gpulens run`` asked for it and it is a training process."""
    if _started is not None:
        return _started
    raw = os.environ.get(ENV_OPTIONS)
    if raw is None:
        return None
    owner = os.environ.get(ENV_OWNER)
    child = bool(owner) and owner != str(os.getpid())
    argv = list(getattr(sys, "orig_argv", sys.argv))
    if not child and (is_launcher(argv) or _script_missing(argv)):
        return None
    try:
        options = json.loads(raw)
        if not isinstance(options, dict):
            raise ValueError("not a JSON object")
    except ValueError as exc:
        print(f"gpulens: not recording: bad {ENV_OPTIONS} ({exc})", file=sys.stderr)
        return None
    from gpulens.hooks import children

    _configure_logging(bool(options.get("quiet")))
    options["name"] = options.get("name") or program_name(argv)
    children.install_fork_handler(lambda: _started, options)
    if child:  # a spawned child of a recording process: recorded if and when it trains
        children.arm(options, start_method="spawn")
        return None
    os.environ[ENV_OWNER] = str(os.getpid())
    from gpulens.hooks.tracking import track

    run = track(options["name"], auto=True, **track_options(options))
    if run.closed:
        return None
    adopt(run)
    if "torch" in sys.modules:
        run.attach_torch(sys.modules["torch"])
    else:
        when_torch_imported(run.attach_torch)
    return run


def track_options(options: dict[str, Any]) -> dict[str, Any]:
    """The ``track()`` keyword arguments among ``gpulens run``'s options (the rest are its own)."""
    from gpulens.hooks.options import JSON_OPTIONS

    return {k: v for k, v in options.items() if k in JSON_OPTIONS}


def adopt(run: Any) -> None:
    """``run`` is this process' recording: its exit status decides the run's."""
    global _started
    _started = run
    run.watch_script_exit()


def forget_started() -> None:
    """A forked child: the run it inherited is the parent's."""
    global _started
    _started = None


def when_torch_imported(callback: Any) -> None:
    """Call ``callback(torch)`` the moment ``import torch`` has finished."""
    sys.meta_path.insert(0, _TorchImportHook(callback))




def _configure_logging(quiet: bool) -> None:
    if log.handlers or logging.getLogger().handlers:
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.WARNING if quiet else logging.INFO)
    log.propagate = False


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
