"""Other people's scripts under ``gpulens run`` and ``track()``: recording never changes what they can do.

Checkpoints of whole models, EMA copies, pickles, TorchScript and
torch.compile work as without gpulens; the exit status is the script's own
(Ctrl-C included); training in child processes (mp.spawn DDP, hogwild) is
recorded; a disabled GradScaler keeps the loss; profiler windows stay off
the training thread and out of the user's terminal.  The scripts in
tests/scripts/ follow the public examples' patterns.
"""
from __future__ import annotations

import copy
import json
import os
import pickle
import re
import signal
import subprocess
import sys
import textwrap
import threading
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn

import gpulens
from gpulens.hooks.track.hidden_hooks import is_gpulens_hook
from gpulens.hooks.track.kineto_output import kineto_quiet, split_kineto
from gpulens.profiler import open_run
from gpulens.profiler.store.reader import node_key

SCRIPTS = Path(__file__).resolve().parent / "scripts"
GPULENS = str(Path(sys.executable).with_name("gpulens"))
PY = sys.executable


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("GPULENS_")}


def _gpulens_run(root: Path, *command: str, extra: tuple[str, ...] = ("--no-advise",), timeout: float = 240,
                 cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([GPULENS, "run", "--runs-dir", str(root), *extra, "--", *command],
                          capture_output=True, text=True, timeout=timeout, env=_env(), cwd=cwd)


def _only_run(root: Path):
    runs = [p for p in root.iterdir() if p.is_dir()]
    assert len(runs) == 1, runs
    return open_run(runs[0])


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 1))

    def forward(self, x):
        return self.body(x)


def _train(model: nn.Module, steps: int = 6) -> None:
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    for _ in range(steps):
        opt.zero_grad()
        model(torch.randn(16, 8)).pow(2).mean().backward()
        opt.step()


def users_hook(module, args, output):
    """A forward hook of the user's own (module level: picklable)."""
    return None


def _our_hooks(model: nn.Module) -> int:
    return sum(is_gpulens_hook(h) for m in model.modules()
               for h in (*m._forward_pre_hooks.values(), *m._forward_hooks.values()))


# ----------------------------------------------------------------------------- 1. what the user's objects can do
def test_hooked_model_saves_copies_pickles_and_scripts_as_without_gpulens(runs_dir, tmp_path):
    model = Net()
    run = gpulens.track("objects", auto=True, quiet=True, advise=False, model=model)
    try:
        _train(model, 8)  # FLOPs are counted on step 5: their hooks are gone by step 7
        assert _our_hooks(model) == 2  # the step detector's forward hooks are on the model
        x = torch.randn(4, 8)
        scripted = torch.jit.script(model)  # TorchScript compiles a module's hooks: ours are not shown to it
        torch.testing.assert_close(scripted(x), model(x))
        assert _our_hooks(model) == 2  # ... and are back afterwards
        handle = model.register_forward_hook(users_hook)  # the user's own stays theirs

        blob = pickle.dumps(model)
        assert b"gpulens" not in blob  # a checkpoint never needs gpulens to load
        clone = pickle.loads(blob)
        ema = copy.deepcopy(model)  # every EMA implementation
        shallow = copy.copy(model)
        for other in (clone, ema, shallow):
            assert _our_hooks(other) == 0 and len(other._forward_hooks) == 1
        path = tmp_path / "whole-model.pt"
        torch.save(model, path)
        restored = torch.load(path, weights_only=False)
        torch.testing.assert_close(restored(x), model(x))
        assert list(restored._forward_hooks.values()) == [users_hook]
        state = model.state_dict()
        fresh = Net()
        fresh.load_state_dict(state)
        torch.testing.assert_close(fresh(x), model(x))
        assert list(model._forward_hooks)[-1] == handle.id
        # the same bytes as the model would pickle to with no recording at all
        run.close()
        assert _our_hooks(model) == 0
        assert pickle.dumps(model) == blob
    finally:
        run.close()


