"""Claim: a team-sized store stays quick to read.  1,000 runs: ``gpulens ls URL`` <= 10 s cold and <= 2 s warm,
the dashboard's runs page <= 1 s warm; a 64-rank run (8 nodes x 8 GPUs, 1 h, written by the real writer) read
from the store: its report <= 10 s and its run page <= 2 s, against a single-node run measured the same way.

Everything goes through a real S3 API (moto's server, in a process of its own on 127.0.0.1) and the real
publisher.  The 1,000 runs are the nine recorded sample runs, published under 1,000 run ids; the 64-rank and
the single-node (8-rank) runs are synthetic, written by the real writer with the series, rates and levels of a
real H100 recording (bench/synthetic.py).  "Cold" is a new cache (the store read for the first time: every
object fetched and assembled), "warm" a cache that is up to date (the store still listed, nothing fetched).

    python bench/team_store.py                       # 1,000 runs, 64 ranks x 1 h
    python bench/team_store.py --runs 200 --hours 0.25
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from synthetic import write_rank

REPO = Path(__file__).resolve().parent.parent
SAMPLES = sorted(p for p in (REPO / "sample_runs").iterdir() if (p / "rank-0.db").exists())
GPULENS = str(Path(sys.executable).with_name("gpulens"))


def _server() -> tuple[subprocess.Popen, dict[str, str]]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-c", "import sys, time\nfrom moto.server import ThreadedMotoServer\n"
                             f"ThreadedMotoServer(ip_address='127.0.0.1', port={port}).start()\n"
                             "print('up', flush=True)\ntime.sleep(1e9)"], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL)
    assert proc.stdout is not None
    while proc.stdout.readline().strip() != b"up":  # moto says where it listens first
        pass
    env = {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "bench",
           "AWS_SECRET_ACCESS_KEY": "bench", "AWS_DEFAULT_REGION": "us-east-1"}
    os.environ.update(env)
    import s3fs

    s3fs.S3FileSystem.clear_instance_cache()
    s3fs.S3FileSystem().mkdir("team")
    return proc, env


def _timed(argv: list[str], env: dict[str, str]) -> float:
    t0 = time.perf_counter()
    out = subprocess.run(argv, capture_output=True, text=True, env=env)
    took = time.perf_counter() - t0
    if out.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed: {out.stderr.strip()}")
    return took


def _publish_many(store: str, n: int) -> float:
    from gpulens.profiler.store.publisher import Publisher, Target

    def one(i: int) -> None:
        sample = SAMPLES[i % len(SAMPLES)]
        p = Publisher(store, sample / "rank-0.db", Target(f"{sample.name}-{i:04d}", 0, 0),
                      state_dir=Path(tempfile.mkdtemp(prefix="gpulens-pub-")))  # not in sample_runs/
        assert p.round(final=True), p.last_error

    t0 = time.perf_counter()
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(one, range(n)))
    return time.perf_counter() - t0


def _build_job(root: Path, nodes: int, ranks_per_node: int, hours: float) -> Path:
    run = root / f"job-{nodes}x{ranks_per_node}"
    world = nodes * ranks_per_node
    for rank in range(world):
        w = write_rank(run / f"rank-{rank}.db", hours * 3600, rank=rank, node=rank // ranks_per_node, world=world,
                       local_world=ranks_per_node, gpus=8, name=run.name, seed=rank)
        w.close()
    return run


def _publish_job(run: Path, store: str) -> float:
    from gpulens.profiler.store.publisher import publish_run

    t0 = time.perf_counter()
    publish_run(run, store, state_dir=Path(tempfile.mkdtemp(prefix="gpulens-pub-")))
    return time.perf_counter() - t0


def _run_page(cache_root: Path, run_id: str) -> tuple[float, int]:
    """(seconds, JSON bytes) of the run page's figure callbacks (time series, step breakdown, ranks) on the
    mirrored run, with no reader open yet."""
    from dash._utils import to_json

    from gpulens.dashboard import data
    from gpulens.dashboard.app import create_app
    from gpulens.dashboard.pages import run as run_page

    data.reset()
    app = create_app(cache_root)
    t0 = time.perf_counter()
    with app.server.app_context():
        outs = [run_page.ts_figure(run_id, None, "light", {"width": 1400}),
                run_page.steps_figure(run_id, None, "light", [], {"width": 1400}),
                run_page.ranks_figure(run_id, "light")]
    took = time.perf_counter() - t0
    payload = len(to_json(outs).encode())
    lines = len(outs[0][0]["data"])
    if lines < 8 or not outs[1]["data"] or not outs[2][1]:
        raise SystemExit(f"the run page drew nothing for {run_id}: {outs[0][1]} / {to_json(outs[0][0])[-300:]}")
    return took, payload


def _runs_page(cache_root: Path) -> tuple[float, float, int]:
    """(seconds until every row is analysed, warm seconds of one refresh, rows) of the runs page."""
    from gpulens.dashboard import data
    from gpulens.dashboard.app import create_app
    from gpulens.dashboard.pages import runs as runs_page

    data.reset()
    app = create_app(cache_root)
    t0 = time.perf_counter()
    with app.server.app_context():
        while True:
            rows, done, _, _ = runs_page.refresh_runs(0)
            if done:
                break
        fill = time.perf_counter() - t0
        warm = []
        for _ in range(5):
            t1 = time.perf_counter()
            rows, _, _, _ = runs_page.refresh_runs(1)
            warm.append(time.perf_counter() - t1)
    return fill, statistics.median(warm), len(rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=1000)
    ap.add_argument("--hours", type=float, default=1.0, help="length of the 64-rank run (default 1)")
    ap.add_argument("--nodes", type=int, default=8)
    args = ap.parse_args()
    server, s3env = _server()
    tmp = Path(tempfile.mkdtemp(prefix="gpulens-team-"))
    try:
        env = {**os.environ, **s3env}
        store = "s3://team/gpulens"
        took = _publish_many(store, args.runs)
        print(f"{args.runs} runs published in {took:.0f} s ({len(SAMPLES)} recorded sample runs, in turn)")
        ls = []
        for i in range(3):
            cache = tmp / f"ls-cache-{i}"
            cold = _timed([GPULENS, "ls", store, "--json"], {**env, "GPULENS_CACHE": str(cache)})
            warm = [_timed([GPULENS, "ls", store, "--json"], {**env, "GPULENS_CACHE": str(cache)})
                    for _ in range(3)]
            ls.append((cold, statistics.median(warm)))
        local = tmp / "local"
        local.mkdir()
        for i in range(args.runs):  # the same runs as one local folder: what ls costs without a store
            sample = SAMPLES[i % len(SAMPLES)]
            (local / f"{sample.name}-{i:04d}").mkdir()
            os.link(sample / "rank-0.db", local / f"{sample.name}-{i:04d}" / "rank-0.db")
        ls_local = statistics.median(_timed([GPULENS, "ls", str(local), "--json"], env) for _ in range(3))
        print(f"gpulens ls {store} ({args.runs} runs): cold median {statistics.median(c for c, _ in ls):.2f} s "
              f"(target <= 10), warm {statistics.median(w for _, w in ls):.2f} s (target <= 2); "
              f"the same runs in a local folder: {ls_local:.2f} s")
        from gpulens.profiler.store.mirror import sync_runs

        os.environ["GPULENS_CACHE"] = str(tmp / "dash-cache")
        t0 = time.perf_counter()
        root, _ = sync_runs(store)
        mirrored = time.perf_counter() - t0
        fill, warm_page, rows = _runs_page(root)
        print(f"dashboard: the whole store mirrored in {mirrored:.0f} s; runs page: {rows} rows, all analysed after "
              f"{fill:.0f} s, then each refresh {warm_page:.3f} s warm (target <= 1)")
        shutil.rmtree(root, ignore_errors=True)

        for nodes in (1, args.nodes):
            t0 = time.perf_counter()
            run = _build_job(tmp, nodes, 8, args.hours)
            built = time.perf_counter() - t0
            pub = _publish_job(run, store)
            url = f"{store}/{run.name}"
            cache = tmp / f"cache-{run.name}"
            cold = _timed([GPULENS, "report", url, "--json"], {**env, "GPULENS_CACHE": str(cache)})
            warm = statistics.median(_timed([GPULENS, "report", url, "--json"], {**env, "GPULENS_CACHE": str(cache)})
                                     for _ in range(3))
            local_report = statistics.median(_timed([GPULENS, "report", str(run), "--json"], env) for _ in range(3))
            from gpulens.profiler.store.remote import cache_dir_for

            os.environ["GPULENS_CACHE"] = str(cache)
            pages = [_run_page(cache_dir_for(store), run.name) for _ in range(3)]
            page, payload = statistics.median(p[0] for p in pages), pages[0][1]
            print(json.dumps({"run": run.name, "ranks": nodes * 8, "gpus": nodes * 8, "hours": args.hours,
                              "written_s": round(built), "published_s": round(pub, 1),
                              "report_cold_s": round(cold, 2), "report_warm_s": round(warm, 2),
                              "report_local_s": round(local_report, 2), "run_page_s": round(page, 3),
                              "run_page_bytes": payload}))
            shutil.rmtree(run, ignore_errors=True)
    finally:
        server.kill()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
