"""Who is who in a run folder, and the pure parts of the store format (no processes, no store)."""
from __future__ import annotations

from pathlib import Path

from gpulens.hooks.track.runmeta import job_wide_id, rank_env
from gpulens.profiler.store.members import Entry, resolve
from gpulens.profiler.store.mirror import parse_listing
from gpulens.profiler.store.segments import parse_segment_name, plan


def _e(name: str, has_steps: bool = True, **meta) -> Entry:
    return Entry(Path(name), {"host": "h", "node_rank": 0, **meta}, has_steps)


def _ranks(entries: list[Entry]) -> dict[str, int | None]:
    return {m.path.name: m.rank for m in resolve(entries)}


def test_mp_spawn_parent_is_the_nodes_sampler_and_children_are_torchs_ranks():
    entries = [_e("rank-0.db", has_steps=False, pid=10),
               _e("rank-1.db", pid=11, child={"parent_pid": 10, "process_group_rank": 0}),
               _e("rank-2.db", pid=12, child={"parent_pid": 10, "process_group_rank": 1})]
    assert _ranks(entries) == {"rank-0.db": None, "rank-1.db": 0, "rank-2.db": 1}  # also how old runs read
    members = resolve(entries)
    assert [m.name for m in members] == ["node-0.db", "rank-0.db", "rank-1.db"]  # what tidy() renames them to


def test_a_parent_that_trains_stays_a_rank_and_hogwild_children_take_the_free_ranks():
    lightning = [_e("rank-0.db", pid=10), _e("rank-1.db", pid=11, child={"parent_pid": 10, "process_group_rank": 1})]
    assert _ranks(lightning) == {"rank-0.db": 0, "rank-1.db": 1}
    hogwild = [_e("rank-0.db", has_steps=False, pid=10), _e("rank-1.db", pid=11, child={"parent_pid": 10}),
               _e("rank-2.db", pid=12, child={"parent_pid": 10})]
    assert _ranks(hogwild) == {"rank-0.db": None, "rank-1.db": 0, "rank-2.db": 1}


def test_torchrun_ranks_and_node_files_keep_their_names():
    entries = [_e(f"rank-{r}.db", node_rank=r // 4) for r in range(8)] + [_e("node-1.db", has_steps=False)]
    members = {m.path.name: (m.node, m.rank) for m in resolve(entries)}
    assert members["rank-5.db"] == (1, 5) and members["node-1.db"] == (1, None)
    # a parent on another host with the same pid is not this child's parent
    other = [_e("rank-0.db", has_steps=False, pid=10, host="a"),
             _e("rank-1.db", pid=11, host="b", child={"parent_pid": 10, "process_group_rank": 1})]
    assert _ranks(other) == {"rank-0.db": 0, "rank-1.db": 1}


def test_launchers_ranks_and_srun_tasks():
    assert rank_env({"RANK": "3", "LOCAL_RANK": "1", "WORLD_SIZE": "8", "SLURM_PROCID": "0",
                     "SLURM_STEP_ID": "0"})["rank"] == 3  # torchrun under srun: torchrun's
    srun = rank_env({"SLURM_PROCID": "5", "SLURM_LOCALID": "1", "SLURM_NTASKS": "8", "SLURM_STEP_ID": "0"})
    assert (srun["rank"], srun["local_rank"], srun["world_size"]) == (5, 1, 8)
    batch = rank_env({"SLURM_PROCID": "0", "SLURM_NTASKS": "4"})  # a batch script is no task of a step
    assert (batch["rank"], batch["world_size"]) == (0, 1)
    assert job_wide_id({"TORCHELASTIC_RUN_ID": "job-7"}) and job_wide_id({"SLURM_JOB_ID": "12"})
    assert not job_wide_id({"TORCHELASTIC_RUN_ID": "none"}) and not job_wide_id({})


def test_segment_plans_go_on_without_gaps_through_merged_files():
    assert parse_segment_name("00000001-00000016.parquet") == (1, 16)
    assert parse_segment_name("00000016-00000001.parquet") is None and parse_segment_name("x.parquet") is None
    assert plan([(1, 1), (2, 2), (3, 3)], 0) == [(1, 1), (2, 2), (3, 3)]
    assert plan([(1, 16), (17, 17), (5, 5)], 4) == [(1, 16), (17, 17)]  # the merge reaches further
    assert plan([(1, 1), (3, 3)], 0) == [(1, 1)]  # 2 missing: stop there, never skip rows
    assert plan([(1, 16)], 16) == []


def test_a_listing_places_every_object_or_names_what_is_wrong():
    base = "bucket/team"
    keys = {f"{base}/{k}": {"size": 1, "ETag": "x"} for k in (
        "good/rank=0/steps/00000001-00000001.parquet", "good/rank=0/meta/current.parquet",
        "good/node=0/points/00000001-00000001.parquet", "good/rank=0/traces/rank-0.window-0.pt.trace.json.gz",
        "old/rank-0.db", "old/traces/rank-0.window-0.pt.trace.json.gz",
        "junk/rank=0/steps/notes.txt", "dots/rank=0/../../x.db", "bad\x1bname/rank=0/meta/current.parquet",
        "README.md")}
    runs = parse_listing(keys, base)
    assert runs["good"].error is None and set(runs["good"].members) == {"rank=0", "node=0"}
    assert runs["old"].error is None and set(runs["old"].legacy) == {"rank-0.db",
                                                                  "traces/rank-0.window-0.pt.trace.json.gz"}
    assert "did not write" in runs["junk"].error and "unsafe" in runs["dots"].error
    assert any("not a valid run id" in (r.error or "") and "\x1b" not in name for name, r in runs.items())
    assert "README.md" not in runs
