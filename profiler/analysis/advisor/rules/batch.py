"""Batch size and memory: headroom, learning-rate scaling, memory limit, fragmentation, accumulation."""
from __future__ import annotations

from gpulens import fmt
from gpulens.profiler.analysis.advisor.measure import Measurements
from gpulens.profiler.analysis.advisor.model import Evidence, NotEvaluated, Prediction, Suggestion
from gpulens.profiler.analysis.advisor.predict_batch import predict_batch
from gpulens.profiler.analysis.advisor.rules._shared import busy_fraction, busy_words, predicted_gain
from gpulens.profiler.analysis.batch_model import BatchFit, fit, lr_scaling, round_batch


def _capacity(m: Measurements) -> float | None:
    if m.probes and m.probe_capacity_bytes:
        return float(m.probe_capacity_bytes)
    return float(m.gpu_memory_total_bytes) if m.device == "cuda" and m.gpu_memory_total_bytes else None


def _peak(m: Measurements) -> float | None:
    return m.peak_allocated_bytes if m.peak_allocated_bytes else m.gpu_mem_used_max_bytes


def memory_fit(m: Measurements) -> tuple[BatchFit | None, str]:
    """A memory model from peaks measured at two or more batch sizes (a probe).

    One recorded batch size is not enough: workspaces, allocator blocks and
    compiled graphs would be charged to the activations and B_max would be a
    guess -- the rule says which measurement it needs instead.
    """
    if len({p["batch"] for p in m.probes}) >= 2:
        return fit(m.probes), f"probe at batch sizes {sorted({int(p['batch']) for p in m.probes})}"
    return None, ""


def batch_headroom(m: Measurements) -> Suggestion | NotEvaluated | None:
    capacity = _capacity(m)
    if capacity is None:
        return None
    model, source = memory_fit(m)
    if model is None:
        return NotEvaluated("batch_headroom",
                            "needs peak memory at two or more batch sizes: call gpulens.probe_batch_sizes("
                            "model, make_batch, sizes=[...]) inside track(), or pass model= and optimizer= to track()")
    current = int(m.batch_size or (model.batches[0] if model.batches else 0))
    if current <= 0:
        return None
    peak_now = model.peak(current)  # how near the limit it is does not matter: how far the batch can grow does
    # (weights and libraries at 85 % of the memory, activations at 2 %: the batch can still grow several-fold)
    # how busy the SMs are: GPM when the GPU has it (NVML "a kernel ran" over-reports, profiled windows
    # under-report because of the profiler's own overhead)
    busy = m.sm_active_pct / 100.0 if m.sm_active_pct is not None else busy_fraction(m)
    if m.device == "cuda" and busy >= 0.8 and (m.mfu_pct is None or m.mfu_pct >= 30):
        return None  # the GPU is busy: a bigger batch would not buy much
    if m.phase_share.get("data_wait", 0.0) > 0.25:
        return None  # waiting for data: a bigger batch only waits longer (dataloader_bound says so)
    b_max = model.b_max(capacity)
    suggested = round_batch(b_max)
    if suggested < current * 1.25:
        return None
    sps_now, sps_new = model.samples_per_s(current), model.samples_per_s(suggested)
    gain = (1 - sps_now / sps_new) if sps_now and sps_new and sps_new > sps_now else None
    kind = "GPU memory" if m.device == "cuda" else "memory budget"
    k = suggested / current
    finding = (f"batch {current} peaks at {fmt.gib(peak_now)} of {fmt.gib(capacity)} {kind} "
               f"({fmt.share(peak_now / capacity, 0)}); "
               f"fit from {source}: {fmt.gib(model.m_static)} fixed + "
               f"{(model.m_act or 0.0) / 2**20:.1f} MiB per sample, "
               f"so the largest batch that fits with a 5% margin is {b_max}")
    if m.device == "cuda":
        finding += ("; " + (f"GPM SM activity {fmt.percent(m.sm_active_pct, 0)}" if m.sm_active_pct is not None else
                            busy_words(m)) + (f", MFU {m.mfu_pct:.0f}%" if m.mfu_pct else ""))
    expected = (f"{sps_new / sps_now:.2f}x samples/s at batch {suggested} (step time fitted against batch size)"
                if gain is not None and sps_new and sps_now
                else "higher throughput; not estimated without step times at 2+ batch sizes")
    prediction = batch_prediction(m, model, current, suggested)
    if prediction is not None:
        expected = predicted_gain(prediction, expected)
    w = m.what_if
    if w is not None and w.kind == "batch-size" and w.samples_per_s_change is not None:
        finding += (f"; measured (--what-if batch-size={w.batch_size}, steps {w.first_step}-{w.last_step}): "
                    f"{w.samples_per_s_change + 1:.2f}x samples/s of compute at batch {w.batch_size}")
        expected += f"; measured {w.samples_per_s_change + 1:.2f}x at batch {w.batch_size}"
    return Suggestion(
        id="batch_headroom", severity="medium", title=f"Memory allows a batch of about {suggested}",
        finding=finding,
        action=(f"Raise the batch size to {suggested} (x{k:.1f}) and scale the learning rate: "
                f"{lr_scaling(m.optimizer, k)}; validate convergence."),
        snippet=f"loader = DataLoader(dataset, batch_size={suggested}, ...)",
        expected_gain=expected,
        gain_estimate="peak(B) = M_static + B x m_act fitted by least squares; B_max = (C x 0.95 - M_static) / m_act",
        confidence="high" if len(model.batches) >= 2 and model.r2 > 0.95 else "low",
        evidence=[Evidence("metric", "memory", {"metric": "gpu.mem_used" if m.device == "cuda" else "proc.rss",
                                                "gpu": 0 if m.device == "cuda" else -1}),
                  Evidence("probe", "batch-size fit", {"m_static": model.m_static, "m_act": model.m_act,
                                                       "b_max": b_max, "batches": list(model.batches)})],
        gain_fraction=gain, change={"batch_size": suggested} if prediction is not None else None,
        prediction=prediction)


