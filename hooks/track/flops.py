"""FLOPs of one training step, by dtype, with torch's FLOP formulas -- without touching the step.

Counting FLOPs means running ops through a Python dispatch mode.  Pushed over
a real step it would make a torch.compile'd model run eagerly for that step
(different kernels, different rounding: the weights would no longer be what
the user gets without gpulens).  So the real step is never counted: during
the chosen step the forward calls of the root modules (the model, a compile
or DDP wrapper, a GAN's two networks) are noted with their inputs turned into
meta tensors (shapes and dtypes, no data), and at the step's end a copy of
each module whose parameters and buffers are meta tensors runs forward and
backward under the counter.  Meta tensors compute nothing and allocate
nothing; every random generator is saved and restored around the copy; the
user's modules, graphs and compile caches are never entered.

A step whose work is not done by any module (a loop of bare tensor ops) is
counted in place with the dispatch mode, but only while nothing was ever
compiled: eager ops under a dispatch mode are the same ops.

Labels follow the dtype each op ran in: bf16/fp16 (also when autocast cast
it: the copy runs without autocast and its fp32 ops take the autocast dtype
the real forward ran under), fp32 matmuls as tf32 when TF32 is enabled for
them on CUDA, fp8, int8, fp64.
"""
from __future__ import annotations

import copy
import logging
import random
import sys
import threading
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from gpulens.hooks.track.hidden_hooks import ModuleHooks, gpulens_hook, tracing
from gpulens.hooks.track.modelinfo import live_root_modules

log = logging.getLogger("gpulens")

_CONV_OPS = ("convolution", "convolution_backward", "_convolution", "cudnn_convolution")
#: Root-module calls noted in one step at most (a loop calling a model more often is not counted).
MAX_CALLS = 64
#: Steps a counting waits for a module's forward before it gives up.
MAX_WAIT_STEPS = 3
SOURCE_COPY = "FlopCounterMode (meta copy)"
SOURCE_STEP = "FlopCounterMode"


def dtype_label(torch: Any, dtype: Any, op_name: str, on_cuda: bool = True) -> str:
    if dtype in (torch.bfloat16,):
        return "bf16"
    if dtype in (torch.float16,):
        return "fp16"
    if dtype == torch.float32:
        if not on_cuda:
            return "fp32"  # TF32 is a CUDA tensor-core mode
        if any(c in op_name for c in _CONV_OPS):
            return "tf32" if torch.backends.cudnn.allow_tf32 else "fp32"
        return "tf32" if torch.backends.cuda.matmul.allow_tf32 else "fp32"
    if dtype == torch.float64:
        return "fp64"
    if dtype in (torch.int8, torch.uint8):
        return "int8"
    if "float8" in str(dtype):
        return "fp8"
    return str(dtype).replace("torch.", "")


def make_counter(torch: Any, on_cuda: bool | None = None) -> Any:
    """A dispatch mode accumulating FLOPs per dtype label (torch >= 2.1).

    ``on_cuda`` says where the counted ops really run (meta tensors are on no
    device); ``None`` reads it off each op's first tensor.  Set ``autocast``
    to a label while a forward that ran under autocast is counted.
    """
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils.flop_counter import flop_registry

    class DtypeFlopCounter(TorchDispatchMode):
        def __init__(self) -> None:
            super().__init__()
            self.by_dtype: dict[str, float] = {}
            self.autocast: str | None = None

        def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
            kwargs = kwargs or {}
            out = func(*args, **kwargs)
            packet = func._overloadpacket
            formula = flop_registry.get(packet)
            if formula is not None:
                try:
                    flops = float(formula(*args, **kwargs, out_val=out))
                except Exception:
                    return out
                first = next((a for a in args if isinstance(a, torch.Tensor)), None)
                dtype = first.dtype if first is not None else None
                cuda = on_cuda if on_cuda is not None else bool(first is not None and first.is_cuda)
                label = dtype_label(torch, dtype, str(packet), cuda)
                if self.autocast is not None and dtype == torch.float32:
                    label = self.autocast  # every op with a FLOP formula is on autocast's lower-precision list
                self.by_dtype[label] = self.by_dtype.get(label, 0.0) + flops
            return out

    return DtypeFlopCounter()


