"""Host-side timing of DDP's gradient all-reduce, through a DDP communication hook.

DDP all-reduces gradient buckets from C++ while backward runs, so no Python
call marks it.  A communication hook that does exactly what DDP's default
does (``default_hooks.allreduce_hook``: average over the group) and notes
when each bucket was launched and when its future completed gives the
communication wall time of every step.  Only for gloo: an NCCL future
completes when the work is queued on a CUDA stream, not when it ran -- on
GPUs the communication time comes from the profiler windows' kernels.

DDP accepts one communication hook per model: ours is added only to models
without one, at the first backward (registration after that is refused by
DDP itself, so a user hook registered later in training would fail -- DDP's
documentation asks for hooks before training starts).  DDP cannot take a hook
back, so after the run closes ours goes on averaging, as the default does,
without timing; and DDP models pickle and copy without it (the class stays
hidden, :mod:`gpulens.hooks.track.hidden_hooks`).
"""
from __future__ import annotations

import logging
import threading
import time
from typing import Any

from gpulens.hooks.track.hidden_hooks import gpulens_hook, hide_class

log = logging.getLogger("gpulens")


class CommTimer:
    """Collects (launch, done) intervals of all-reduces; :meth:`take` turns them into seconds per step."""

    def __init__(self) -> None:
        self._intervals: list[tuple[float, float]] = []
        self._lock = threading.Lock()
        self.models = 0
        self.closed = False

    def attach(self, torch: Any, model: Any) -> bool:
        """Time ``model``'s all-reduces if it is a gloo DDP model without a hook of its own."""
        ddp = torch.nn.parallel.DistributedDataParallel
        if not isinstance(model, ddp) or getattr(model, "_comm_hooks", None):
            return False
        try:
            dist = torch.distributed
            group = model.process_group
            if dist.get_backend(group) != "gloo":
                return False
            from torch.distributed.algorithms.ddp_comm_hooks import default_hooks

            allreduce = default_hooks.allreduce_hook
            intervals, lock, clock, timer = self._intervals, self._lock, time.perf_counter, self

            def gpulens_timed_allreduce(state, bucket):
                # no annotations: DDP checks them, and this module's are strings
                if timer.closed:
                    return allreduce(state, bucket)
                t0 = clock()

                def done(fut):
                    with lock:
                        intervals.append((t0, clock()))
                    return fut.value()

                return allreduce(state, bucket).then(done)

            hide_class(type(model), torch)  # for good: the hook stays with the model
            model.register_comm_hook(group, gpulens_hook(gpulens_timed_allreduce))
        except Exception as exc:
            log.info("gpulens: DDP all-reduce not timed: %s", exc)
            return False
        self.models += 1
        return True

    def close(self) -> None:
        """Stop timing (the hooks stay registered: DDP has no way to remove them)."""
        self.closed = True
        with self._lock:
            self._intervals.clear()

    def take(self, until: float) -> float | None:
        """Seconds in all-reduce (union of intervals) among those finished by ``until``; None if none."""
        with self._lock:
            done = [iv for iv in self._intervals if iv[1] <= until]
            if not done:
                return None
            self._intervals[:] = [iv for iv in self._intervals if iv[1] > until]  # in place: the hook holds it
        done.sort()
        total, start, end = 0.0, done[0][0], done[0][1]
        for a, b in done[1:]:
            if a > end:
                total += end - start
                start, end = a, b
            else:
                end = max(end, b)
        return total + (end - start)