#: A batch change is proposed (``change``) when it is predicted to save at least this much time per sample.
WORTH_PROPOSING = 0.05


def batch_prediction(m: Measurements, model: BatchFit, current: int, suggested: int) -> Prediction | None:
    """The time per sample at the suggested batch, from the run's median step and the probe's step-time fit
    (:mod:`predict_batch`); None without both, or under a 5 % gain."""
    if m.step_s is None or model.t0 is None or model.t1 is None:
        return None
    wait = m.step_s * m.phase_share_median.get("data_wait", m.phase_share.get("data_wait", 0.0))
    p = predict_batch(m.step_s, wait, current, suggested, model.t0, model.t1)
    if p is None or p.gain < WORTH_PROPOSING:
        return None
    batches = ", ".join(str(b) for b in model.batches)
    basis = (f"model: step time {model.t0 * 1e3:.1f} ms + {model.t1 * 1e6:.0f} µs per sample, fitted on the probe "
             f"at batches {batches}, applied to the run's {fmt.ms(m.step_s)} step at batch {current}; its data "
             "wait grows with the batch")
    return Prediction(p.gain, min(p.low, p.gain), max(p.high, p.gain), basis, measure="time_per_sample")


def lr_scaling_rule(m: Measurements) -> Suggestion | None:
    head = batch_headroom(m)
    if not isinstance(head, Suggestion):
        return None
    current = int(m.batch_size or 1)
    model, _ = memory_fit(m)
    assert model is not None
    suggested = round_batch(model.b_max(_capacity(m) or 0))
    k = suggested / current
    return Suggestion(
        id="lr_scaling", severity="low", title="Scale the learning rate with the batch",
        finding=f"the batch would grow x{k:.1f} ({current} -> {suggested})",
        action=f"{lr_scaling(m.optimizer, k)}. Always validate convergence after a batch-size change.",
        expected_gain="keeps convergence per sample comparable", gain_estimate="not a speed gain",
        confidence="medium", evidence=[], gain_fraction=None)


def memory_limit(m: Measurements) -> Suggestion | None:
    capacity = _capacity(m)
    peak = _peak(m)
    if m.device != "cuda" or not capacity or not peak:
        return None
    used = peak / capacity
    if used <= 0.9:
        return None
    return Suggestion(
        id="memory_limit", severity="high" if used > 0.95 else "medium",
        title="The run is at the GPU's memory limit",
        finding=f"peak {fmt.gib(peak)} of {fmt.gib(capacity)} ({fmt.share(used, 0)})",
        action=("Make room before it OOMs: mixed precision (activations at half size), activation "
                "checkpointing (costs ~20-30% throughput), FSDP/ZeRO to shard weights and optimizer state "
                "across GPUs, 8-bit or Adafactor optimizers."),
        snippet="from torch.utils.checkpoint import checkpoint\nh = checkpoint(block, h, use_reentrant=False)",
        expected_gain="headroom, not speed", gain_estimate="not a speed gain", confidence="high",
        evidence=[Evidence("metric", "GPU memory used", {"metric": "gpu.mem_used", "gpu": 0})],
        gain_fraction=None)


def fragmentation(m: Measurements) -> Suggestion | None:
    if m.fragmentation is None or not m.peak_reserved_bytes or m.fragmentation <= 0.25 \
            or m.fragmentation * m.peak_reserved_bytes < 2 * 2**30:  # a few hundred MiB is not worth a setting
        return None
    return Suggestion(
        id="fragmentation", severity="low", title="The caching allocator holds memory it cannot use",
        finding=(f"up to {fmt.share(m.fragmentation, 0)} of reserved memory is not allocated (reserved peak "
                 f"{fmt.gib(m.peak_reserved_bytes)}, allocated peak {fmt.gib(m.peak_allocated_bytes)})"),
        action="Let the allocator grow segments instead of carving new ones; avoid periodic empty_cache().",
        snippet="PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True python train.py",
        expected_gain="memory headroom", gain_estimate="not a speed gain", confidence="medium",
        evidence=[Evidence("metric", "CUDA reserved vs allocated", {"steps": "mem_reserved"})], gain_fraction=None)


def grad_accumulation(m: Measurements) -> Suggestion | None:
    if not m.target_batch:
        return None
    capacity = _capacity(m)
    model, _ = memory_fit(m)
    if capacity is None or model is None:
        return None
    b_max = round_batch(model.b_max(capacity))
    world = max(1, m.world_size)
    if b_max <= 0 or m.target_batch <= b_max * world:
        return None
    steps = -(-int(m.target_batch) // (b_max * world))
    return Suggestion(
        id="grad_accumulation", severity="medium", title="Reach the target batch with gradient accumulation",
        finding=f"target global batch {int(m.target_batch)} > largest micro-batch {b_max} x {world} rank(s)",
        action=(f"Micro-batches of {b_max}, {steps} accumulation steps; under DDP skip the gradient all-reduce on "
                "all but the last micro-step with no_sync()."),
        snippet=(f"for i, (x, y) in enumerate(loader):\n"
                 f"    ctx = model.no_sync() if (i + 1) % {steps} else contextlib.nullcontext()\n"
                 f"    with ctx:\n        (loss_fn(model(x), y) / {steps}).backward()\n"
                 f"    if (i + 1) % {steps} == 0:\n        opt.step(); opt.zero_grad(set_to_none=True)"),
        expected_gain="the target batch without OOM", gain_estimate="not a speed gain", confidence="high",
        evidence=[], gain_fraction=None)