def test_ddp_model_with_the_timing_hook_pickles_and_copies(runs_dir, tmp_path, monkeypatch):
    import torch.distributed as dist

    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", "29677")
    dist.init_process_group("gloo", rank=0, world_size=1)
    try:
        ddp = nn.parallel.DistributedDataParallel(Net())
        run = gpulens.track("ddp-objects", auto=True, quiet=True, advise=False, model=ddp)  # times all-reduce
        _train(ddp)
        assert any(is_gpulens_hook(hook) for hook, _ in ddp._comm_hooks)
        blob = pickle.dumps(ddp)
        assert b"gpulens" not in blob
        assert not pickle.loads(blob)._comm_hooks
        assert not copy.deepcopy(ddp)._comm_hooks
        torch.save(ddp, tmp_path / "ddp.pt")
        run.close()
        _train(ddp, 2)  # DDP cannot drop a comm hook: after close it averages as the default does
        assert not pickle.loads(pickle.dumps(ddp))._comm_hooks
        comm = [e.get("@comm") for e in open_run(run.path).steps().extra]
        assert sum(c is not None for c in comm) >= 4
    finally:
        dist.destroy_process_group()


def test_compiled_model_hooked_before_compile_compiles_fullgraph_and_times_step_zero(runs_dir):
    torch._dynamo.reset()
    model = Net()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)  # the step detector hooks Net here
    run = gpulens.track("compiled", auto=True, quiet=True, advise=False, profile=False, count_flops=False)
    compiled = torch.compile(model, backend="eager", fullgraph=True)  # Net's hooks are inside the graph
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no graph-break warning from our hooks
        for _ in range(6):
            opt.zero_grad()
            compiled(torch.randn(16, 8)).pow(2).mean().backward()
            opt.step()
    run.close()
    steps = open_run(run.path).steps()
    assert len(steps) == 6
    # the compiled wrapper is hooked as torch.compile returns it: step 0's forward (the compilation) is timed
    assert (steps.forward > 0).all()
    assert steps.forward[0] > steps.forward[1:].max()
    assert pickle.loads(pickle.dumps(model)) is not None
    torch._dynamo.reset()


def test_compile_time_is_named_and_kept_out_of_the_phases(runs_dir):
    """The first step of a compiled model (and a recompile for a new shape) is one-off work: flagged,
    its seconds kept, left out of the phases and throughput, and named by the report."""
    from gpulens.profiler import RunAnalysis
    from gpulens.profiler.store.schema import FLAG_COMPILE
    from gpulens.report_view import compile_line

    torch._dynamo.reset()
    model = Net()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    run = gpulens.track("compile-time", auto=True, quiet=True, advise=False, profile=False, count_flops=False)
    compiled = torch.compile(model, backend="eager")
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.randn(160, 8)), batch_size=16)
    for i, (x,) in enumerate(loader):
        if i == 6:
            x = x[:5]  # a new batch size: dynamo compiles again
        compiled(x).pow(2).mean().backward()
        opt.step()
        opt.zero_grad()
    run.close()
    torch._dynamo.reset()
    steps = open_run(run.path).steps()
    flagged = [i for i in range(len(steps)) if steps.flags[i] & FLAG_COMPILE]
    assert flagged == [0, 6]
    assert all(steps.extra[i]["@compile"] > 0 for i in flagged)
    with open_run(run.path) as reader:
        comp = RunAnalysis(reader).figures.step_time.compile
    assert comp is not None and comp.steps == 2 and comp.first_steps == [0, 6]
    assert 0 < comp.seconds <= comp.step_seconds
    assert compile_line(comp).startswith("torch.compile compiled for ")


def test_checkpoints_ema_and_compile_in_a_nanogpt_like_script_under_gpulens_run(tmp_path):
    ckpt = tmp_path / "ckpt.pt"
    small = ("--n-layer", "2", "--n-embd", "64")  # what is checked does not need a larger model's CPU time
    proc = _gpulens_run(tmp_path / "runs", PY, str(SCRIPTS / "char_gpt.py"), "--max-iters", "30", *small,
                        "--eval-interval", "12", "--ema", "--checkpoint", str(ckpt))
    assert proc.returncode == 0, proc.stderr
    assert "checkpoint reloaded: GPT with" in proc.stdout
    steps = _only_run(tmp_path / "runs").steps()
    assert len(steps) == 30  # estimate_loss() (no_grad, eval mode) is not a step

    # 4. GradScaler(enabled=False): the recorded loss is the loss the script printed
    printed = [float(m.group(1)) for m in re.finditer(r"iter \d+: loss ([\d.]+)", proc.stdout)]
    np.testing.assert_allclose(steps.loss, printed, atol=6e-5)

    proc = _gpulens_run(tmp_path / "compiled", PY, str(SCRIPTS / "char_gpt.py"), "--max-iters", "8", *small,
                        "--compile")
    assert proc.returncode == 0, proc.stderr
    assert "graph break" not in proc.stderr.lower()
    assert len(_only_run(tmp_path / "compiled").steps()) == 8


