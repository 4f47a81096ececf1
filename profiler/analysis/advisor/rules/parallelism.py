"""Parallelism: DataParallel, DDP backend, communication share, model size, idle GPUs, stragglers."""
from __future__ import annotations

import numpy as np

from gpulens import fmt
from gpulens.profiler.analysis.advisor.measure import Measurements, RankTiming
from gpulens.profiler.analysis.advisor.model import Evidence, NotEvaluated, Suggestion

STRAGGLER = 1.05  # ADVISOR-RULES [heur]: max / median per-rank compute time


def dataparallel(m: Measurements) -> Suggestion | None:
    if m.model_wrapper != "DataParallel" or m.n_visible_gpus <= 1:
        return None
    return Suggestion(
        id="dataparallel", severity="high", title="nn.DataParallel on several GPUs",
        finding=f"the model is wrapped in nn.DataParallel with {m.n_visible_gpus} GPUs visible",
        action=("Use DistributedDataParallel, one process per GPU (torchrun): DataParallel replicates the model "
                "every step from one Python thread and scatters through GPU 0."),
        snippet=("# torchrun --nproc_per_node=NUM_GPUS train.py\n"
                 "torch.distributed.init_process_group(\"nccl\")\n"
                 "model = torch.nn.parallel.DistributedDataParallel(model.cuda(local_rank), device_ids=[local_rank])"),
        expected_gain="typically large on 2+ GPUs", gain_estimate="not estimated", confidence="high",
        evidence=[], gain_fraction=0.3)


def ddp_backend(m: Measurements) -> Suggestion | None:
    if m.model_wrapper != "DistributedDataParallel" or m.device != "cuda" or not m.ddp_backend:
        return None
    if "nccl" in m.ddp_backend.lower():
        return None
    return Suggestion(
        id="ddp_backend", severity="high", title=f"DDP on CUDA over {m.ddp_backend}",
        finding=f"the process group backend is {m.ddp_backend} while the model trains on CUDA",
        action="Use NCCL for GPU collectives.", snippet="torch.distributed.init_process_group(\"nccl\")",
        expected_gain="faster gradient all-reduce", gain_estimate="not estimated", confidence="high",
        evidence=[], gain_fraction=0.2)


def comm_bound(m: Measurements) -> Suggestion | NotEvaluated | None:
    if m.world_size <= 1:
        return None
    if m.comm_share is None:
        return NotEvaluated("comm_bound", "needs a profiler window in a distributed run (communication time)")
    if m.comm_share <= 0.10:
        return None
    per_rank = ", ".join(f"rank {r.rank} {fmt.ms(r.comm_s)}" for r in m.ranks if r.comm_s is not None)
    return Suggestion(
        id="comm_bound", severity="high" if m.comm_share >= 0.3 else "medium",
        title="Gradient communication takes a large part of the step",
        finding=(f"{fmt.share(m.comm_share)} of profiled step time is in collectives ({per_rank} per step, "
                 f"{m.world_size} ranks{', ' + m.ddp_backend if m.ddp_backend else ''})"),
        action=("Communicate less often or less: gradient accumulation with no_sync() on the non-final micro-steps, "
                "a larger per-rank batch, DDP options gradient_as_bucket_view=True and static_graph=True, "
                "bucket_cap_mb tuning; across nodes, compression hooks (fp16/bf16, PowerSGD)."),
        snippet=("model = DDP(model, device_ids=[local_rank], gradient_as_bucket_view=True, static_graph=True)\n"
                 "from torch.distributed.algorithms.ddp_comm_hooks import default_hooks\n"
                 "model.register_comm_hook(None, default_hooks.bf16_compress_hook)  # multi-node"),
        expected_gain=f"up to {fmt.share(m.comm_share, 0)} of step time",
        gain_estimate="upper bound: the communication share of profiled steps", confidence="medium",
        evidence=[Evidence("window", "profiled steps", {"rank": w.rank, "index": w.index})
                  for w in m.windows[:2]],
        gain_fraction=m.comm_share)


def strategy(m: Measurements) -> Suggestion | None:
    if m.device != "cuda" or not m.params or not m.gpu_memory_total_bytes:
        return None
    need = 16 * m.params  # mixed-precision Adam: weights, grads, two moments, fp32 master copy
    if need <= 0.9 * m.gpu_memory_total_bytes:
        return None
    if m.model_wrapper == "FullyShardedDataParallel":
        return None
    return Suggestion(
        id="strategy", severity="high", title="The model's training state does not fit one GPU",
        finding=(f"{m.params / 1e6:.0f} M parameters need about {fmt.gib(need)} for mixed-precision Adam (16 bytes per "
                 f"parameter) against {fmt.gib(m.gpu_memory_total_bytes)} per GPU"),
        action="Shard weights, gradients and optimizer state: FSDP (or DeepSpeed ZeRO) across the node's GPUs.",
        snippet=("from torch.distributed.fsdp import fully_shard\n"
                 "for block in model.blocks: fully_shard(block)\nfully_shard(model)"),
        expected_gain="the model fits", gain_estimate="not a speed gain", confidence="medium",
        evidence=[], gain_fraction=None)


