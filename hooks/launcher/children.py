"""Training in child processes: each child that trains is recorded as a rank of the run.

The DDP tutorial's ``mp.spawn(train, nprocs=2)``, hogwild's
``multiprocessing.Process`` per worker, any child of the recording process
that runs backward.  A child cannot know up front whether it will train --
DataLoader and compile workers are children too, and must cost nothing --
so it is only *armed*: ``torch.autograd.backward`` is wrapped, and the
first backward starts recording, as the rank torch gave it when it has
joined a process group (``mp.spawn`` rank k is rank k of the run), else
as the lowest rank left free.  The parent, which samples the node's GPUs
and host and trains nothing, is the node's sampler, not a rank
(:mod:`gpulens.profiler.store.members`); when it closes, the files are
renamed to what they hold.  The first step of a child is partial, and a
warm-up step anyway.

A forked child first lets go of its copy of the parent's run: threads do
not survive fork, and SQLite connections must not cross it.  Forked
multiprocessing children leave through ``os._exit``, past ``atexit``, so
their run is also closed by a multiprocessing finalizer.
"""
from __future__ import annotations

import logging
import os
import sys
import threading
from collections.abc import Callable
from typing import Any

log = logging.getLogger("gpulens")

_lock = threading.Lock()
_armed: _Trigger | None = None
_fork_handler_installed = False


def install_fork_handler(current: Callable[[], Any], options: dict[str, Any]) -> None:
    """In the recording process: forked children let go of ``current()`` (the run) and are armed instead."""
    global _fork_handler_installed
    if _fork_handler_installed or not hasattr(os, "register_at_fork"):
        return
    _fork_handler_installed = True

    def after_in_child() -> None:
        try:
            run = current()
            if run is not None:
                run.orphan()
            from gpulens.hooks.launcher import started

            started.forget()
            arm(options, start_method="fork")
        except Exception as exc:  # never let a fork fail over recording
            log.debug("gpulens: forked child not armed: %s", exc)

    os.register_at_fork(after_in_child=after_in_child)


def arm(options: dict[str, Any], start_method: str) -> None:
    """Record this child process from its first backward on (now, or once it imports torch)."""
    global _armed
    torch = sys.modules.get("torch")
    if torch is None:
        from gpulens.hooks.launcher.torch_import import when_torch_imported

        when_torch_imported(lambda module: arm(options, start_method))
        return
    with _lock:
        if _armed is not None:
            _armed.disarm()
        _armed = _Trigger(torch, lambda: _start_child_run(torch, options, start_method))


class _Trigger:
    """Wraps ``torch.autograd.backward`` until the first call, which starts this child's run."""

    def __init__(self, torch: Any, start: Callable[[], None]) -> None:
        self.torch = torch
        self._start = start
        self._fired = False
        self.original = torch.autograd.backward
        trigger = self

        def backward(tensors: Any, *args: Any, **kwargs: Any) -> Any:
            trigger.fire()
            return trigger.original(tensors, *args, **kwargs)

        backward.__wrapped__ = self.original  # type: ignore[attr-defined]
        self.wrapper = backward
        torch.autograd.backward = backward

    def disarm(self) -> None:
        if self.torch.autograd.backward is self.wrapper:
            self.torch.autograd.backward = self.original

    def fire(self) -> None:
        if self._fired:
            return
        self._fired = True
        self.disarm()  # before recording starts: its own step detection wraps the original
        try:
            self._start()
        except Exception as exc:
            log.warning("gpulens: this child process trains but could not be recorded: %s", exc)


def _start_child_run(torch: Any, options: dict[str, Any], start_method: str) -> None:
    from gpulens.hooks.launcher import started
    from gpulens.hooks.track.options import track_kwargs
    from gpulens.hooks.track.tracking import track

    child: dict[str, Any] = {"parent_pid": _parent_pid(), "start_method": start_method}
    try:
        dist = torch.distributed
        if dist.is_available() and dist.is_initialized():
            child["process_group_rank"] = int(dist.get_rank())
            child["process_group_world_size"] = int(dist.get_world_size())
    except Exception:
        pass
    kwargs = track_kwargs(options)
    kwargs["advise"] = False  # the parent advises on the whole run when it ends
    kwargs.pop("prometheus_port", None)  # the parent's exporter holds the port
    run = track(options.get("name") or "run", auto=True, child=child, **kwargs)
    if run.closed:
        return
    started.adopt(run)
    try:  # forked multiprocessing children end in os._exit(): close through multiprocessing's exit hook
        from multiprocessing import util

        util.Finalize(None, run.close_at_exit, exitpriority=10)
    except Exception:
        pass


def _parent_pid() -> int | None:
    from gpulens.hooks.run_env import ENV_OWNER

    try:
        return int(os.environ.get(ENV_OWNER, ""))
    except ValueError:
        return None
