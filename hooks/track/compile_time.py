"""Seconds torch.compile spent compiling, read at each step's end.

Compiling is one-off work: the first step of a compiled model can take a
minute while every later one takes milliseconds, and a recompile (a new
shape, a guard that failed) makes one step of the middle of a run slow.
Left in, it would land in whichever phase it happened in (forward, or a
lazy backward compile) and in that step's time; the step is flagged
instead (``FLAG_COMPILE``) and its compile seconds kept as ``@compile``.
The figures come from dynamo's own timers, so this reads nothing before
torch.compile is first used and costs a few dictionary lookups after.
"""
from __future__ import annotations

import sys

#: dynamo's compile of a frame (tracing and the backend's forward graph), and AOT autograd's lazy compile of
#: a backward graph at the first backward: together everything the step spent compiling.
_TIMERS = ("_compile.compile_inner", "backward._backward_impl")


class CompileClock:
    def __init__(self) -> None:
        self._seen = 0.0
        self._key: tuple[object, int, object, int] = (None, 0, None, 0)  # the timer lists (held: ids stay
        # theirs) and their lengths when last summed

    def take(self) -> float:
        """Seconds spent compiling since the last call.

        Called at every step's end: it sums dynamo's timers only when one of them changed (a timer list
        grew, or dynamo's reset replaced it), so a step without compiling costs two lookups."""
        utils = sys.modules.get("torch._dynamo.utils")
        if utils is None:
            return 0.0
        try:
            timers = utils.compilation_time_metrics
            frames, backward = timers.get(_TIMERS[0]), timers.get(_TIMERS[1])
            key = (frames, len(frames) if frames else 0, backward, len(backward) if backward else 0)
            if key == self._key:
                return 0.0
            self._key = key
            total = (sum(frames) if frames else 0.0) + (sum(backward) if backward else 0.0)
        except Exception:
            return 0.0
        delta, self._seen = total - self._seen, total
        return delta if delta > 0 else 0.0  # timers cleared (torch._dynamo.reset): start again