# ----------------------------------------------------------------------------- 2. the exit status stays the script's
SELF_SIGNAL = textwrap.dedent("""
    import os, signal, sys, torch
    from torch.utils.data import DataLoader, TensorDataset
    model = torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.ReLU(), torch.nn.Linear(64, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    how = sys.argv[1]
    for i, (x,) in enumerate(DataLoader(TensorDataset(torch.randn(2048, 32)), batch_size=32)):
        opt.zero_grad(); model(x).pow(2).mean().backward(); opt.step()
        if i == 25:
            if how == "exit":
                sys.exit(3)
            os.kill(os.getpid(), getattr(signal, how))
""")


@pytest.mark.parametrize("how,status", [("SIGINT", "interrupted"), ("SIGTERM", "interrupted"), ("exit", "crashed")])
def test_exit_status_is_the_scripts_own_with_advice_at_exit(tmp_path, how, status):
    """Ctrl-C ends in SIGINT (130 in a shell) although the advice printed at exit imports modules."""
    script = tmp_path / "loop.py"
    script.write_text(SELF_SIGNAL)
    plain = subprocess.run([PY, str(script), how], capture_output=True, text=True, timeout=120, env=_env())
    recorded = _gpulens_run(tmp_path / "runs", PY, str(script), how, extra=())  # advice on, as by default
    assert plain.returncode == {"SIGINT": -2, "SIGTERM": -15, "exit": 3}[how]
    assert recorded.returncode == plain.returncode, recorded.stderr
    assert "top suggestions" in recorded.stderr or "no suggestions" in recorded.stderr
    reader = _only_run(tmp_path / "runs")
    assert reader.info.status == status and len(reader.steps()) >= 25
    if how == "SIGINT":
        shell = subprocess.run(["bash", "-c", f'"{GPULENS}" run --runs-dir "{tmp_path / "sh"}" -- "{PY}" '
                                f'"{script}" SIGINT 2>/dev/null; echo "rc=$?"'],
                               capture_output=True, text=True, timeout=120, env=_env())
        assert shell.stdout.strip().endswith("rc=130")


def test_track_without_a_with_block_also_keeps_ctrl_c(tmp_path):
    script = tmp_path / "t.py"
    script.write_text(textwrap.dedent(f"""
        import torch, gpulens
        run = gpulens.track("plain-track", runs_dir={str(tmp_path / "runs")!r})
        model = torch.nn.Linear(4, 1); opt = torch.optim.SGD(model.parameters(), lr=0.1)
        for i in range(12):
            opt.zero_grad(); model(torch.randn(8, 4)).sum().backward(); opt.step(); run.step()
        raise KeyboardInterrupt
    """))
    proc = subprocess.run([PY, str(script)], capture_output=True, text=True, timeout=120, env=_env())
    assert proc.returncode == -signal.SIGINT, proc.stderr
    assert _only_run(tmp_path / "runs").info.status == "interrupted"