@dataclass
class ModuleCall:
    """One forward call of a root module with gradients on: the module, its inputs as meta tensors, the autocast
    dtype it ran under."""

    module: Any  # a weak reference
    args: Any
    kwargs: Any
    autocast: str | None
    on_cuda: bool


@dataclass
class _Capture:
    step: int
    walked: bool = False  # the root modules were found by a gc walk in the step before (its time is in it)
    active: bool = False
    calls: list[ModuleCall] = field(default_factory=list)
    depth: int = 0
    overflow: bool = False
    waited: int = 0


class StepFlops:
    """Counts the FLOPs of step ``at`` (and again when the batch shape changes); never changes a step."""

    def __init__(self, torch: Any, emit: Callable[[int, float, dict[str, float], str], None], at: int = 5,
                 recount_every: int = 1000, roots: Callable[[], list[Any] | None] | None = None) -> None:
        self.torch = torch
        #: The root modules if someone already knows them (automatic step detection hooked them), else None:
        #: then a walk of the garbage collector's objects finds them, and that step is flagged too.
        self.roots = roots
        self.emit = emit
        self.at = at
        self.recount_every = recount_every
        self._capture: _Capture | None = None
        self._hooks: ModuleHooks | None = None
        self._mode: Any = None  # the in-place counter of a step without modules
        self._step = -1
        self._thread: int | None = None
        self._last_count = -10**9
        self._last_shape: Any = None
        self._in_place = False
        self.disabled = False

    def want(self, step: int, shape: Any) -> bool:
        """Should :meth:`begin` run as ``step`` opens (the step before the counted one, whose hooks go on)?"""
        if self.disabled or step < self.at - 1:
            return False
        if self._capture is not None:
            return False
        if self._last_shape is None:
            return True
        return shape != self._last_shape and step - self._last_count >= self.recount_every

    @property
    def counting(self) -> bool:
        return self._capture is not None or self._mode is not None

    # ------------------------------------------------------------------ step opens
    def begin(self, step: int, shape: Any) -> None:
        """Step ``step`` opens: hook the root modules to note their calls in the next step (or count this
        one in place if no module does the work).

        The hooks go on one step early: a step boundary may be found inside
        the model's own pre-hook call (the next forward), after which torch
        calls only the hooks that were there when the call began.
        """
        try:
            walked = False
            if self._in_place:
                roots = usable = []  # the meta copy failed on an eager model: count a real step in place
            else:
                known = self.roots() if self.roots is not None else None
                if not known or not any(_has_parameters(m) for m in known):  # none known, or no model among them
                    known, walked = live_root_modules(self.torch), True
                roots = [m for m in known if _has_parameters(m)]
                usable = [m for m in roots if getattr(m, "_compiled_call_impl", None) is None]
            if not usable and step < self.at:
                return  # counted in place: from step ``at`` on
            self._step = step
            self._last_shape = shape
            self._thread = threading.get_ident()
            if usable:
                self._capture = _Capture(step + 1, walked=walked)
                self._hooks = ModuleHooks(self.torch)
                for module in usable:
                    self._hooks.forward(module, self._pre, self._post, with_kwargs=True)
            elif roots:
                self._fail_quietly("the model was compiled in place (model.compile()): its forward cannot be "
                                   "seen from outside the graph")
            elif _compiled_anything(self.torch):
                self._fail_quietly("the step's work is compiled code outside any module")
            else:  # bare tensor ops (or an eager model): the same ops under a dispatch mode
                self._mode = make_counter(self.torch)
                self._mode.__enter__()
        except Exception as exc:
            self._fail(exc)

    @gpulens_hook
    def _pre(self, module: Any, args: Any, kwargs: Any = None) -> None:
        # ``kwargs`` defaults: a hook removed while torch iterates the module's hooks (a step boundary found
        # in another pre-hook of the same call) is still called, without them
        cap = self._capture
        if cap is None or not cap.active or tracing(self.torch) or threading.get_ident() != self._thread:
            return None
        try:
            cap.depth += 1
            if cap.depth > 1 or not self.torch.is_grad_enabled():
                return None  # a root module inside another (counted with it), or evaluation
            if len(cap.calls) >= MAX_CALLS:
                cap.overflow = True
                return None
            to_meta = self._to_meta
            from torch.utils._pytree import tree_map

            meta_args, meta_kwargs = tree_map(to_meta, (args, kwargs))
            on_cuda = _on_cuda(self.torch, module, args)
            cap.calls.append(ModuleCall(weakref.ref(module), meta_args, meta_kwargs,
                                        _autocast_label(self.torch, "cuda" if on_cuda else "cpu"), on_cuda))
        except Exception as exc:
            self._fail(exc)
        return None

    @gpulens_hook
    def _post(self, module: Any, args: Any, output: Any) -> None:
        cap = self._capture
        if cap is not None and cap.active and not tracing(self.torch) and threading.get_ident() == self._thread:
            cap.depth = max(cap.depth - 1, 0)

    def _to_meta(self, obj: Any) -> Any:
        torch = self.torch
        if not isinstance(obj, torch.Tensor):
            return obj
        meta = torch.empty_like(obj, device="meta")
        if obj.requires_grad and (obj.is_floating_point() or obj.is_complex()):
            meta.requires_grad_(True)  # its gradient is computed in the real step too
        return meta

    # ------------------------------------------------------------------ step ends
    def end(self, step: int) -> bool:
        """Step ``step`` ends: count what it did.  True when something was counted (the step is then
        flagged: counting takes a moment, and that moment is in this step's time)."""
        mode, self._mode = self._mode, None
        if mode is not None:
            try:
                mode.__exit__(None, None, None)
            except Exception as exc:
                self._fail(exc)
                return True
            self._done(dict(mode.by_dtype), SOURCE_STEP)
            return True
        cap = self._capture
        if cap is None:
            return False
        if not cap.active:  # the hooks are on: note the next step's calls
            cap.active, cap.step = True, step + 1
            return cap.walked  # a gc walk took a moment of this step
        if not cap.calls:
            cap.waited += 1
            if cap.waited >= MAX_WAIT_STEPS:
                self._stop_capture()
                self._fail_quietly("no module's forward was seen in the counted steps")
            cap.step = step + 1
            return False  # keep watching the next step (a model built or first called late)
        self._stop_capture()
        if cap.overflow:
            self._fail_quietly(f"more than {MAX_CALLS} module calls in one step")
            return True
        try:
            by_dtype = count_calls(self.torch, cap.calls)
        except Exception as exc:
            if _compiled_anything(self.torch):
                self._fail(exc)
            else:  # data-dependent shapes (MoE routing, boolean masks) have no meta kernels: eager ops
                log.debug("gpulens: FLOPs of a meta copy failed (%s); counting the next step in place", exc)
                self._in_place = True  # under a dispatch mode are the same ops
                self._last_shape = None
            return True
        self._step = cap.step
        self._done(by_dtype, SOURCE_COPY)
        return True

    def abandon(self) -> None:
        """A step cut short (the run closes, a fork): its count is incomplete, drop it."""
        self.disabled = True
        self._stop_capture()
        mode, self._mode = self._mode, None
        if mode is not None:
            try:
                mode.__exit__(None, None, None)
            except Exception:
                pass

    def _stop_capture(self) -> None:
        self._capture = None
        hooks, self._hooks = self._hooks, None
        if hooks is not None:
            hooks.remove()

    def _done(self, by_dtype: dict[str, float], source: str) -> None:
        self._last_count = self._step
        self.emit(self._step, sum(by_dtype.values()), by_dtype, source)

    def _fail(self, exc: BaseException) -> None:
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        self._fail_quietly(f"{type(exc).__name__}: {text[:160]}")

    def _fail_quietly(self, reason: str) -> None:
        self.disabled = True
        self._stop_capture()
        self._mode = None
        log.warning("gpulens: FLOPs not counted (%s); MFU needs flops_per_step= (or --flops-per-step)", reason)


