"""The in-process half of ``gpulens run``: decide whether this process records, and start.

``gpulens run`` (gpulens/cli.py) sets ``GPULENS_AUTORUN`` (JSON options) and
``GPULENS_RUN_ID`` and puts ``_bootstrap/`` on PYTHONPATH; every Python
process of the command then calls :func:`start` from its sitecustomize.
Launchers (torchrun's agent, accelerate, deepspeed) do not record -- their
ranks do.  The first process that records marks the environment its
children inherit; a child (a DataLoader or compile worker, an ``mp.spawn``
rank, a hogwild process) records only once it trains
(:mod:`gpulens.hooks.launcher.children`).
"""
from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

from gpulens.hooks.launcher import started
from gpulens.hooks.launcher.torch_import import when_torch_imported
from gpulens.hooks.run_env import ENV_OPTIONS, ENV_OWNER, is_launcher, program_name

log = logging.getLogger("gpulens")


def _script_missing(argv: list[str]) -> bool:
    """``python missing.py``: Python is about to say it cannot open the file; there is nothing to record."""
    from gpulens.hooks.launcher.launch import python_script

    script = python_script([Path(sys.executable).name, *argv[1:]])
    return script is not None and not Path(script).is_file()


def start() -> Any:
    """Start recording this process if ``gpulens run`` asked for it and it is a training process."""
    if started.current() is not None:
        return started.current()
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
    from gpulens.hooks.launcher import children  # not before: a launcher (torchrun's agent) imports no more than this
    from gpulens.hooks.track.options import track_kwargs

    _configure_logging(bool(options.get("quiet")))
    options["name"] = options.get("name") or program_name(argv)
    children.install_fork_handler(started.current, options)
    if child:  # a spawned child of a recording process: recorded if and when it trains
        children.arm(options, start_method="spawn")
        return None
    os.environ[ENV_OWNER] = str(os.getpid())
    from gpulens.hooks.track.tracking import track

    run = track(options["name"], auto=True, **track_kwargs(options))
    if run.closed:
        return None
    started.adopt(run)
    if "torch" in sys.modules:
        run.attach_torch(sys.modules["torch"])
    else:
        when_torch_imported(run.attach_torch)
    return run


def _configure_logging(quiet: bool) -> None:
    if log.handlers or logging.getLogger().handlers:
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.WARNING if quiet else logging.INFO)
    log.propagate = False