# ----------------------------------------------------------------------------- 3. training in child processes
def test_mp_spawn_ddp_ranks_are_recorded_as_ranks_of_the_run(tmp_path):
    proc = _gpulens_run(tmp_path, PY, str(SCRIPTS / "spawn_ddp.py"), "--steps", "20", "--port", "29661",
                        extra=())
    assert proc.returncode == 0, proc.stderr
    assert "rank 0 done" in proc.stdout and "rank 1 done" in proc.stdout
    assert "training ran in 2 child process(es), recorded as rank(s) 0, 1 (40 steps)" in proc.stderr
    assert "no training step found" not in proc.stderr
    reader = _only_run(tmp_path)
    # torch's ranks: the parent is the node's sampler, not a rank; the files say so once the run ends
    assert reader.ranks == [0, 1] and reader.primary_rank == 0
    assert sorted(p.name for p in reader.path.glob("*.db")) == ["node-0.db", "rank-0.db", "rank-1.db"]
    assert reader.info.status == "finished"
    (node,) = reader.nodes()
    assert node.ranks == [0, 1] and node.sampling_rank is None and node.sampler == node_key(0)
    assert "host.cpu" in {s.metric for s in reader.series_list(node_key(0))}
    assert reader.meta(node_key(0))["role"] == "node" and len(reader.steps(node_key(0))) == 0
    for rank in (0, 1):
        meta = reader.meta(rank)
        assert meta["child"]["process_group_rank"] == rank == meta["rank"]
        assert meta["child"]["start_method"] == "spawn"
        assert meta["world_size"] == 2 and meta["status"] == "finished"
        steps = reader.steps(rank)
        assert len(steps) == 20
        assert sum("@comm" in e for e in steps.extra) >= 18  # the gloo all-reduce, timed in the child
    assert len(reader.steps()) == 20  # the run speaks through its first training rank
    assert "host.cpu" not in {s.metric for s in reader.series_list(0)}  # the parent samples the node
    report = json.loads(subprocess.run([PY, "-m", "gpulens", "report", str(reader.path), "--json"],
                                       capture_output=True, text=True, timeout=120, env=_env()).stdout)
    assert [r["rank"] for r in report["ranks"]] == [0, 1]
    assert report["nodes"][0]["sampled_by"] == "node process" and report["nodes"][0]["host_cpu_pct"] is not None


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_hogwild_processes_are_recorded_and_loader_workers_are_not(tmp_path, method):
    proc = _gpulens_run(tmp_path, PY, str(SCRIPTS / "hogwild.py"), "--start-method", method, "--batches", "12")
    assert proc.returncode == 0, proc.stderr
    assert "accuracy" in proc.stdout
    reader = _only_run(tmp_path)
    assert reader.ranks == [0, 1]  # no process group: the lowest free ranks; the parent samples the node
    for rank in (0, 1):
        assert len(reader.steps(rank)) == 12
        assert reader.meta(rank)["child"]["start_method"] == method
        assert reader.meta(rank)["status"] == "finished"  # closed although forked children leave by os._exit
    assert sorted(int(p.name) for p in (reader.path / "trainers").iterdir()) == sorted(
        reader.meta(r)["pid"] for r in (0, 1))


def test_dataloader_worker_processes_stay_unrecorded(tmp_path):
    proc = _gpulens_run(tmp_path, PY, str(SCRIPTS / "cnn_imagenet.py"), "--batches", "8", "--workers", "2")
    assert proc.returncode == 0, proc.stderr
    reader = _only_run(tmp_path)
    assert reader.ranks == [0] and len(reader.steps()) == 8  # the workers were armed, never triggered
    assert not (reader.path / "trainers").exists()


def test_training_children_are_not_counted_as_dataloader_workers(tmp_path):
    from gpulens.profiler.record.proctree import ProcessTree

    child = subprocess.Popen([PY, "-c", "import time; time.sleep(30)"])
    try:
        trainers = tmp_path / "trainers"
        tree = ProcessTree(refresh_s=0.0, trainers=trainers)
        assert child.pid in tree.other_children() and child.pid not in tree.workers()
        trainers.mkdir()
        (trainers / str(child.pid)).touch()
        assert child.pid in tree.children() and child.pid not in tree.workers() | tree.other_children()
        assert child.pid in tree.pids()  # its GPU memory is still the run's
    finally:
        child.kill()
        child.wait()


# ----------------------------------------------------------------------------- 5. windows off the training thread
def test_trace_export_runs_off_the_training_thread_at_low_priority(runs_dir, monkeypatch):
    from torch.profiler import profile

    seen = []
    original = profile.export_chrome_trace

    def export(self, path, *args, **kwargs):
        seen.append((threading.current_thread().name, os.getpriority(os.PRIO_PROCESS, threading.get_native_id())))
        return original(self, path, *args, **kwargs)

    monkeypatch.setattr(profile, "export_chrome_trace", export)
    model = Net()
    with gpulens.track("export", quiet=True, advise=False,
                       profile=gpulens.ProfileConfig(every=6, first=2, warmup=1, active=2)) as run:
        opt = torch.optim.SGD(model.parameters(), lr=0.05)
        for _ in range(14):
            opt.zero_grad()
            model(torch.randn(16, 8)).pow(2).mean().backward()
            opt.step()
            run.step()
    assert [name for name, _ in seen] == ["gpulens-trace-export"] * 2
    assert all(nice == 19 for _, nice in seen)
    reader = open_run(run.path)
    assert [w.status for w in reader.windows()] == ["ok", "ok"]
    assert reader.flops()[0].step == 6  # FLOPs counted on the first step from 5 on outside windows (2-4, 8-10)
    from gpulens.profiler.analysis.trace import load_trace

    assert not load_trace(reader.windows()[0].path).input_dims  # no shapes on a CPU run: a 3x shorter stop


