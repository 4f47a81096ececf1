"""FLOPs of one real training step, by dtype, with torch's FLOP formulas.

A dispatch mode is pushed for the whole of one step (forward, backward,
optimizer) and every op that ``torch.utils.flop_counter`` knows a formula for
is counted under the dtype it ran in: bf16/fp16 inputs, fp32 matmuls as tf32
when TF32 is enabled for them, fp8, int8, fp64.  One step in dispatch-mode is
slower (and a torch.compile'd model runs it eagerly); the step is flagged as
profiled so throughput figures leave it out.
"""
from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

log = logging.getLogger("gpulens")

_CONV_OPS = ("convolution", "convolution_backward", "_convolution", "cudnn_convolution")


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


def make_counter(torch: Any) -> Any:
    """A dispatch mode accumulating FLOPs per dtype label (torch >= 2.1)."""
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils.flop_counter import flop_registry

    class DtypeFlopCounter(TorchDispatchMode):
        def __init__(self) -> None:
            super().__init__()
            self.by_dtype: dict[str, float] = {}

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
                on_cuda = bool(first is not None and first.is_cuda)
                label = dtype_label(torch, dtype, str(packet), on_cuda)
                self.by_dtype[label] = self.by_dtype.get(label, 0.0) + flops
            return out

    return DtypeFlopCounter()


class StepFlops:
    """Counts the FLOPs of step ``at`` (and again when the batch shape changes)."""

    def __init__(self, torch: Any, emit: Callable[[int, float, dict[str, float], str], None], at: int = 5,
                 recount_every: int = 1000) -> None:
        self.torch = torch
        self.emit = emit
        self.at = at
        self.recount_every = recount_every
        self._mode: Any = None
        self._step = -1
        self._last_count = -10**9
        self._last_shape: Any = None
        self.disabled = False

    def want(self, step: int, shape: Any) -> bool:
        if self.disabled or step < self.at:
            return False
        if self._last_shape is None:
            return True
        return shape != self._last_shape and step - self._last_count >= self.recount_every

    def begin(self, step: int, shape: Any) -> None:
        try:
            self._mode = make_counter(self.torch)
            self._mode.__enter__()
            self._step = step
            self._last_shape = shape
        except Exception as exc:
            self._fail(exc)

    @property
    def counting(self) -> bool:
        return self._mode is not None

    def end(self) -> None:
        mode, self._mode = self._mode, None
        if mode is None:
            return
        try:
            mode.__exit__(None, None, None)
        except Exception as exc:
            self._fail(exc)
            return
        self._last_count = self._step
        total = sum(mode.by_dtype.values())
        self.emit(self._step, total, dict(mode.by_dtype), "FlopCounterMode")

    def _fail(self, exc: BaseException) -> None:
        self._mode = None
        self.disabled = True
        log.warning("gpulens: FLOP counting failed (%s: %s); MFU will not be available", type(exc).__name__, exc)