def idle_gpus(m: Measurements) -> Suggestion | None:
    utils = m.gpu_busy_pct_per_gpu
    if m.n_visible_gpus <= 1 or not utils or max(utils) < 50:
        return None
    idle = [i for i, u in enumerate(utils) if u < 5]
    if not idle or m.world_size >= m.n_visible_gpus:
        return None
    return Suggestion(
        id="idle_gpus", severity="high", title=f"{len(idle)} of {m.n_visible_gpus} visible GPUs do nothing",
        finding=(f"GPU {', '.join(map(str, idle))} stayed under 5% busy while GPU {int(np.argmax(utils))} was "
                 f"{max(utils):.0f}% busy ({m.world_size} training process(es))"),
        action=f"Train data-parallel on all of them: torchrun --nproc_per_node={m.n_visible_gpus} with DDP.",
        snippet=f"torchrun --nproc_per_node={m.n_visible_gpus} train.py  # and wrap the model in DDP",
        expected_gain=f"up to {m.n_visible_gpus}x throughput", gain_estimate="linear scaling upper bound",
        confidence="high", evidence=[Evidence("metric", "GPU busy per GPU", {"metric": "gpu.util"})],
        gain_fraction=0.5)


def _own(r: RankTiming, phase: str) -> float:
    """A rank's own time in ``phase``: backward without the time its gradient all-reduce took (waiting for the
    slowest rank happens there), the other phases as measured."""
    value = r.phases_s.get(phase, 0.0)
    return max(value - (r.comm_s or 0.0), 0.0) if phase == "backward" else value


def _own_phases(ranks: list[RankTiming]) -> tuple[str, ...]:
    """Where a straggler's extra time can be told: backward too when every rank's all-reduce was timed."""
    if all(r.comm_s is not None for r in ranks):
        return ("data_wait", "forward", "backward", "optimizer")
    return ("data_wait", "forward", "optimizer")


def straggler(m: Measurements) -> Suggestion | None:
    ranks = [r for r in m.ranks if r.step_s]
    if len(ranks) < 2:
        return None

    def work(r: RankTiming) -> float:
        # time not spent waiting in collectives: from profiler windows when present, else the host phases
        # before the gradient all-reduce (data wait + forward) and after it (optimizer)
        if r.compute_s is not None:
            return r.compute_s
        p = r.phases_s
        return p.get("data_wait", 0.0) + p.get("forward", 0.0) + p.get("optimizer", 0.0)

    values = np.asarray([work(r) for r in ranks])
    if values.max() <= 0:
        return None
    median = float(np.median(values))
    worst = int(np.argmax(values))
    ratio = float(values[worst] / median) if median > 0 else 0.0
    if ratio <= STRAGGLER:
        return None
    slow = ranks[worst]
    detail = ", ".join(f"rank {r.rank} {fmt.ms(v)}" for r, v in zip(ranks, values))
    many_nodes = len({r.node_rank for r in ranks}) > 1
    where = f" on node {slow.node_rank} ({slow.hostname or '?'})" if many_nodes else ""
    node_mates = [r for r in ranks if r.node_rank == slow.node_rank and r is not slow]
    if many_nodes and node_mates and all(work(r) / median > STRAGGLER for r in node_mates):
        where += ", like every rank of that node: look at the machine first"
    phase = max(_own_phases(ranks), key=lambda p: _own(slow, p) - float(np.median([_own(r, p) for r in ranks])))
    return Suggestion(
        id="straggler", severity="high" if ratio > 1.2 else "medium",
        title=f"Rank {slow.rank}{f' (node {slow.node_rank})' if many_nodes else ''} is a straggler",
        finding=(f"rank {slow.rank}{where} needs {ratio:.2f}x the median per-rank work per step ({detail}); the others "
                 f"wait for it in every collective; its extra time is in {fmt.phase(phase)}"),
        action=(f"Look at rank {slow.rank}'s {fmt.phase(phase)}: its data shard (slower storage, larger "
                "samples: bucket by length or batch by token count), its host (CPU contention, a slower or "
                "throttled GPU)."),
        expected_gain=f"up to {fmt.share(1 - median / values[worst], 0)} of step time for every rank",
        gain_estimate="all ranks wait for the slowest: bringing it to the median saves the difference",
        confidence="medium",
        evidence=[Evidence("rank", f"rank {slow.rank}", {"rank": slow.rank, "phase": phase,
                                                         "node_rank": slow.node_rank})],
        gain_fraction=1 - median / values[worst])
