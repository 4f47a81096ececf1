"""Measured what-ifs: a short stretch of the real training loop run the other way, to prove an estimate.

``synthetic-data`` replays two cached batches instead of waiting on the
DataLoader (the objects the loader handed out: same shapes, dtype, device
and pinning); ``batch-size=N`` replays the cached batch cut or tiled to N
samples along its first dimension; ``num-workers=N`` loads the loop's next
batches (the same samples in the same order) with N DataLoader workers
(:mod:`whatif_workers`); ``autocast=bf16`` runs the model's forward under
bf16 autocast (:mod:`whatif_autocast`), ``channels-last`` the model and its
image inputs in NHWC (:mod:`whatif_channels_last`), ``optimizer=fused`` (or
``foreach``) the optimizers' steps with that torch implementation
(:mod:`whatif_optimizer`).  The rest of the user's loop runs unchanged, so the
stretch measures what their loop would do without input waits (or at N, with
N workers, in bf16, channels-last, with a fused optimizer), not a model of it.

Honesty: the stretch's steps and a few settling steps after it (the
DataLoader's prefetch queue refills while it is not asked) are flagged
:data:`~gpulens.profiler.store.schema.FLAG_WHATIF` and left out of the run's
own throughput; the replaying stretches train on repeated batches (``steps``
extra optimizer steps), which is why they are opt-in and short (a workers
stretch trains on the run's own batches: it adds no step).  A workers
stretch's first steps wait for its workers to start: they are flagged with
the stretch but measured from ``measure_from`` on.  A batch size whose
memory cannot be shown to fit (CUDA peak so far scaled to N against the
device's memory, or the batch-size probe's b_max) is refused before the
stretch, never tried: an out-of-memory error would reach the user's loop.
"""
from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from gpulens.hooks.track import whatif_channels_last as channels_last
from gpulens.hooks.track.steps import infer_batch_size
from gpulens.hooks.track.whatif_autocast import AutocastContext, device_type
from gpulens.hooks.track.whatif_autocast import trial as autocast_trial
from gpulens.hooks.track.whatif_autocast import why_not as autocast_why_not
from gpulens.hooks.track.whatif_optimizer import IMPLEMENTATIONS, ImplementationSwap
from gpulens.hooks.track.whatif_optimizer import trial as optimizer_trial
from gpulens.hooks.track.whatif_optimizer import why_not as optimizer_why_not
from gpulens.hooks.track.whatif_workers import WorkersStretch, why_not
from gpulens.profiler.errors import GpulensError
from gpulens.profiler.store.schema import FLAG_WHATIF

log = logging.getLogger("gpulens")

SYNTHETIC, BATCH_SIZE, NUM_WORKERS = "synthetic-data", "batch-size", "num-workers"
AUTOCAST, CHANNELS_LAST, OPTIMIZER = "autocast", "channels-last", "optimizer"
FORWARD_KINDS = (AUTOCAST, CHANNELS_LAST)  # what-ifs that act in the model's forward, not on its batches
#: The stretch starts after warm-up and the first profiler window (steps 10-13 by default).
DEFAULT_AT = 20
DEFAULT_STEPS = 20
#: Steps after the stretch whose loader queue was filled during it (prefetch): flagged, not measured.
SETTLE_STEPS = 5
#: A batch size is tried on CUDA only while the scaled peak stays under this share of the device memory.
MEMORY_HEADROOM = 0.85
#: The most workers a num-workers what-if starts (each is a process holding a copy of the dataset object).
MAX_WORKERS = 64


