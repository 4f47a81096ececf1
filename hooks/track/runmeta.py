"""Run metadata that only the training process knows: command line, ranks, torch."""
from __future__ import annotations

import os
import re
import sys
from typing import Any

#: Where launchers put a process's rank: torchrun, accelerate, deepspeed, Lightning (RANK ...), else the tasks
#: of a Slurm job step that srun started (SLURM_PROCID ... with SLURM_STEP_ID; a batch script has no step id),
#: which scripts pass to init_process_group themselves.
_RANK_VARS = {"rank": ("RANK", "SLURM_PROCID"), "local_rank": ("LOCAL_RANK", "SLURM_LOCALID"),
              "world_size": ("WORLD_SIZE", "SLURM_NTASKS"),
              "local_world_size": ("LOCAL_WORLD_SIZE", "SLURM_NTASKS_PER_NODE")}


def rank_env(env: dict[str, str] | None = None) -> dict[str, Any]:
    """torch.distributed / torchrun rank variables, else Slurm's (defaults: a single process)."""
    env = dict(os.environ) if env is None else env
    launcher = not _srun_task(env)  # torchrun & co. first: their workers under srun carry both

    def num(key: str, default: int) -> int:
        for name in _RANK_VARS[key][:1] if launcher else _RANK_VARS[key]:
            try:
                return int(env[name])
            except (KeyError, ValueError):
                continue
        return default

    return {
        "rank": num("rank", 0),
        "local_rank": num("local_rank", 0),
        "world_size": num("world_size", 1),
        "local_world_size": num("local_world_size", 1),
        "node_rank": node_rank(env),
    }


def _srun_task(env: dict[str, str]) -> bool:
    return "RANK" not in env and "SLURM_PROCID" in env and "SLURM_STEP_ID" in env


def has_rank(env: dict[str, str] | None = None) -> bool:
    """Did a launcher give this process a rank (torchrun & co., srun)?"""
    env = dict(os.environ) if env is None else env
    return "RANK" in env or _srun_task(env)


#: Where launchers put the node's index in the job: torchrun's agents (GROUP_RANK), Slurm, and the
#: NODE_RANK that Lightning, accelerate and many launch scripts set.
NODE_RANK_VARS = ("GROUP_RANK", "SLURM_NODEID", "NODE_RANK")


def node_rank(env: dict[str, str]) -> int:
    """The node's index in the job (0 when no launcher says): two agents on one host with different
    node ranks are two nodes, as a job spread over machines would be."""
    for name in NODE_RANK_VARS:
        try:
            return int(env[name])
        except (KeyError, ValueError):
            continue
    return 0


#: Where launchers put the job's node count: torchrun's agents, Slurm.
NODE_COUNT_VARS = ("GROUP_WORLD_SIZE", "SLURM_JOB_NUM_NODES", "SLURM_NNODES")


def node_count(env: dict[str, str] | None = None) -> int:
    """How many nodes the job has (0: no launcher says; then WORLD_SIZE / LOCAL_WORLD_SIZE if both given)."""
    env = dict(os.environ) if env is None else env
    for name in NODE_COUNT_VARS:
        try:
            return int(env[name])
        except (KeyError, ValueError):
            continue
    try:
        world, local = int(env["WORLD_SIZE"]), int(env["LOCAL_WORLD_SIZE"])
    except (KeyError, ValueError):
        return 0
    return world // local if local > 0 and world % local == 0 else 0


def job_wide_id(env: dict[str, str] | None = None) -> bool:
    """Is the run id every rank derives alone the same on every node: a rendezvous id given to torchrun, or
    a Slurm job's?  (Else it is one node's, and the ranks agree on rank 0's once the process group exists.)"""
    env = dict(os.environ) if env is None else env
    elastic = env.get("TORCHELASTIC_RUN_ID", "")
    return bool(elastic and elastic.lower() != "none") or bool(env.get("SLURM_JOB_ID"))