# ---------------------------------------------------------------------- the meta copy
def count_calls(torch: Any, calls: list[ModuleCall]) -> dict[str, float]:
    """FLOPs by dtype of ``calls`` run forward and backward on meta copies of their modules."""
    counter = make_counter(torch, on_cuda=calls[0].on_cuda)
    memo: dict[int, Any] = {}
    with _rng_untouched(torch), _global_hooks_set_aside(torch), _autocast_off(torch), counter:
        for call in calls:
            module = call.module()
            if module is None:
                continue
            shadow = meta_copy(torch, module, memo)
            counter.autocast = call.autocast
            with torch.enable_grad():
                out = shadow(*call.args, **call.kwargs)
                outputs = [t for t in _tensors(torch, out) if t.requires_grad and t.is_floating_point()]
                wrt = [p for p in shadow.parameters() if p.requires_grad]
                wrt += [t for t in _tensors(torch, (call.args, call.kwargs)) if t.requires_grad]
                if outputs and wrt:
                    total = outputs[0].sum()
                    for t in outputs[1:]:
                        total = total + t.sum()
                    torch.autograd.grad(total, wrt, allow_unused=True)
    return dict(counter.by_dtype)


def meta_copy(torch: Any, module: Any, memo: dict[int, Any]) -> Any:
    """``module`` with meta tensors for parameters and buffers, sharing nothing it could change.

    Wrappers that would communicate or compile (DDP, DataParallel, a
    torch.compile wrapper, a module compiled in place) are replaced by the
    modules they wrap; hooks are dropped except torch's own weight/spectral
    normalisation, which compute a weight the forward needs.
    """
    key = id(module)
    if key in memo:
        return memo[key]
    inner = _unwrapped(torch, module)
    if inner is not module:
        memo[key] = clone = meta_copy(torch, inner, memo)
        return clone
    if "FullyShardedDataParallel" in type(module).__name__ or type(module).__name__ == "FSDPModule":
        raise TypeError("an FSDP-sharded model (pass flops_per_step)")
    clone = copy.copy(module)  # a new __dict__; gpulens' own hooks are not copied (hidden_hooks)
    memo[key] = clone
    state = clone.__dict__
    state["_parameters"] = {name: _meta_tensor(torch, p, memo, parameter=True) for name, p in
                            module._parameters.items()}
    state["_buffers"] = {name: _meta_tensor(torch, b, memo) for name, b in module._buffers.items()}
    state["_modules"] = {name: (meta_copy(torch, child, memo) if child is not None else None)
                         for name, child in module._modules.items()}
    for name, value in list(state.items()):
        if isinstance(value, torch.Tensor) and not name.startswith("_"):
            state[name] = _meta_tensor(torch, value, memo)  # a tensor kept as a plain attribute
    for name in ("_forward_pre_hooks", "_forward_hooks", "_backward_hooks", "_backward_pre_hooks",
                 "_forward_pre_hooks_with_kwargs", "_forward_hooks_with_kwargs", "_forward_hooks_always_called"):
        if name in state:
            state[name] = type(state[name])()
    for handle, hook in module._forward_pre_hooks.items():
        if type(hook).__module__.startswith("torch.nn.utils"):  # weight_norm, spectral_norm
            state["_forward_pre_hooks"][handle] = hook
    if "_compiled_call_impl" in state:
        state["_compiled_call_impl"] = None
    if type(module).__name__ == "SyncBatchNorm":
        clone.training = False  # its training forward communicates; batch norm has no FLOP formula anyway
    return clone


