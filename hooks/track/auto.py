"""Steps and phases of an unmodified training loop (``gpulens run``).

No code change means no ``run.step()``: the step boundary has to be read off
what every PyTorch loop does anyway.  The signals, all through public hooks
or one thin wrapper each:

* ``optimizer.step`` -- torch's global optimizer pre/post hooks; a
  ``GradScaler.step`` counts too (it skips ``optimizer.step`` on inf/NaN
  gradients, and that iteration is still a step);
* ``loss.backward()`` -- ``torch.autograd.backward`` (Tensor.backward calls it);
* DataLoader fetches -- ``_BaseDataLoaderIter.__next__`` (single and
  multi-process loaders), on the training thread only;
* forward -- instance hooks on the *root* modules (modules that are nobody's
  child: the model, a DDP or torch.compile wrapper, a loss module), found by
  a scan of live modules when an optimizer is created and at the first
  backward; never global module hooks, which would cost every submodule
  call and reach into compiled code.

A step is one *update*: an optimizer step, or, in a loop without any
optimizer (manual SGD), a backward.  It ends at the start of the next
iteration after an update: the next DataLoader fetch when the step fetched
from one (so gradient accumulation folds its micro-batches into one step,
and a GAN's two optimizers into one iteration); otherwise the next forward of
the *anchor* (the first root module forwarded in training mode); and always
at a second step of an optimizer that already stepped in the open step
(LBFGS closures, a loop over one batch fetched once).
Evaluation (the anchor in eval mode or under no_grad, fetches under no_grad)
ends a pending step and is left out, as epoch gaps are.

Limits (README): a loop that steps one optimizer several times per
"iteration" without a DataLoader (WGAN critic loops) counts each optimizer
step of a repeat as a step boundary; forward time outside root modules (the
loss function as a plain function) counts as "other"; fetches from loaders
that are not torch DataLoaders are not data wait.
"""
from __future__ import annotations

import logging
import threading
import time
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from gpulens.hooks.track.hidden_hooks import ModuleHooks, compiling_check, gpulens_hook
from gpulens.hooks.track.modelinfo import live_root_modules
from gpulens.hooks.track.steps import BACKWARD, DATA, FORWARD, OPTIMIZER, infer_batch_size

if TYPE_CHECKING:
    from gpulens.hooks.track.tracking import TrackedRun

log = logging.getLogger("gpulens")

#: Root-module scan again at this update if no hooked model has run forward (models built late).
RESCAN_AT_UPDATE = 3
#: Root-module scans at most from ``model.train()`` / ``model.zero_grad()`` before a hooked forward ran.
LATE_SCANS = 4
#: Before any optimizer has stepped, a backward may be a manual-SGD update or one micro-batch of
#: gradient accumulation.  Its boundaries are held (cut points noted) until an optimizer steps --
#: they were micro-batches -- or this many pass without one: a loop without an optimizer.
TENTATIVE_MAX = 8