def test_kineto_lines_never_reach_the_terminal_but_the_users_own_profiler_still_talks(tmp_path):
    script = tmp_path / "both.py"
    script.write_text(textwrap.dedent("""
        import sys, torch
        model = torch.nn.Linear(16, 1); opt = torch.optim.SGD(model.parameters(), lr=0.1)
        for _ in range(16):
            opt.zero_grad(); model(torch.randn(8, 16)).sum().backward(); opt.step()
        print("mine:", file=sys.stderr, flush=True)
        with torch.profiler.profile() as prof:  # the user's own profiler: its lines are theirs
            model(torch.randn(8, 16))
    """))
    proc = _gpulens_run(tmp_path / "runs", PY, str(script))
    assert proc.returncode == 0, proc.stderr
    ours, mine = proc.stderr.split("mine:")
    assert "USDT:" not in ours and "SyncActivityProfilerHandler" not in ours
    assert "profiler_start" in mine  # torch 2.13's Kineto announces every profiler start
    assert _only_run(tmp_path / "runs").windows()


def test_kineto_output_split_keeps_everything_else(capfd):
    data = (b"USDT:2026-11-30 05:52:18 4058:4058 SyncActivityProfilerHandler.cpp:52] profiler_start\n"
            b"user line from another thread\n"
            b"ERROR:2026-11-30 05:52:18 4058:4058 CudaDeviceProperties.cpp:26] gpuGetDeviceCount failed with code 35\n"
            b"WARNING:2026-11-30 05:52:18 4058:4058 CuptiActivityProfiler.cpp:310] CUPTI_ERROR_INSUFFICIENT_PRIVILEGES\n"
            b"STAGE:2026-11-30 05:52:18 4058:4058 SyncActivityProfilerHandler.cpp:60] Completed Stage: Collection\n"
            b"partial line")
    kept, problems = split_kineto(data)
    assert kept == b"user line from another thread\npartial line"
    assert problems == ["WARNING: CUPTI_ERROR_INSUFFICIENT_PRIVILEGES"]
    said = []
    capfd.readouterr()
    with kineto_quiet(said.append):  # what a window's start/stop writes to fd 2
        os.write(2, data)
    assert said == ["WARNING: CUPTI_ERROR_INSUFFICIENT_PRIVILEGES"]
    assert capfd.readouterr().err == "user line from another thread\npartial line"


# ----------------------------------------------------------------------------- 8. smaller things
def test_hints_speak_to_gpulens_run_users(tmp_path):
    script = tmp_path / "noloader.py"
    script.write_text("import torch\nm = torch.nn.Linear(4, 1)\nfor _ in range(3):\n    m(torch.randn(2, 4))\n")
    proc = _gpulens_run(tmp_path / "runs", PY, str(script))
    assert proc.returncode == 0, proc.stderr
    run = _only_run(tmp_path / "runs")
    advice = subprocess.run([GPULENS, "advise", str(run.path)], capture_output=True, text=True, timeout=120)
    assert "run.step()" not in advice.stdout and "run.loader" not in advice.stdout
    assert "gpulens run found no optimizer.step" in advice.stdout


def test_report_at_80_columns_shows_whole_labels_and_values():
    sample = Path(__file__).resolve().parent.parent / "sample_runs" / "cpu-cnn-workers"
    out = subprocess.run([GPULENS, "report", str(sample)], capture_output=True, text=True, timeout=120,
                         env={**_env(), "COLUMNS": "80"}).stdout
    assert "Training process CPU" in out and "Training process RSS" in out
    assert "…" not in out.split("Host and training process")[1].split("Kernel view")[0]
    assert max(len(line) for line in out.splitlines()) <= 80