def _unwrapped(torch: Any, module: Any) -> Any:
    name = type(module).__name__
    if name == "OptimizedModule" and isinstance(getattr(module, "_orig_mod", None), torch.nn.Module):
        return module._orig_mod
    if name in ("DistributedDataParallel", "DataParallel") and isinstance(getattr(module, "module", None),
                                                                          torch.nn.Module):
        return module.module
    return module


def _meta_tensor(torch: Any, tensor: Any, memo: dict[int, Any], parameter: bool = False) -> Any:
    if tensor is None:
        return None
    key = id(tensor)
    if key in memo:  # tied weights stay tied
        return memo[key]
    meta = torch.empty_like(tensor, device="meta")
    if parameter:
        meta = torch.nn.Parameter(meta, requires_grad=tensor.requires_grad)
    memo[key] = meta
    return meta


def _tensors(torch: Any, obj: Any) -> list[Any]:
    """The tensors in a forward's output: tuples, lists, dicts, dataclasses and HF ModelOutputs."""
    out: list[Any] = []
    stack, seen = [obj], 0
    while stack and seen < 10_000:
        seen += 1
        item = stack.pop()
        if isinstance(item, torch.Tensor):
            out.append(item)
        elif isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, (list, tuple)):
            stack.extend(item)
        elif hasattr(item, "__dataclass_fields__"):
            stack.extend(getattr(item, name, None) for name in item.__dataclass_fields__)
    return out