class AutoSteps:
    """Drives a :class:`TrackedRun`'s step recorder from torch's own hooks.

    ``boundaries=False`` records phases only (a framework callback decides
    where steps end).  Every hook body is wrapped: a failure stops automatic
    recording with one log line and never reaches the training loop.
    """

    def __init__(self, run: TrackedRun, torch: Any, boundaries: bool = True) -> None:
        self.run = run
        self._rec = run.step_recorder  # kept here: the hot path does no property lookups
        self.torch = torch
        self._compiling = compiling_check(torch)  # torch.compiler.is_compiling, looked up once
        self.boundaries = boundaries
        self.active = False
        self._handles: list[Any] = []
        self._undo: list[Callable[[], None]] = []
        self._module_hooks = ModuleHooks(torch)
        self._roots: set[int] = set()
        self._root_refs: list[weakref.ref] = []  # the hooked root modules, for FLOP counting (hooks/track/flops.py)
        self._anchor: int | None = None
        self._train_thread: int | None = threading.main_thread().ident
        self._opt_depth = 0
        self._fwd_depth = 0
        self._stepped: set[int] = set()  # optimizers stepped in the open step
        self._pending = False  # an update happened since the last boundary
        self._fetched = False  # a training fetch happened since the last boundary
        self._tentative_update = False  # the pending update is a backward in a loop not yet known
        self._held: list[tuple[Any, Any]] = []  # (snapshot, loss) of held boundaries
        self._no_optimizer = False  # decided: this loop updates without an optimizer
        self._idle = True  # between training iterations (start, epoch gaps, evaluation)
        self._iter: Any = None  # the DataLoader iterator fetched from last
        self._in_what_if = False  # inside a what-if's fetch, whose own loader's fetches are not the loop's
        self._what_if_fwd = False  # the outermost forward now running was handed to a what-if
        self._loss: Any = None  # the step's loss so far (see _add_loss)
        self._loss_unreadable = False
        self._fwd_seen = False  # a hooked root module ran forward
        self._fwd_in_step = False  # ... in the open step
        self._late_scans = 0
        self._model_call_depth = 0
        self.saw_optimizer = False
        self._described: dict[int, dict[str, Any]] = {}  # optimizers seen, for the run's metadata
        self.saw_backward = False
        self.saw_loader = False
        self.updates = 0

    # ------------------------------------------------------------------ install / remove
    def install(self) -> None:
        torch = self.torch
        from torch.optim.optimizer import register_optimizer_step_post_hook, register_optimizer_step_pre_hook

        self._handles.append(register_optimizer_step_pre_hook(self._opt_pre))
        self._handles.append(register_optimizer_step_post_hook(self._opt_post))
        self._wrap(torch.autograd, "backward", self._wrap_backward)
        from torch.utils.data.dataloader import _BaseDataLoaderIter

        self._wrap(_BaseDataLoaderIter, "__next__", self._wrap_next)
        self._wrap(torch.optim.Optimizer, "__init__", self._wrap_optimizer_init)
        for name in ("train", "zero_grad"):  # called on the model before its first forward in most loops
            self._wrap(torch.nn.Module, name, self._wrap_model_call)
        if callable(getattr(torch, "compile", None)):  # its wrapper is a new root, created after the scans
            self._wrap(torch, "compile", self._wrap_compile)
        scaler = getattr(getattr(torch, "amp", None), "GradScaler", None)
        if scaler is not None and hasattr(scaler, "step"):
            self._wrap(scaler, "step", self._wrap_scaler_step)
        self.active = True
        self._scan_roots()  # models that exist already (track(auto=True) after building them)

    def phases_only(self) -> None:
        """A framework callback marks the steps; keep timing backward, optimizer, fetches and forward."""
        self.boundaries = False
        self._idle = False

    def uninstall(self) -> None:
        """Remove every hook and wrapper (a manual ``run.step()`` took over, or the run closed)."""
        self.active = False
        for handle in self._handles:
            try:
                handle.remove()
            except Exception:
                pass
        self._handles = []
        self._module_hooks.remove()
        for undo in reversed(self._undo):
            try:
                undo()
            except Exception:
                pass
        self._undo = []

    def _wrap(self, owner: Any, name: str, make: Callable[[Any], Any]) -> None:
        original = owner.__dict__[name] if isinstance(owner, type) else getattr(owner, name)
        wrapped = make(original)
        wrapped.__wrapped__ = original
        wrapped.__name__ = getattr(original, "__name__", name)
        wrapped.__doc__ = getattr(original, "__doc__", None)
        setattr(owner, name, wrapped)

        def undo() -> None:
            if getattr(owner, name, None) is wrapped:
                setattr(owner, name, original)

        self._undo.append(undo)

    def _failed(self, exc: BaseException) -> None:
        log.warning("gpulens: automatic step detection failed (%s: %s); recording goes on without steps",
                    type(exc).__name__, exc)
        self.uninstall()

    # ------------------------------------------------------------------ phases
    # Every hook runs several times per step, so each opens its phase itself (``if self._idle:
    # self._wake()`` then ``self._rec.enter(slot)``) and closes it with ``self._rec.exit()``: one
    # Python call per transition, not three (bench/hook_cost.py).
    def _wake(self) -> None:
        """A training iteration begins after idle time (start, an epoch gap, evaluation)."""
        self._idle = False
        self._rec.break_step()  # the step opens here, not where the last one ended

    def _boundary(self) -> None:
        """End the open step here (an update happened) and start the next one."""
        self._loss_unreadable = False
        if self._pending and not self._idle:
            loss, self._loss = self._loss, None
            if self._tentative_update and not self._no_optimizer:
                self._held.append((self._rec.snapshot(), loss))
                self._tentative_update = False  # held now
                if len(self._held) >= TENTATIVE_MAX:
                    self._release_held()
            else:
                self._rec.drop_phases()  # a phase left open by an exception must not leak into the next step
                self.run.auto_step(loss)
        self._pending = False
        self._tentative_update = False
        self._fetched = False
        self._fwd_in_step = False
        self._stepped.clear()

    def _release_held(self) -> None:
        """No optimizer came: every held backward boundary was a step of a manual-update loop."""
        self._no_optimizer = True
        held, self._held = self._held, []
        prev_acc: list[float] | None = None
        prev_extra: dict[str, float] = {}
        prev_samples = 0
        for (t, acc, extra, samples), loss in held:
            # snapshots count from the held steps' common start: cut them into consecutive parts
            part_acc = acc if prev_acc is None else [a - b for a, b in zip(acc, prev_acc)]
            part_extra = {k: v - prev_extra.get(k, 0.0) for k, v in extra.items() if v - prev_extra.get(k, 0.0) > 0}
            part_samples = (samples - prev_samples) or None if samples is not None else None
            self._rec.emit_until((t, part_acc, part_extra, part_samples), loss)
            prev_acc, prev_extra, prev_samples = acc, extra, samples or 0
        self.updates += len(held)
        if self._tentative_update:
            self._tentative_update = False
            self.updates += 1

    def _go_idle(self) -> None:
        """Evaluation or an epoch gap: close a pending step, leave the rest out."""
        if self._held or self._tentative_update:
            self._release_held()
        self._boundary()
        if not self._idle:
            self._idle = True
            self._rec.drop_phases()
            self._rec.break_step()

    # ------------------------------------------------------------------ optimizer
    def _opt_pre(self, optimizer: Any, args: Any, kwargs: Any) -> None:
        if not self.active:
            return
        try:
            self._opt_depth += 1
            if self._opt_depth > 1:
                return
            if not self.saw_optimizer:
                # the backwards before it were micro-batches of this step, their losses part of its loss
                losses = [loss for _, loss in self._held if loss is not None]
                self._held.clear()
                if losses and not self._loss_unreadable:
                    try:
                        self._loss = sum(losses[1:], losses[0]) + self._loss if self._loss is not None \
                            else sum(losses[1:], losses[0])
                    except Exception:
                        self._loss, self._loss_unreadable = None, True
                self._pending = self._tentative_update = False
            self.saw_optimizer = True
            key = id(optimizer)
            if key not in self._described and len(self._described) < 4:
                self._describe(optimizer)
            if self.boundaries and self._pending and key in self._stepped:
                self._boundary()  # the same optimizer again, nothing else between: a new iteration (LBFGS)
            self._stepped.add(key)
            if self._idle:
                self._wake()
            self._rec.enter(OPTIMIZER)
        except Exception as exc:
            self._failed(exc)

    def _describe(self, optimizer: Any) -> None:
        """Which optimizer, on which device, with which implementation (once per optimizer)."""
        from gpulens.hooks.track.modelinfo import optimizer_meta

        self._described[id(optimizer)] = optimizer_meta(optimizer)
        self.run.set_meta(optimizers=list(self._described.values()))

    def _opt_post(self, optimizer: Any, args: Any, kwargs: Any) -> None:
        if not self.active:
            return
        try:
            self._opt_depth = max(self._opt_depth - 1, 0)
            if self._opt_depth:
                return
            self._rec.exit()
            self._updated()
        except Exception as exc:
            self._failed(exc)

    def _updated(self) -> None:
        self._pending = True
        self.updates += 1
        if self.updates == RESCAN_AT_UPDATE and not self._fwd_seen:
            self._scan_roots()

    def _wrap_optimizer_init(self, original: Any) -> Any:
        auto = self

        def __init__(optimizer: Any, *args: Any, **kwargs: Any) -> None:
            original(optimizer, *args, **kwargs)
            if auto.active:  # models exist before their optimizers: hook them before the first forward
                try:
                    auto._scan_roots()
                except Exception as exc:
                    auto._failed(exc)

        return __init__

    def _wrap_model_call(self, original: Any) -> Any:
        """``model.train()`` / ``model.zero_grad()``: hook the models before their first forward.

        Loops without an optimizer (manual SGD) would otherwise be hooked only
        at their first backward, and step 0's forward go unmeasured.  Costs a
        flag test once a hooked forward ran; ``train()`` recurses into every
        submodule, so only the outermost call scans.
        """
        auto = self

        def method(module: Any, *args: Any, **kwargs: Any) -> Any:
            if auto._fwd_seen or not auto.active or auto._late_scans >= LATE_SCANS:
                return original(module, *args, **kwargs)
            auto._model_call_depth += 1
            try:
                return original(module, *args, **kwargs)
            finally:
                auto._model_call_depth -= 1
                if auto._model_call_depth == 0 and id(module) not in auto._roots:
                    auto._late_scans += 1
                    try:
                        auto._scan_roots()
                    except Exception as exc:
                        auto._failed(exc)

        return method

    def _wrap_compile(self, original: Any) -> Any:
        """``torch.compile(model)``: hook the wrapper it returns (hooks inside the graph are traced away)."""
        auto = self

        def compile(*args: Any, **kwargs: Any) -> Any:
            result = original(*args, **kwargs)
            if auto.active and not auto._fwd_seen and isinstance(result, auto.torch.nn.Module):
                try:
                    auto._scan_roots()
                except Exception as exc:
                    auto._failed(exc)
            return result

        return compile

    def _wrap_scaler_step(self, original: Any) -> Any:
        auto = self

        def step(scaler: Any, optimizer: Any, *args: Any, **kwargs: Any) -> Any:
            auto._unscale_loss(scaler)
            auto._opt_pre(optimizer, args, kwargs)  # nested optimizer hooks see depth > 1
            try:
                return original(scaler, optimizer, *args, **kwargs)
            finally:
                auto._opt_post(optimizer, args, kwargs)

        return step

    def _unscale_loss(self, scaler: Any) -> None:
        """An enabled GradScaler's backward saw ``loss * scale``: divide it back (on the device, no sync).

        The scale is read before ``scaler.update()`` changes it in place.  A
        disabled scaler (``GradScaler(enabled=False)``, bf16 and CPU recipes)
        passes the loss through unscaled.
        """
        if not self.active or self._loss is None:
            return
        try:
            if scaler.is_enabled():
                scale = getattr(scaler, "_scale", None)
                self._loss = self._loss / scale if scale is not None else None
        except Exception:
            self._loss = None  # a loss we cannot read is left out, never a wrong one

    # ------------------------------------------------------------------ backward
    def _wrap_backward(self, original: Any) -> Any:
        auto = self

        def backward(tensors: Any, *args: Any, **kwargs: Any) -> Any:
            if not auto.active:
                return original(tensors, *args, **kwargs)
            auto._backward_begin(tensors)
            try:
                return original(tensors, *args, **kwargs)
            finally:
                auto._backward_end()

        return backward

    def _backward_begin(self, tensors: Any) -> None:
        try:
            if not self._fwd_in_step and not self._idle:
                # no hooked forward in this step (a model hooked only now, a compiled or functional model):
                # the time since the last phase was the forward
                self._rec.charge_to(FORWARD)
            if not self.saw_backward:
                self.saw_backward = True
                self._train_thread = threading.get_ident()
                if not self._fwd_seen:  # no hooked model ran forward yet: look for it (a gc walk, ~0.1 s)
                    self._scan_roots()
            if self._idle:
                self._wake()
            self._rec.enter(BACKWARD)
            if getattr(tensors, "ndim", None) == 0:
                self._add_loss(tensors)
        except Exception as exc:
            self._failed(exc)

    def take_loss(self) -> Any:
        """The loss summed since the last boundary, and start again (a framework callback ends the step:
        the HF Trainer's step end carries no loss, and what went into backward is the one it logs)."""
        loss, self._loss = self._loss, None
        self._loss_unreadable = False
        return loss

    def _add_loss(self, tensor: Any) -> None:
        """What goes into ``backward()``, summed over the step's backward calls: with gradient accumulation
        (``(loss / k).backward()`` per micro-batch) that is the mean micro-batch loss, which HF Trainer,
        accelerate and Lightning log; the last micro-batch alone would be k times too small.  On the device,
        no sync; a sum that cannot be made (tensors on two devices) leaves the step's loss out.  Backward
        calls inside ``optimizer.step(closure)`` are one loss evaluated again, not micro-batches."""
        loss = tensor.detach()
        if self._loss is None:
            if not self._loss_unreadable:
                self._loss = loss
            return
        if self._opt_depth > 0:  # a closure evaluated again (LBFGS): the step's loss is its first, as
            return  # optimizer.step(closure) returns it
        try:
            self._loss = self._loss + loss
        except Exception:
            self._loss, self._loss_unreadable = None, True

    def _backward_end(self) -> None:
        try:
            self._rec.exit()
            if not self.saw_optimizer and self._opt_depth == 0:
                # no optimizer in this loop (so far): the backward may be the update
                if self._no_optimizer:
                    self._updated()
                else:
                    self._pending = self._tentative_update = True
        except Exception as exc:
            self._failed(exc)

    # ------------------------------------------------------------------ DataLoader
    def _wrap_next(self, original: Any) -> Any:
        auto = self

        def __next__(it: Any) -> Any:
            if not auto.active or auto._in_what_if or threading.get_ident() != auto._train_thread:
                return original(it)  # (a what-if's own temporary loader: not a fetch of the loop's)
            training = auto._fetch_begin(it)
            try:
                if training and auto.run.has_what_if:
                    auto._in_what_if = True
                    try:
                        batch = auto.run.fetch_batch(lambda: original(it), it)
                    finally:
                        auto._in_what_if = False
                else:
                    batch = original(it)
            except StopIteration:
                auto._fetch_end(None, stopped=True, training=training)
                raise
            except BaseException:
                auto._fetch_end(None, stopped=False, training=training)
                raise
            auto._fetch_end(batch, stopped=False, training=training)
            return batch

        return __next__

    def _fetch_begin(self, it: Any) -> bool:
        try:
            if not self.torch.is_grad_enabled():
                if self.boundaries:
                    self._go_idle()
                return False
            self.saw_loader = True
            new_epoch = it is not self._iter
            self._iter = it
            if self.boundaries:
                if self._pending:
                    self._boundary()
                elif new_epoch:
                    self._go_idle()  # what came before the epoch's first fetch belongs to no step
            self._fetched = True
            if self._idle:
                self._wake()
            self._rec.enter(DATA)
            return True
        except Exception as exc:
            self._failed(exc)
            return False

    def _fetch_end(self, batch: Any, stopped: bool, training: bool) -> None:
        if not training:
            return
        try:
            self._rec.exit()
            if stopped:
                if self.boundaries:
                    self._go_idle()
                return
            n = infer_batch_size(batch)
            if n is not None:
                self._rec.add_samples(n)
        except Exception as exc:
            self._failed(exc)

    # ------------------------------------------------------------------ forward of root modules
    def _scan_roots(self) -> None:
        """Hook the forward of every live root module (once per module)."""
        t0 = time.perf_counter()
        roots = live_root_modules(self.torch)
        added = 0
        for module in roots:
            key = id(module)
            if key in self._roots:
                continue
            self._roots.add(key)
            self._root_refs.append(weakref.ref(module))
            self._module_hooks.forward(module, self._fwd_pre, self._fwd_post, with_kwargs=True)
            self.run.attach_comm(self.torch, module)
            added += 1
        log.debug("gpulens: %d root modules hooked (%d roots found in %.0f ms)", added, len(roots),
                  (time.perf_counter() - t0) * 1e3)

    @gpulens_hook
    def _fwd_pre(self, module: Any, args: Any, kwargs: Any = None) -> Any:
        if self._compiling() or not self.active or threading.get_ident() != self._train_thread:
            return
        try:
            self._fwd_seen = True
            self._fwd_depth += 1
            if self._fwd_depth > 1:
                return  # a root module called inside another (a loss module inside a wrapper)
            key = id(module)
            training = module.training and self.torch.is_grad_enabled()
            if self.boundaries:
                if self._anchor is None and training and (self._idle or self._pending):
                    self._anchor = key  # the first model forwarded as an iteration begins
                if key == self._anchor:
                    if not training:
                        self._go_idle()  # the model evaluated
                        return
                    if self._pending and not self._fetched:
                        self._boundary()  # loops that fetch end their steps at the fetch
            if self._idle and not training:
                return  # a stray no-grad forward between iterations belongs to no step
            self._fwd_in_step = True
            if self._idle:
                self._wake()
            self._rec.enter(FORWARD)
            if training and self.run.has_what_if:
                self._what_if_fwd = True
                return self.run.what_if_forward_pre(module, args, kwargs)  # new (args, kwargs), or None
        except Exception as exc:
            self._failed(exc)
        return None

    @gpulens_hook
    def _fwd_post(self, module: Any, args: Any, output: Any) -> Any:
        if self._compiling() or not self.active or threading.get_ident() != self._train_thread:
            return None
        try:
            self._fwd_depth = max(self._fwd_depth - 1, 0)
            if self._fwd_depth == 0 and self._rec.in_phase(FORWARD):
                self._rec.exit()
            if self._fwd_depth == 0 and self._what_if_fwd:
                self._what_if_fwd = False
                return self.run.what_if_forward_post(output)  # an autocast stretch: outputs in their dtype
        except Exception as exc:
            self._failed(exc)
        return None

    # ------------------------------------------------------------------ end of the run
    def finish(self) -> None:
        """At close: the last iteration's update ends its step (no further fetch or forward comes)."""
        try:
            if self.active and self.boundaries:
                if self._held or self._tentative_update:
                    self._release_held()
                self._boundary()
        except Exception as exc:
            log.debug("gpulens: could not close the last automatic step: %s", exc)
        self.uninstall()

    def root_modules(self) -> list[Any]:
        """The live root modules this detector hooked (no gc walk: they were found when hooked)."""
        return [m for m in (ref() for ref in self._root_refs) if m is not None]

    def describe(self) -> dict[str, Any]:
        """What the detector saw, stored with the run (``auto`` in its metadata)."""
        if self.saw_loader:
            boundary = "dataloader"
        elif self._anchor is not None:
            boundary = "forward"
        elif self.saw_optimizer or self.saw_backward:
            boundary = "optimizer"
        else:
            boundary = None
        return {"mode": "steps" if self.updates else "time-only",
                "boundary": boundary if self.boundaries else "callback",
                "optimizer": self.saw_optimizer, "backward": self.saw_backward, "dataloader": self.saw_loader,
                "root_modules": len(self._roots), "updates": self.updates}