def shared_run_id(name: str, env: dict[str, str] | None = None) -> str | None:
    """One run id that every rank of a torchrun/SLURM job derives alone, without talking to the others.

    Ranks must write into the same run directory, and ``track()`` runs before
    any process group exists.  In order: torchrun's rendezvous id (the same on
    every node when given, e.g. ``--rdzv-id=$SLURM_JOB_ID``; random per launch
    with ``--standalone``), SLURM's job and step ids, else the local torchrun
    agent (our parent: its pid and start time are the same for the node's
    ranks).  None for a single process.
    """
    import hashlib

    env = dict(os.environ) if env is None else env
    if rank_env(env)["world_size"] <= 1:
        return None
    from gpulens.profiler.store.runstore import slug

    elastic = env.get("TORCHELASTIC_RUN_ID", "")
    restart = env.get("TORCHELASTIC_RESTART_COUNT", "0")
    if elastic and elastic.lower() != "none":
        key = f"elastic:{elastic}:{restart}"
    elif env.get("SLURM_JOB_ID"):
        key = f"slurm:{env['SLURM_JOB_ID']}:{env.get('SLURM_STEP_ID', '')}:{restart}"
    else:
        try:
            import psutil

            parent = psutil.Process(os.getppid())
            key = f"agent:{parent.pid}:{parent.create_time():.3f}:{env.get('MASTER_PORT', '')}:{restart}"
        except Exception:
            return None
    digest = hashlib.sha256(key.encode()).hexdigest()[:8]
    return f"{slug(name)}-{digest}"


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


#: Command-line options whose value is a secret: the value is kept out of the run (which may be published).
_SECRET_OPTION = re.compile(r"(token|secret|passw|api[_-]?key|access[_-]?key|credential|auth)", re.IGNORECASE)
_URL_USERINFO = re.compile(r"(://)[^/@\s]+@")


def redact_argv(argv: list[str]) -> list[str]:
    """A command line as a run keeps it: the values of ``--token X`` / ``--api-key=X`` / ``PASSWORD=X``
    options and the ``user:password@`` of URLs replaced by ``***``."""
    out: list[str] = []
    hide_next = False
    for arg in argv:
        text = str(arg)
        if hide_next:
            out.append("***")
            hide_next = False
            continue
        name, eq, _ = text.partition("=")
        if _SECRET_OPTION.search(name) and (eq or name.startswith("-")):
            if eq:
                out.append(f"{name}=***")
            else:
                out.append(text)
                hide_next = True
            continue
        out.append(_URL_USERINFO.sub(r"\1***@", text))
    return out


def command_meta() -> dict[str, Any]:
    return {
        "command": redact_argv([sys.executable, *sys.argv]),
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


def start_meta(options: Any, run_id: str, profile: Any, model: dict[str, Any] | None,
               ranks: dict[str, Any]) -> dict[str, Any]:
    """A rank's metadata as recording starts (``options``: :class:`~gpulens.hooks.track.options.RunOptions`)."""
    from gpulens import __version__
    from gpulens.profiler.store import clock

    user_flops = {k: v for k, v in options.user_flops.items() if v is not None}
    return {
        "gpulens_version": __version__,
        "run_id": run_id,
        "name": options.name,
        "start": clock.now(),
        "status": "running",
        "batch_size": options.batch_size,
        "config": jsonable(options.config or {}),
        "warmup_steps": options.warmup_steps,
        "sync_phases": options.sync_phases,
        "profile": vars(profile) if profile.enabled else None,
        "user_flops": user_flops or None,
        "model": model,
        "target_batch": options.target_batch,
        "recorded_by": "gpulens run" if options.auto else "track",
        "distributed_backend": distributed_backend(),
        **ranks,
        **command_meta(),
        **torch_meta(),
    }


def jsonable(value: Any) -> Any:
    """``value`` as JSON can hold it (a user's config may carry objects: their repr)."""
    import json

    try:
        json.dumps(value)
        return value
    except (TypeError, ValueError):
        if isinstance(value, dict):
            return {str(k): jsonable(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [jsonable(v) for v in value]
        return repr(value)