def _has_parameters(module: Any) -> bool:
    try:
        return next(module.parameters(), None) is not None
    except Exception:
        return False


def _on_cuda(torch: Any, module: Any, args: Any) -> bool:
    for item in _tensors(torch, args):
        return bool(item.is_cuda)
    param = next(module.parameters(), None)
    return bool(param is not None and param.is_cuda)


def _autocast_label(torch: Any, device: str) -> str | None:
    try:
        if not torch.is_autocast_enabled(device):
            return None
        dtype = torch.get_autocast_dtype(device)
    except Exception:  # torch < 2.4 asks per device
        if device != "cuda" or not torch.is_autocast_enabled():
            return None
        dtype = torch.get_autocast_gpu_dtype()
    return dtype_label(torch, dtype, "", device == "cuda")


def _compiled_anything(torch: Any) -> bool:
    """Did torch.compile produce a graph in this process?  (Unknown counts as yes.)"""
    if "torch._dynamo" not in sys.modules:
        return False
    try:
        from torch._dynamo.utils import counters

        return bool(counters["stats"].get("unique_graphs", 0))
    except Exception:
        return True


class _rng_untouched:
    """Every random generator a forward may draw from (Python's, numpy's, torch's CPU and CUDA) as it was."""

    def __init__(self, torch: Any) -> None:
        self.torch = torch

    def __enter__(self) -> None:
        torch = self.torch
        self._py = random.getstate()
        numpy = sys.modules.get("numpy")
        self._np = numpy.random.get_state() if numpy is not None else None
        self._cpu = torch.random.get_rng_state()
        cuda = getattr(torch, "cuda", None)
        self._cuda = cuda.get_rng_state_all() if cuda is not None and cuda.is_initialized() else None

    def __exit__(self, *exc: Any) -> None:
        torch = self.torch
        random.setstate(self._py)
        if self._np is not None:
            sys.modules["numpy"].random.set_state(self._np)
        torch.random.set_rng_state(self._cpu)
        if self._cuda is not None:
            torch.cuda.set_rng_state_all(self._cuda)


class _global_hooks_set_aside:
    """Hooks registered for every module (``register_module_forward_hook``) are the user's: not for the copy."""

    NAMES = ("_global_forward_pre_hooks", "_global_forward_hooks", "_global_forward_hooks_always_called",
             "_global_forward_hooks_with_kwargs", "_global_backward_hooks", "_global_backward_pre_hooks")

    def __init__(self, torch: Any) -> None:
        self.module = torch.nn.modules.module

    def __enter__(self) -> None:
        self._saved = []
        for name in self.NAMES:
            table = getattr(self.module, name, None)
            if isinstance(table, dict) and table:
                self._saved.append((table, list(table.items())))
                table.clear()

    def __exit__(self, *exc: Any) -> None:
        for table, items in self._saved:
            table.clear()
            table.update(items)


class _autocast_off:
    """The copy runs without autocast (meta tensors have no device to cast for); labels carry its dtype."""

    def __init__(self, torch: Any) -> None:
        self.torch = torch
        self._contexts: list[Any] = []

    def __enter__(self) -> None:
        torch = self.torch
        for device in ("cuda", "cpu") if torch.cuda.is_available() else ("cpu",):
            try:
                ctx = torch.autocast(device_type=device, enabled=False)
                ctx.__enter__()
                self._contexts.append(ctx)
            except Exception:
                pass

    def __exit__(self, *exc: Any) -> None:
        for ctx in reversed(self._contexts):
            ctx.__exit__(None, None, None)
