"""The culprit at 8 ranks: a torchrun gloo job of 8 processes (2 agents x 4, static rendezvous, on this host)
with one fault planted at a time, read back from the run store it published to.  The straggler rule must
name the rank torch gave the slow process, its node, and the phase its extra time is in.  The compute fault
runs at 8 ranks; the data and collective faults at 4 (2 agents x 2): the rule reads the same per-rank
figures at any world size, and each rank is a process that imports torch (~2 CPU-s here), so three 8-rank
jobs were an eighth of the whole suite's CPU.

What a busy 2-core host cannot change is asserted: the fault is a sleep of 150 ms per step on one rank, far
above what 8 processes sharing 2 cores add to any rank's phases (a few ms each, the same for every rank).
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("pyarrow")

GPULENS = str(Path(sys.executable).with_name("gpulens"))
TORCHRUN = str(Path(sys.executable).with_name("torchrun"))
SCRIPT = Path(__file__).resolve().parent / "scripts" / "ddp_faults.py"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _job(tmp_path: Path, fault: str, slow_rank: int, per_node: int) -> dict:
    """Run the job, return the advice of the run in the store (``report --json``'s, which ``advise --json``
    prints alone)."""
    store = f"file://{tmp_path / 'store'}"
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("GPULENS_")
           and k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE")}
    env.update(GPULENS_CACHE=str(tmp_path / "cache"), OMP_NUM_THREADS="1")
    agents = []
    for node in (0, 1):
        cwd = tmp_path / f"node{node}"
        cwd.mkdir()
        agents.append(subprocess.Popen(
            [GPULENS, "run", "--quiet", "--no-advise", "--store", store, "--profile-every", "0", "--no-flops", "--",
             TORCHRUN, "--nnodes", "2", "--node-rank", str(node), "--nproc-per-node", str(per_node), "--master-addr",
             "127.0.0.1", "--master-port", str(port), str(SCRIPT), "--fault", fault, "--slow-rank", str(slow_rank),
             "--delay", "0.15", "--steps", "24"],
            cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT))
    outs = [a.communicate(timeout=400)[0].decode() for a in agents]
    assert all(a.returncode == 0 for a in agents), outs
    (run_id,) = [n for n in os.listdir(tmp_path / "store") if n != "_index"]  # one run, though static
    # rendezvous gave the two nodes two ids
    out = subprocess.run([GPULENS, "report", f"{store}/{run_id}", "--json"], capture_output=True, text=True,
                         timeout=300, env=env)
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    ranks = [(r["rank"], r["node_rank"]) for r in report["ranks"]]
    assert ranks == [(r, r // per_node) for r in range(2 * per_node)], ranks  # torch's ranks, on their nodes
    return report["suggestions"]  # what `advise --json` prints


@pytest.mark.slow
@pytest.mark.parametrize("fault, slow_rank, phase, per_node", [
    ("compute", 5, "forward", 4), ("data", 1, "data_wait", 2), ("collective", 3, "backward", 2)],
    ids=["compute-rank5-of-8", "data-rank1-of-4", "collective-rank3-of-4"])
def test_the_straggler_rule_names_the_planted_rank_node_and_phase(tmp_path, fault, slow_rank, phase, per_node):
    advice = _job(tmp_path, fault, slow_rank, per_node)
    found = {s["id"]: s for s in advice["suggestions"]}
    assert "straggler" in found, [s["id"] for s in advice["suggestions"]]
    s = found["straggler"]
    evidence = s["evidence"][0]["data"]
    node = slow_rank // per_node
    assert (evidence["rank"], evidence["node_rank"], evidence["phase"]) == (slow_rank, node, phase), s
    assert s["title"] == f"Rank {slow_rank} (node {node}) is a straggler"
