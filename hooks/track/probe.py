"""``gpulens.probe_batch_sizes``: measure peak memory and step time at a few batch sizes.

A few real training steps run at each size (ascending); on CUDA the peak is
``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats``.  On the
CPU each size runs in a forked child (copy-on-write, so the model is shared):
the child's resident high-water mark (VmHWM) over its starting RSS is the
step's peak, measured from a clean slate -- in-process, glibc keeps freed
memory and moves its mmap threshold, which makes RSS readings depend on what
ran before.  That makes the batch-size model testable without a GPU.  The
child runs torch single-threaded (as DataLoader workers do after a fork), so
CPU step times are for comparing sizes, not absolute.  The points, the fit and the capacity are stored with the
active run, where the advisor's batch_headroom rule finds them.

The probe takes real optimizer steps when an optimizer is given (its state
then counts, as it will in training): call it before training starts, or
on a copy of the model.
"""
from __future__ import annotations

import gc
import logging
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from gpulens.profiler.analysis.batch_model import DEFAULT_MARGIN, BatchFit, fit

log = logging.getLogger("gpulens")


@dataclass
class ProbeResult:
    device: str
    capacity_bytes: float
    margin: float
    points: list[dict[str, float]] = field(default_factory=list)
    failed_at: int | None = None  # first batch size that ran out of memory
    fit: BatchFit | None = None

    @property
    def b_max(self) -> int | None:
        return self.fit.b_max(self.capacity_bytes, self.margin) if self.fit else None

    def as_meta(self) -> dict[str, Any]:
        return {"device": self.device, "capacity_bytes": self.capacity_bytes, "margin": self.margin,
                "points": self.points, "failed_at": self.failed_at,
                "fit": asdict(self.fit) if self.fit else None, "b_max": self.b_max}


def _trim_heap() -> None:
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _status_bytes(key: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(key):
                return int(line.split()[1]) * 1024
    return 0


def _probe_cpu_forked(torch: Any, run_steps: Callable[[], list[float]]) -> tuple[float, list[float]]:
    """Run the steps in a forked child; return (peak resident growth in bytes, step times)."""
    import json
    import os

    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: measure and leave without running any parent cleanup
        code = 0
        try:
            os.close(read_fd)
            torch.set_num_threads(1)  # OpenMP pools do not survive fork
            _trim_heap()  # freed-but-resident heap would be reused without showing in RSS
            with open("/proc/self/clear_refs", "w") as fh:
                fh.write("5")  # the high-water mark starts from here
            start = _status_bytes("VmRSS:")
            times = run_steps()
            payload = {"growth": _status_bytes("VmHWM:") - start, "times": times}
        except BaseException as exc:  # report, never raise in a forked child
            payload = {"error": f"{type(exc).__name__}: {exc}"}
            code = 1
        with os.fdopen(write_fd, "w") as fh:
            fh.write(json.dumps(payload))
        os._exit(code)
    os.close(write_fd)
    with os.fdopen(read_fd) as fh:
        raw = fh.read()
    os.waitpid(pid, 0)
    result: dict[str, Any] = json.loads(raw) if raw else {"error": "the probe process died (out of memory?)"}
    if "error" in result:
        error = str(result["error"])
        raise MemoryError(error) if "memory" in error.lower() else RuntimeError(error)
    return float(result["growth"]), list(result["times"])


def _is_oom(exc: BaseException) -> bool:
    text = str(exc).lower()
    return isinstance(exc, MemoryError) or "out of memory" in text or "can't allocate memory" in text


def probe_batch_sizes(model: Any, make_batch: Callable[[int], Any], sizes: Sequence[int],
                      optimizer: Any = None, loss_fn: Callable[[Any, Any], Any] | None = None, steps: int = 2,
                      capacity_bytes: float | None = None, margin: float = DEFAULT_MARGIN) -> ProbeResult:
    """Run ``steps`` training steps at each batch size and fit peak memory against batch size.

    Probe sizes near the range you would train at: at small batches fixed
    costs and allocator effects dominate and the per-sample slope is noise.

    ``make_batch(B)`` returns the inputs, or ``(inputs, target)``; the loss is
    ``loss_fn(model(inputs), target)`` or, without a loss function, the mean of
    the output.  ``capacity_bytes`` defaults to the GPU's memory on CUDA and is
    required on the CPU (the memory budget to plan for).
    """
    import torch

    try:
        device = next(model.parameters()).device
    except StopIteration:
        device = torch.device("cpu")
    cuda = device.type == "cuda"
    if cuda:
        capacity = float(capacity_bytes or torch.cuda.get_device_properties(device).total_memory)
    else:
        if capacity_bytes is None:
            raise ValueError("probe_batch_sizes on the CPU needs capacity_bytes (the memory budget)")
        if not sys.platform.startswith("linux"):
            raise RuntimeError("CPU memory probing needs Linux (fork and /proc/self/clear_refs)")
        capacity = float(capacity_bytes)
    result = ProbeResult("cuda" if cuda else "cpu", capacity, margin)
    for size in sorted(set(int(s) for s in sizes)):
        try:
            point = _probe_one(torch, model, make_batch, size, optimizer, loss_fn, steps, cuda, device)
        except Exception as exc:
            if _is_oom(exc):
                result.failed_at = size
                break
            raise
        finally:
            if optimizer is not None:
                optimizer.zero_grad(set_to_none=True)
            gc.collect()
            if cuda:
                torch.cuda.empty_cache()
        result.points.append(point)
    result.fit = fit(result.points)
    _store(result)
    return result


def _probe_one(torch: Any, model: Any, make_batch: Callable[[int], Any], size: int, optimizer: Any,
               loss_fn: Any, steps: int, cuda: bool, device: Any) -> dict[str, float]:
    batch = make_batch(size)
    inputs, target = batch if isinstance(batch, tuple) and len(batch) == 2 else (batch, None)
    if cuda:
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        times = _steps(torch, model, inputs, target, optimizer, loss_fn, steps, cuda, device)
        peak = float(torch.cuda.max_memory_allocated(device))
    else:
        gc.collect()
        base = float(_status_bytes("VmRSS:"))
        def one_probe() -> list[float]:
            return _steps(torch, model, inputs, target, optimizer, loss_fn, steps, cuda, device)

        growth, times = _probe_cpu_forked(torch, one_probe)
        peak = base + growth
    return {"batch": size, "peak_bytes": peak, "step_s": statistics.median(times[1:] or times)}


def _steps(torch: Any, model: Any, inputs: Any, target: Any, optimizer: Any, loss_fn: Any, steps: int,
           cuda: bool, device: Any) -> list[float]:
    times = []
    for _ in range(max(1, steps)):
        t0 = time.perf_counter()
        out = model(inputs)
        loss = loss_fn(out, target) if loss_fn is not None else out.float().mean()
        loss.backward()
        if optimizer is not None:
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        else:
            model.zero_grad(set_to_none=True)
        if cuda:
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - t0)
        del out, loss
    return times


def _store(result: ProbeResult) -> None:
    """Attach the probe to the active run (if any), where the advisor looks for it."""
    try:
        from gpulens.hooks.track import tracking

        run = tracking.active_run()
        if run is not None:
            run.set_meta(batch_probe=result.as_meta())
    except Exception as exc:
        log.info("gpulens: probe not stored with the run: %s", exc)


__all__ = ["probe_batch_sizes", "ProbeResult"]
