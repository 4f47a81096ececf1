"""``gpulens run``: run a training command unmodified, with recording on.

The command is *exec*'d, not spawned: the script keeps gpulens' process id,
so its exit status and the signals sent to it (Ctrl-C, SIGTERM from a
scheduler, SIGKILL) are its own, unchanged.  Recording starts inside it from
a sitecustomize that PYTHONPATH puts first (``_bootstrap/``), which also
reaches the ranks torchrun starts; see :mod:`gpulens.hooks.launcher.autorun`.
"""
from __future__ import annotations

import json
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gpulens.hooks.run_env import (
    BOOTSTRAP_DIR,
    ENV_OPTIONS,
    ENV_OWNER,
    ENV_RUN_ID_SCOPE,
    LAUNCHER_SCRIPTS,
    program_name,
)
from gpulens.profiler.errors import GpulensError
from gpulens.profiler.store.runstore import new_run_id, run_dir_in, runs_root, validate_run_id


@dataclass
class Launch:
    """What to exec and with which environment (a pure description, for tests and ``--dry-run``)."""

    argv: list[str]
    env: dict[str, str]
    run_id: str
    run_dir: Path


def command_line(command: list[str], module: str | None) -> list[str]:
    """The argv to exec: ``-m mod args`` and ``train.py args`` run under this interpreter."""
    if command and command[0] == "--":
        command = command[1:]
    if module:
        return [sys.executable, "-m", module, *command]
    if not command:
        raise GpulensError("nothing to run: give a command after '--', e.g. gpulens run -- python train.py")
    if command[0].endswith(".py"):
        return [sys.executable, *command]
    return list(command)


def python_script(argv: list[str]) -> str | None:
    """The script a ``python [options] script.py ...`` command runs (None for -m, -c, other programs)."""
    if not Path(argv[0]).name.startswith("python"):
        return None
    args = argv[1:]
    i = 0
    while i < len(args):
        arg = args[i]
        if arg in ("-m", "-c") or arg.startswith(("-m", "-c")) and len(arg) > 2 and arg[1] in "mc":
            return None
        if arg.startswith("-"):
            i += 2 if arg in ("-W", "-X", "-Q") else 1
            continue
        return arg if arg != "-" else None
    return None


def name_of(argv: list[str]) -> str:
    """A run name from the command: the script or module, also behind torchrun's options."""
    exe = Path(argv[0]).name
    if exe in LAUNCHER_SCRIPTS or exe.startswith("python"):
        args = argv[1:]
        for i, arg in enumerate(args):
            if arg == "-m" and i + 1 < len(args) and exe.startswith("python"):
                return program_name(argv)
            if arg.endswith(".py"):
                return Path(arg).stem
        return program_name(argv) if exe.startswith("python") else exe
    return Path(argv[0]).stem or "run"


def job_run_id(argv: list[str], name: str, env: dict[str, str]) -> str | None:
    """One run id for every node of a multi-node launch, derived alone on each: from torchrun's
    ``--rdzv-id`` (``--rdzv_id``), else Slurm's job and step ids when the job spans nodes."""
    import hashlib

    from gpulens.profiler.store.runstore import slug

    key = None
    for i, arg in enumerate(argv):
        for flag in ("--rdzv-id", "--rdzv_id"):
            if arg == flag and i + 1 < len(argv):
                key = f"rdzv:{argv[i + 1]}"
            elif arg.startswith(flag + "="):
                key = f"rdzv:{arg.split('=', 1)[1]}"
    if key is None and int(env.get("SLURM_JOB_NUM_NODES", "1") or 1) > 1 and env.get("SLURM_JOB_ID"):
        key = f"slurm:{env['SLURM_JOB_ID']}:{env.get('SLURM_STEP_ID', '')}"
    if key is None:
        return None
    return f"{slug(name)}-{hashlib.sha256(key.encode()).hexdigest()[:8]}"


def prepare(command: list[str], module: str | None = None, name: str | None = None,
            runs_dir: str | None = None, run_id: str | None = None,
            env: dict[str, str] | None = None, check_script: bool = True, **options: Any) -> Launch:
    """``check_script``: a ``python missing.py`` command is an error here, not an empty run (off for --dry-run)."""
    argv = command_line(command, module)
    if shutil.which(argv[0]) is None and not Path(argv[0]).exists():
        raise GpulensError(f"command not found: {argv[0]}")
    base = dict(os.environ if env is None else env)
    root = runs_root(runs_dir).resolve()
    run_name = name or name_of(argv)
    job_id = None if run_id else job_run_id(argv, run_name, base)
    rid = validate_run_id(run_id) if run_id else (job_id or new_run_id(run_name))
    run_dir = run_dir_in(root, rid)
    script = python_script(argv) if check_script else None
    if script is not None and not Path(script).is_file():
        raise GpulensError(f"{argv[0]}: can't open file {script!r}: no such file")
    opts = {"name": run_name, "runs_dir": str(root), **{k: v for k, v in options.items() if v is not None}}
    base.pop(ENV_OWNER, None)  # gpulens run from inside a recorded process records the new command
    base[ENV_OPTIONS] = json.dumps(opts)
    base["GPULENS_RUN_ID"] = rid
    # "job": every node of the job has this id (given, or from --rdzv-id / Slurm); "node": this node's own,
    # until the ranks agree on rank 0's through their process group
    base[ENV_RUN_ID_SCOPE] = "job" if run_id or job_id else "node"
    path = base.get("PYTHONPATH")
    base["PYTHONPATH"] = str(BOOTSTRAP_DIR) + (os.pathsep + path if path else "")
    return Launch(argv, base, rid, run_dir)


def interpreter_note(argv: list[str]) -> str | None:
    """A warning when the command's ``python`` is another interpreter than gpulens' own (it may lack gpulens)."""
    if not Path(argv[0]).name.startswith("python"):
        return None
    found = shutil.which(argv[0])
    if found is None or os.path.realpath(found) == os.path.realpath(sys.executable):
        return None
    if Path(found).parent == Path(sys.executable).parent:  # the same environment (python vs python3)
        return None
    return (f"gpulens: note: {argv[0]} is {found}, not {sys.executable}; if it cannot import gpulens "
            "the script runs unrecorded (activate the environment gpulens is installed in)")


def execute(launch: Launch) -> None:
    """Replace this process with the command (returns only by raising)."""
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execvpe(launch.argv[0], launch.argv, launch.env)
    except OSError as exc:
        raise GpulensError(f"cannot run {launch.argv[0]}: {exc.strerror or exc}") from None