@dataclass(frozen=True)
class WhatIfPlan:
    """What to try, from which step, for how many steps."""

    kind: str  # synthetic-data | batch-size | num-workers | autocast (bf16) | channels-last | optimizer
    at: int = DEFAULT_AT
    steps: int = DEFAULT_STEPS
    batch_size: int | None = None
    num_workers: int | None = None
    implementation: str | None = None  # optimizer: fused | foreach

    @property
    def ramp(self) -> int:
        """Steps at the stretch's start left out of its measure: N new workers start and fill their queue."""
        return min(self.steps // 2, self.num_workers + 1) if self.kind == NUM_WORKERS and self.num_workers else 0

    @property
    def end(self) -> int:  # first step after the stretch
        return self.at + self.steps

    def describe(self) -> dict[str, Any]:
        out = {"kind": self.kind, "batch_size": self.batch_size, "first_step": self.at,
               "last_step": self.end - 1, "settle_steps": SETTLE_STEPS}
        if self.kind == NUM_WORKERS:
            out.update(num_workers=self.num_workers, measure_from=self.at + self.ramp)
        if self.kind == AUTOCAST:
            out.update(dtype="bf16")
        if self.kind == OPTIMIZER:
            out.update(implementation=self.implementation)
        return out


def parse_what_if(text: str) -> WhatIfPlan:
    """``synthetic-data``, ``batch-size=N``, ``num-workers=N``, ``autocast[=bf16]``, ``channels-last`` or
    ``optimizer=fused|foreach``, optionally ``:at=STEP,steps=N`` (e.g. ``synthetic-data:at=50``)."""
    head, _, tail = text.strip().partition(":")
    kind, _, value = head.partition("=")
    kind = kind.strip().lower().replace("_", "-")
    options: dict[str, int] = {}
    for part in filter(None, (p.strip() for p in tail.split(","))):
        key, sep, raw = part.partition("=")
        if not sep or key not in ("at", "steps"):
            raise GpulensError(f"--what-if {text}: unknown option {part!r} (at=STEP, steps=N)")
        options[key] = _positive(raw, f"--what-if {text}: {key}")
    at, steps = options.get("at", DEFAULT_AT), options.get("steps", DEFAULT_STEPS)
    if at < 3:
        raise GpulensError(f"--what-if {text}: at must be 3 or later (the batches are cached from the steps before)")
    if kind == SYNTHETIC and not value:
        return WhatIfPlan(SYNTHETIC, at=at, steps=steps)
    if kind == BATCH_SIZE and value:
        return WhatIfPlan(BATCH_SIZE, batch_size=_positive(value, f"--what-if {text}: batch size"), at=at, steps=steps)
    if kind == NUM_WORKERS and value:
        workers = _positive(value, f"--what-if {text}: worker count", zero=True)
        if workers > MAX_WORKERS:
            raise GpulensError(f"--what-if {text}: at most {MAX_WORKERS} workers")
        return WhatIfPlan(NUM_WORKERS, num_workers=workers, at=at, steps=steps)
    if kind == CHANNELS_LAST and not value:
        return WhatIfPlan(CHANNELS_LAST, at=at, steps=steps)
    if kind == AUTOCAST:
        if value.strip().lower() not in ("", "bf16", "bfloat16"):
            raise GpulensError(f"--what-if {text}: autocast=bf16 only (fp16 needs a GradScaler's loss scaling, "
                               "which a stretch cannot add)")
        return WhatIfPlan(AUTOCAST, at=at, steps=steps)
    if kind == OPTIMIZER:
        implementation = value.strip().lower()
        if implementation not in IMPLEMENTATIONS:
            raise GpulensError(f"--what-if {text}: optimizer=fused or optimizer=foreach")
        return WhatIfPlan(OPTIMIZER, implementation=implementation, at=at, steps=steps)
    raise GpulensError(f"--what-if {text}: expected synthetic-data, batch-size=N, num-workers=N, autocast=bf16, "
                       "channels-last or optimizer=fused|foreach (optionally :at=STEP,steps=N)")


def _positive(raw: str, what: str, zero: bool = False) -> int:
    try:
        value = int(raw)
    except ValueError:
        raise GpulensError(f"{what} must be a whole number, not {raw!r}") from None
    if value < 0 or (value == 0 and not zero):
        raise GpulensError(f"{what} must be {'0 or more' if zero else 'positive'}")
    return value


def _map_tensors(batch: Any, fn: Callable[[Any], Any], torch: Any) -> Any:
    """``batch`` with ``fn`` applied to its tensors (dicts, lists, tuples, namedtuples, two levels deep)."""
    def one(obj: Any, depth: int) -> Any:
        if isinstance(obj, torch.Tensor):
            return fn(obj)
        if depth >= 2:
            return obj
        if isinstance(obj, dict):
            return type(obj)((k, one(v, depth + 1)) for k, v in obj.items())
        if isinstance(obj, tuple) and hasattr(obj, "_fields"):  # namedtuple
            return type(obj)(*(one(v, depth + 1) for v in obj))
        if isinstance(obj, (list, tuple)):
            return type(obj)(one(v, depth + 1) for v in obj)
        return obj

    return one(batch, 0)


def _pinned_like(out: Any, obj: Any) -> Any:
    return out.pin_memory() if obj.device.type == "cpu" and obj.is_pinned() else out


def resize_batch(batch: Any, size: int, torch: Any) -> Any:
    """``batch`` with every tensor whose first dimension is the batch's cut or tiled to ``size`` (pinning kept)."""
    n = infer_batch_size(batch)
    if n is None or n <= 0:
        raise ValueError("the batch holds no tensor with a batch dimension")

    def resize(t: Any) -> Any:
        if t.dim() == 0 or int(t.shape[0]) != n:
            return t  # not a batch dimension (a scalar, a shared mask): left alone
        if size <= n:
            return _pinned_like(t[:size].clone(), t)
        return _pinned_like(t.repeat(-(-size // n), *([1] * (t.dim() - 1)))[:size].contiguous(), t)

    return _map_tensors(batch, resize, torch)


def _copy_batch(batch: Any, torch: Any) -> Any:
    """A private copy of a batch (the loop may change its tensors in place), pinning kept."""
    return _map_tensors(batch, lambda t: _pinned_like(t.detach().clone(), t), torch)


_NOTHING = object()  # no replay: fetch from the loader


class WhatIf:
    """Stands between the training loop and its DataLoader for the stretch of a :class:`WhatIfPlan`.

    ``fetch(step, real_next, source, loader)`` is called for every training
    batch fetch with the index of the step the batch opens; outside the
    stretch it calls ``real_next`` (caching the batches just before the
    stretch), inside it returns a cached one without touching the loader --
    or, for ``num-workers``, the next batch of a temporary loader over the
    live iterator ``source``'s own sampler order.
    """

    CACHED = 2

    def __init__(self, plan: WhatIfPlan, set_meta: Callable[..., None],
                 limit: Callable[[], int | None] | None = None) -> None:
        self.plan = plan
        self._set_meta = set_meta
        self._limit = limit  # the probe's largest batch that fits, if one ran
        self._cache: list[Any] = []
        self._replays = 0
        self.state = "waiting"  # waiting | running | done | skipped
        self.reason: str | None = None
        self.base_batch: int | None = None
        self._end = plan.end  # the first step after the stretch: earlier where the epoch ran out
        self._settle = SETTLE_STEPS
        self._workers: WorkersStretch | None = None
        self._base_workers: int | None = None
        self._fetch_step, self._fetches, self._per_step = -1, 0, 1  # training fetches per step (accumulation)
        self._autocast: AutocastContext | None = None  # the forward now running under autocast
        self._in_forward = False  # a forward kind's stretch acts on the forward now running
        self._laid_out: Any = None  # the model a channels-last stretch laid out (laid back at its end)
        self._device = "cpu"
        self._dtype: Any = None  # the model's parameters' dtype: what its outputs go back to
        self._swap: ImplementationSwap | None = None  # an optimizer stretch's changed optimizers
        self._trying = False  # a trial step of a throwaway optimizer is running

    # ------------------------------------------------------------------ hot path
    def fetch(self, step: int, real_next: Callable[[], Any], source: Any = None, loader: Any = None) -> Any:
        """The loader's exceptions (StopIteration included) reach the loop as they would; ours never do."""
        if self.plan.kind == NUM_WORKERS:
            return self._fetch_workers(step, real_next, source, loader)
        if self.plan.kind in FORWARD_KINDS or self.plan.kind == OPTIMIZER:
            return real_next()  # its stretch is in the forward (forward_pre / forward_post) or the optimizer's step
        try:
            replay = self._replay(step)
        except Exception as exc:
            self._skip(f"{type(exc).__name__}: {exc}")
            replay = _NOTHING
        if replay is not _NOTHING:
            return replay
        batch = real_next()
        if self.state == "waiting" and self.plan.at - self.CACHED <= step < self.plan.at:
            try:
                self._remember(batch)
            except Exception as exc:  # cannot copy it (out of memory, an odd batch): the run goes on as is
                self._skip(f"could not cache a batch ({type(exc).__name__}: {exc})")
        return batch

    def _replay(self, step: int) -> Any:
        """A cached batch for ``step`` inside the stretch, else _NOTHING (ending the stretch past it)."""
        plan = self.plan
        if self.state == "running" or (self.state == "waiting" and plan.at <= step < plan.end):
            if step < plan.end and self._ready():
                batch = self._cache[self._replays % len(self._cache)]
                self._replays += 1
                return batch
            self._finish("done")
        return _NOTHING

    def flags(self, step: int) -> int:
        """FLAG_WHATIF for the stretch's steps and the settling ones after it."""
        if self.state in ("running", "done") and self.plan.at <= step < self._end + self._settle:
            return FLAG_WHATIF
        return 0

    # ------------------------------------------------------------------ autocast, channels-last
    def forward_pre(self, step: int, module: Any, args: tuple[Any, ...],
                    kwargs: dict[str, Any] | None) -> tuple[tuple[Any, ...], dict[str, Any]] | None:
        """Before a training forward of the loop's model: inside the stretch, enter bf16 autocast, or lay the
        inputs out channels-last (returned: the forward's new arguments); the first time after a trial forward
        on a copy.  Never raises."""
        if self.plan.kind not in FORWARD_KINDS or self._in_forward:
            return None
        try:
            if self.state == "running" and step >= self._end:
                self._finish("done", step)
            if self.state == "waiting" and self.plan.at <= step < self.plan.end:
                self._start_forward(module, args, kwargs or {})
            if self.state == "running":
                torch = sys.modules["torch"]
                if self.plan.kind == AUTOCAST:
                    self._in_forward = True
                    self._autocast = AutocastContext(torch, self._device)
                    return None
                if module is self._laid_out:  # (another root model, a GAN's second one: left as it is)
                    self._in_forward = True
                    return channels_last.inputs(args, kwargs or {}, torch)
        except Exception as exc:
            self._in_forward, self._autocast = False, None
            self._skip(f"{type(exc).__name__}: {exc}")
        return None

    def forward_post(self, output: Any) -> Any:
        """After that forward (also when it raised): leave autocast (the output in the model's dtype), or the
        output's 4-D tensors contiguous again."""
        if not self._in_forward:
            return output
        self._in_forward = False
        ctx, self._autocast = self._autocast, None
        try:
            if ctx is not None:
                return ctx.leave(output, self._dtype)
            return channels_last.outputs(output, sys.modules["torch"])
        except Exception as exc:
            self._skip(f"{type(exc).__name__}: {exc}")
            return output

    def _start_forward(self, module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        torch = sys.modules["torch"]
        if self.plan.kind == AUTOCAST:
            why = autocast_why_not(module, torch) or autocast_trial(module, args, kwargs, torch)
        else:
            why = channels_last.why_not(module, torch) or channels_last.trial(module, args, kwargs, torch)
        if why:
            self._skip(why)
            return
        self._device = device_type(module) or "cpu"
        self._dtype = torch.float32
        self._settle = 1  # nothing refills after it; the step after may still free its activations
        if self.plan.kind == CHANNELS_LAST:
            self._laid_out = module  # first: a layout that fails halfway is laid back (_skip)
            channels_last.lay_out(module, torch, True)
        self.state = "running"
        how = (f"run the forward under torch.autocast({self._device}, bfloat16)" if self.plan.kind == AUTOCAST
               else "run the model and its inputs channels-last")
        log.info("gpulens: what-if %s: steps %d-%d %s", self._label(), self.plan.at, self.plan.end - 1, how)
        self._set_meta(what_if={**self.plan.describe(), "status": "running", "device": self._device,
                                "settle_steps": self._settle})

    def _lay_back(self) -> None:
        """A channels-last stretch is over: the model's parameters contiguous again (never raises)."""
        module, self._laid_out = self._laid_out, None
        if module is None:
            return
        try:
            channels_last.lay_out(module, sys.modules["torch"], False)
        except Exception as exc:
            log.warning("gpulens: what-if channels-last: could not lay the model out contiguous again (%s: %s)",
                        type(exc).__name__, exc)

    # ------------------------------------------------------------------ optimizer implementation
    def optimizer_pre(self, step: int, optimizer: Any) -> None:
        """Before an optimizer's step (torch.optim's global step pre-hook): inside the stretch, that optimizer
        steps with the implementation tried (the first time after a trial step of a throwaway copy); at the
        stretch's end, every optimizer as it was.  Never raises."""
        if self.plan.kind != OPTIMIZER or self._trying:
            return  # (the trial's throwaway optimizer steps through the same hook)
        try:
            if self.state == "running" and step >= self._end:
                self._finish("done", step)
            starting = self.state == "waiting" and self.plan.at <= step < self.plan.end
            swap = self._swap
            if not starting and (self.state != "running" or swap is None or swap.seen(optimizer)):
                return
            implementation = str(self.plan.implementation)
            torch = sys.modules["torch"]
            self._trying = True
            try:
                why = optimizer_why_not(optimizer, implementation) or optimizer_trial(optimizer, implementation, torch)
            finally:
                self._trying = False
            if why:  # before the stretch: skipped; a second optimizer refused mid-stretch: cut short there
                self._skip(why)
                return
            if starting:
                swap = self._start_optimizer()
            assert swap is not None
            swap.apply(optimizer, torch)
        except Exception as exc:
            self._skip(f"{type(exc).__name__}: {exc}")

    def _start_optimizer(self) -> ImplementationSwap:
        self._swap = swap = ImplementationSwap(str(self.plan.implementation))
        self._settle = 1  # nothing refills after it
        self.state = "running"
        log.info("gpulens: what-if %s: steps %d-%d step the optimizer with torch's %s implementation",
                 self._label(), self.plan.at, self.plan.end - 1, self.plan.implementation)
        self._set_meta(what_if={**self.plan.describe(), "status": "running", "settle_steps": self._settle})
        return swap

    def _put_back(self) -> None:
        """An optimizer stretch is over: every optimizer it changed as it was (never raises)."""
        swap, self._swap = self._swap, None
        if swap is not None:
            swap.restore()

    # ------------------------------------------------------------------ num-workers
    def _fetch_workers(self, step: int, real_next: Callable[[], Any], source: Any, loader: Any) -> Any:
        """Inside the stretch, the temporary workers' batches; the loop's own loader before and after."""
        if self.state == "waiting":
            if step != self._fetch_step:  # the fetches of the last whole step: how many batches a step takes
                self._per_step = max(1, self._fetches) if self._fetch_step >= 0 else 1
                self._fetch_step, self._fetches = step, 0
            self._fetches += 1
            if self.plan.at <= step < self.plan.end:
                try:
                    self._start_workers(source, loader)
                except Exception as exc:
                    self._skip(f"{type(exc).__name__}: {exc}")
        stretch = self._workers
        if self.state == "running" and stretch is not None:
            try:
                served, batch = stretch.next()
            except Exception as exc:  # the data's own error, loading in-process: the loop gets it as it would
                self.reason = f"the data raised {type(exc).__name__}: {exc}"
                self._finish("cut short", step)
                raise
            if served:
                return batch
            self._finish("done", step)
        return real_next()

    def _start_workers(self, source: Any, loader: Any) -> None:
        torch = sys.modules.get("torch")
        why = "torch is not imported" if torch is None else why_not(source, torch)
        if why:
            self._skip(why)
            return
        workers = int(self.plan.num_workers or 0)
        stretch = WorkersStretch(source, workers, self.plan.steps * self._per_step, torch, loader)
        if not stretch.taken:  # the epoch's last batch: the next epoch's first fetch starts it
            stretch.close()
            return
        self._workers = stretch
        self._base_workers = int(getattr(source, "_num_workers", 0) or 0)
        # the run's own workers prefetched this many batches before the stretch: they come first after it
        self._settle = max(SETTLE_STEPS, self._base_workers * int(getattr(source, "_prefetch_factor", 2) or 2) + 1)
        self.state = "running"
        log.info("gpulens: what-if num-workers=%d: steps %d-%d load with %d workers (the run has %d)", workers,
                 self.plan.at, self.plan.end - 1, workers, self._base_workers)
        self._set_meta(what_if={**self.plan.describe(), "status": "running", "base_workers": self._base_workers,
                                "settle_steps": self._settle})

    # ------------------------------------------------------------------ the stretch
    def _ready(self) -> bool:
        if self.state == "running":
            return True
        if not self._cache:
            self._skip("no training batch was fetched from a DataLoader just before the stretch")
            return False
        self.state = "running"
        log.info("gpulens: what-if %s: steps %d-%d replay cached batches", self._label(), self.plan.at,
                 self.plan.end - 1)
        self._set_meta(what_if={**self.plan.describe(), "status": "running", "base_batch": self.base_batch})
        return True

    def _finish(self, status: str, step: int | None = None) -> None:
        """The stretch is over ("done", or "cut short" with :attr:`reason`): the loader takes over again.
        ``step``: the first step after it, where that is known (a workers stretch ends with its batches)."""
        if self.state != "running":
            return
        self.state = "done"
        self._cache = []
        plan = self.plan.describe()
        if step is not None and self.plan.at < step < self._end:
            self._end = step
            plan["last_step"] = step - 1
        plan["settle_steps"] = self._settle
        self._lay_back()
        self._put_back()
        stretch, self._workers = self._workers, None
        if stretch is not None:
            stretch.close()
            plan.update(base_workers=self._base_workers, settle_steps=self._settle, batches=stretch.taken,
                        fell_back=stretch.fell_back)
        self._set_meta(what_if={**plan, "status": status, "base_batch": self.base_batch,
                                "replayed": self._replays, "reason": self.reason})

    def close(self, steps_done: int) -> None:
        """At the run's end: a stretch the run did not get to (or finish) says why."""
        if self.state == "running" and (self.plan.kind in FORWARD_KINDS or self.plan.kind == OPTIMIZER) \
                and steps_done >= self._end:
            self._finish("done", self._end)  # its last step was the run's: no later forward or step ended it
        elif self.state == "running":
            self.reason = "the run ended during the stretch"
            self._finish("cut short", steps_done)
        elif self.state == "waiting":
            reason = (f"the run ended before step {self.plan.at}" if steps_done <= self.plan.at else
                      "no torch.optim optimizer stepped in the stretch" if self.plan.kind == OPTIMIZER else
                      "no training forward of the model came through gpulens' hooks (track(model=...), or "
                      "gpulens run)" if self.plan.kind in FORWARD_KINDS else
                      "no training batch came through a DataLoader gpulens sees (run.loader(), or a torch "
                      "DataLoader under gpulens run)")
            self._set_meta(what_if={**self.plan.describe(), "status": "not reached", "reason": reason})
        self._cache = []

    def _skip(self, reason: str) -> None:
        self._lay_back()
        self._put_back()
        if self.state in ("running", "done"):  # mid-stretch: what ran stays flagged; say it was cut short
            self.reason = reason
            self._finish("cut short")
            return
        self.state = "skipped"
        self.reason = reason
        self._cache = []
        log.warning("gpulens: what-if %s not run: %s", self._label(), reason)
        self._set_meta(what_if={**self.plan.describe(), "status": "skipped", "reason": reason,
                                "base_batch": self.base_batch})

    def _label(self) -> str:
        if self.plan.kind == NUM_WORKERS:
            return f"num-workers={self.plan.num_workers}"
        if self.plan.kind == AUTOCAST:
            return "autocast=bf16"
        if self.plan.kind == CHANNELS_LAST:
            return "channels-last"
        if self.plan.kind == OPTIMIZER:
            return f"optimizer={self.plan.implementation}"
        return f"batch-size={self.plan.batch_size}" if self.plan.kind == BATCH_SIZE else self.plan.kind

    def _remember(self, batch: Any) -> None:
        torch = sys.modules.get("torch")
        if torch is None:
            self._skip("torch is not imported")
            return
        self.base_batch = infer_batch_size(batch)
        if self.plan.kind == BATCH_SIZE:
            why = self._unsafe(batch, torch)
            if why:
                self._skip(why)
                return
            copy = resize_batch(batch, int(self.plan.batch_size or 0), torch)
        else:
            copy = _copy_batch(batch, torch)
        self._cache = (self._cache + [copy])[-self.CACHED:]  # accumulation: several fetches per step

    def _unsafe(self, batch: Any, torch: Any) -> str | None:
        """Why trying the batch size could run out of memory (None: it is safe to try)."""
        target = int(self.plan.batch_size or 0)
        base = self.base_batch
        if not base:
            return "the batch holds no tensor with a batch dimension to resize"
        limit = self._limit() if self._limit is not None else None
        if limit is not None and target > limit:
            return f"the batch-size probe found at most {limit} samples fit"
        if target <= base or not torch.cuda.is_available() or not torch.cuda.is_initialized():
            return None  # smaller batches, and host memory (the CPU training runs on), are safe to try
        device = torch.cuda.current_device()
        peak = float(torch.cuda.max_memory_allocated(device))
        total = float(torch.cuda.get_device_properties(device).total_memory)
        scaled = peak * target / base  # activations scale with the batch; weights do not: an upper bound
        if scaled > MEMORY_HEADROOM * total:
            return (f"{target} samples could need {scaled / 2**30:.1f} GiB (peak so far x {target}/{base}), over "
                    f"{MEMORY_HEADROOM:.0%} of the GPU's {total / 2**30:.1f} GiB; run gpulens.probe_batch_sizes first")
        return None
