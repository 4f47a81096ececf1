"""``gpulens run``: unmodified training scripts (tests/scripts/, in the style of pytorch/examples)
recorded with the right step counts; torchrun ranks into one run; exit codes and signals unchanged."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from gpulens.cli import _split_run_args
from gpulens.hooks.run_env import is_launcher, program_name
from gpulens.hooks.launcher.launch import name_of
from gpulens.profiler import open_run

SCRIPTS = Path(__file__).resolve().parent / "scripts"
GPULENS = str(Path(sys.executable).with_name("gpulens"))
PY = sys.executable


def _gpulens_run(root: Path, *command: str, extra: tuple[str, ...] = (), cwd: Path | None = None,
                 timeout: float = 180) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GPULENS_")}
    return subprocess.run([GPULENS, "run", "--runs-dir", str(root), "--no-advise", *extra, "--", *command],
                          capture_output=True, text=True, timeout=timeout, env=env, cwd=cwd)


def _only_run(root: Path):
    runs = [p for p in root.iterdir() if p.is_dir()]
    assert len(runs) == 1, runs
    return open_run(runs[0])


# ----------------------------------------------------------------------------- acceptance scripts
def test_dcgan_two_optimizers_one_step_per_batch(tmp_path):
    proc = _gpulens_run(tmp_path, PY, str(SCRIPTS / "dcgan.py"), "--niter", "2", "--batches", "10", "--workers", "2")
    assert proc.returncode == 0, proc.stderr
    assert "Loss_D" in proc.stdout  # the script's own output is untouched
    reader = _only_run(tmp_path)
    assert reader.ranks == [0]  # the DataLoader workers did not record runs of their own
    steps = reader.steps()
    assert len(steps) == 20
    meta = reader.meta()
    assert meta["status"] == "finished" and meta["name"] == "dcgan"
    assert meta["auto"]["boundary"] == "dataloader" and meta["auto"]["optimizer"]
    # both optimizers, as they stepped: what the advisor needs to recommend an implementation, or none
    assert [(o["type"], o["impl"], o["device"]) for o in meta["optimizers"]] == [("Adam", "for-loop", "cpu")] * 2
    assert set(steps.samples[steps.samples == steps.samples]) == {16}
    assert (steps.backward[2:] > 0).all() and (steps.optimizer[2:] > 0).all()
    assert reader.windows()  # torch.profiler windows and FLOPs work without any code change
    assert reader.flops()


def test_word_language_model_manual_sgd_no_dataloader(tmp_path):
    proc = _gpulens_run(tmp_path, PY, str(SCRIPTS / "word_lm.py"), "--epochs", "2")
    assert proc.returncode == 0, proc.stderr
    assert "valid ppl" in proc.stdout
    reader = _only_run(tmp_path)
    steps = reader.steps()
    assert len(steps) == 22  # 2 epochs x 11 bptt batches; evaluation is not a step
    assert reader.meta()["auto"]["boundary"] == "forward"
    assert reader.meta()["auto"]["optimizer"] is False
    # model.train() hooks the model before its first forward: step 0's forward is measured too
    assert (steps.forward > 0).all() and (steps.backward > 0).all()
    assert (steps.loss == steps.loss).all()


def test_ddp_under_torchrun_records_each_rank_into_one_run(tmp_path):
    torchrun = str(Path(sys.executable).with_name("torchrun"))
    proc = _gpulens_run(tmp_path, torchrun, "--nproc_per_node=2", "--master_port=29631",
                        str(SCRIPTS / "ddp_train.py"), "--epochs", "2")
    assert proc.returncode == 0, proc.stderr
    reader = _only_run(tmp_path)  # the torchrun agent did not record a run of its own
    assert reader.ranks == [0, 1]
    for rank in (0, 1):
        meta = reader.meta(rank)
        assert (meta["rank"], meta["local_rank"], meta["world_size"]) == (rank, rank, 2)
        assert meta["distributed_backend"] == "gloo"
        steps = reader.steps(rank)
        assert len(steps) == 20  # 320 samples / 2 ranks / batch 16 x 2 epochs
        comm = [e["@comm"] for e in steps.extra if "@comm" in e]
        assert len(comm) >= 18 and all(c > 0 for c in comm)  # the all-reduce of every step, timed
    # one clock: DDP synchronises every step, so both ranks' step ends agree to a small part of a step (under a
    # millisecond on a quiet machine; judged against the loop's own step time, which a busy host stretches as it
    # stretches the skew, where a wrong clock would be off by seconds)
    import numpy as np

    skew = np.abs(reader.steps(0).t_end - reader.steps(1).t_end)
    assert float(np.median(skew)) < 0.5 * float(np.median(reader.steps(0).duration))
    host = {s.metric for s in reader.series_list(0)}
    assert "host.cpu" in host
    assert "host.cpu" not in {s.metric for s in reader.series_list(1)}  # only local rank 0 samples the node


def test_module_form_and_script_arguments_pass_through(tmp_path):
    (tmp_path / "trainmod.py").write_text(textwrap.dedent("""
        import sys, torch
        model = torch.nn.Linear(4, 1)
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        n = int(sys.argv[sys.argv.index("--steps") + 1])
        for _ in range(n):
            opt.zero_grad(); model(torch.randn(8, 4)).sum().backward(); opt.step()
        print("args", sys.argv[1:])
    """))
    root = tmp_path / "runs"
    env = {k: v for k, v in os.environ.items() if not k.startswith("GPULENS_")}
    proc = subprocess.run([GPULENS, "run", "--runs-dir", str(root), "--no-advise", "-m", "trainmod", "--steps", "7",
                           "--lr", "3"], capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "args ['--steps', '7', '--lr', '3']" in proc.stdout
    reader = _only_run(root)
    assert reader.meta()["name"] == "trainmod"
    assert len(reader.steps()) == 7


# ----------------------------------------------------------------------------- exit status and signals
def test_exit_status_and_exception_pass_through(tmp_path):
    proc = _gpulens_run(tmp_path / "a", PY, str(SCRIPTS / "word_lm.py"), "--epochs", "1", "--crash-at", "5")
    assert proc.returncode == 1
    assert "RuntimeError: crash requested by --crash-at" in proc.stderr  # the script's own traceback
    reader = _only_run(tmp_path / "a")
    meta = reader.meta()
    assert meta["status"] == "crashed" and "crash requested" in meta["error"]
    assert abs(len(reader.steps()) - 5) <= 1

    script = tmp_path / "exit3.py"
    script.write_text("import sys, torch\nsys.exit(3)\n")
    proc = _gpulens_run(tmp_path / "b", PY, str(script))
    assert proc.returncode == 3
    assert _only_run(tmp_path / "b").meta()["status"] == "crashed"


LONG_LOOP = textwrap.dedent("""
    import sys, time, torch
    from torch.utils.data import DataLoader, TensorDataset
    model = torch.nn.Sequential(torch.nn.Linear(64, 256), torch.nn.ReLU(), torch.nn.Linear(256, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    loader = DataLoader(TensorDataset(torch.randn(4096, 64)), batch_size=64)
    step = 0
    while True:
        for (x,) in loader:
            opt.zero_grad(); model(x).pow(2).mean().backward(); opt.step()
            step += 1
            if step == 30:
                print("ready", flush=True)
            elif step > 30:
                print(step, repr(time.time()), flush=True)  # the steps it completed, on its own clock
""")


@pytest.mark.parametrize("sig,status", [(signal.SIGINT, "interrupted"), (signal.SIGTERM, "interrupted"),
                                        (signal.SIGKILL, "crashed")])
def test_signals_reach_the_script_and_the_run_still_opens(tmp_path, sig, status):
    script = tmp_path / "loop.py"
    script.write_text(LONG_LOOP)
    root = tmp_path / "runs"
    env = {k: v for k, v in os.environ.items() if not k.startswith("GPULENS_")}
    proc = subprocess.Popen([GPULENS, "run", "--runs-dir", str(root), "--no-advise", "--quiet", "--", PY, str(script)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    read: list[str] = []
    try:
        assert proc.stdout.readline().strip() == "ready"
        if sig == signal.SIGKILL:
            # a kill: 2.5 s or more of the script's own steps to account for, on its clock -- not a fixed sleep,
            # which a stall under load (other jobs on the cores) could leave without a single step before it
            first = None
            while True:
                line = proc.stdout.readline()
                read.append(line)
                t = float(line.split()[1])
                first = t if first is None else first
                if t - first >= 2.5:
                    break
        else:
            time.sleep(1.0)
        killed = time.time()
        proc.send_signal(sig)  # to gpulens' pid: exec made it the script's
        out, _ = proc.communicate(timeout=60)
        out = "".join(read) + out
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -sig  # died of the signal, as the bare script would
    reader = _only_run(root)
    assert reader.refresh().status == status
    steps = reader.steps()
    assert len(steps) >= 30
    if sig == signal.SIGKILL:
        # nothing lost up to the last second: every step the script completed 2 s before the kill is on disk
        # (the writer commits every 0.3 s); judged on the script's own account, not on how long reading took
        done = [int(n) for n, t in (line.split() for line in out.splitlines() if line.strip()) if float(t) < killed - 2]
        assert done and len(steps) >= done[-1] - 1, (len(steps), done[-3:])


# ----------------------------------------------------------------------------- command line
def test_command_line_errors_are_one_line(tmp_path):
    for args, message in ((["run"], "nothing to run"),
                          (["run", "--", "no-such-command-xyz"], "command not found: no-such-command-xyz"),
                          (["run", "--prometheus-port", "0", "--", PY, "x.py"], "--prometheus-port must be"),
                          (["run", "--run-id", "../up", "--", PY, "x.py"], "invalid run id")):
        proc = subprocess.run([GPULENS, *args], capture_output=True, text=True, timeout=60)
        assert proc.returncode == 2, (args, proc.stderr)
        assert message in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr


def test_dry_run_shows_the_command_and_environment(tmp_path):
    proc = subprocess.run([GPULENS, "run", "--dry-run", "--runs-dir", str(tmp_path), "--name", "exp",
                           "--profile-every", "0", "train.py", "--lr", "1"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0] == f"{PY} train.py --lr 1"
    env = dict(line.split("=", 1) for line in lines[1:])
    assert env["PYTHONPATH"].split(os.pathsep)[0].endswith("_bootstrap")
    assert env["GPULENS_RUN_ID"].startswith("exp-")
    assert json.loads(env["GPULENS_AUTORUN"])["profile_every"] == 0


def test_a_foreign_python_is_pointed_out(tmp_path):
    from gpulens.hooks.launcher.launch import interpreter_note

    assert interpreter_note([PY, "t.py"]) is None
    assert interpreter_note(["bash", "t.sh"]) is None
    other = tmp_path / "bin" / "python3"
    other.parent.mkdir()
    other.write_text("#!/bin/sh\n")
    other.chmod(0o755)
    note = interpreter_note([str(other), "t.py"])
    assert note and str(other) in note and "runs unrecorded" in note


def test_argument_splitting_and_names():
    assert _split_run_args(["--name", "x", "--", "python", "t.py", "--name", "y"]) == (
        ["--name", "x"], ["python", "t.py", "--name", "y"])
    assert _split_run_args(["--quiet", "-m", "pkg.train", "--lr", "3"]) == (["--quiet", "-m", "pkg.train"], ["--lr", "3"])
    assert _split_run_args(["train.py", "--quiet"]) == ([], ["train.py", "--quiet"])
    assert is_launcher(["/usr/bin/python3", "/venv/bin/torchrun", "--nproc_per_node=2", "t.py"])
    assert is_launcher(["python", "-m", "torch.distributed.run", "t.py"])
    assert not is_launcher(["python", "-u", "train.py"])
    assert not is_launcher(["python", "-c", "import torch"])
    assert program_name(["python", "-m", "pkg.train", "--x"]) == "train"
    assert program_name(["python", "-u", "scripts/fit.py"]) == "fit"
    assert name_of(["torchrun", "--nproc_per_node=2", "ddp.py", "--epochs", "1"]) == "ddp"
    assert name_of([PY, "-m", "pkg.train"]) == "train"
    assert name_of(["bash", "train.sh"]) == "bash"


def test_children_of_a_recording_process_do_not_record(tmp_path):
    """A process started by the recording one (spawned DataLoader worker, compile worker) stays quiet."""
    from gpulens.hooks import run_env

    env = {k: v for k, v in os.environ.items() if not k.startswith("GPULENS_")}
    env.update(GPULENS_AUTORUN=json.dumps({"runs_dir": str(tmp_path), "quiet": True}), GPULENS_RUN_ID="child-test",
               GPULENS_AUTORUN_OWNER="1", PYTHONPATH=str(run_env.BOOTSTRAP_DIR))
    proc = subprocess.run([PY, "-c", "print('hello')"], capture_output=True, text=True, timeout=60, env=env)
    assert proc.returncode == 0 and proc.stdout.strip() == "hello"
    assert not (tmp_path / "child-test").exists()
