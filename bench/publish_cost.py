"""Claim: a publishing round sends bytes in proportion to the rows added since the last one, whatever the run's
size, and the store is at most one round behind the run.

Two node databases written by the real writer (bench/synthetic.py: 8 H100-shaped GPUs and their host, 4
steps/s), one ``--hours`` long (default 24) and one fresh, each published to a ``file://`` store by the real
publisher.  Then, in interleaved pairs, both gain the same ``--every`` seconds of samples and steps and each
publishes one round.  Printed: the bytes per round of the long run over the fresh one's (ratio ~1: only new
rows go), the bytes and seconds a round takes (a round's seconds plus the interval are the store's lag behind
the run), and what the whole-database snapshots published before would have cost at the same budget.

Second claim (``--loop-pairs``, 0 to skip): publishing costs the training loop nothing measurable.  The
nanoGPT-like character GPT under ``gpulens run``, local only against ``--store file://...`` publishing every
second (10x the default), in alternating order; a pair's ratio is the median iteration time with the store
over the one without.

    python bench/publish_cost.py --hours 24 --pairs 30 --loop-pairs 10
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from stats import fmt_ci
from synthetic import SyntheticRank, write_rank

from gpulens.profiler.store.publisher import DEFAULT_BUDGET_BPS, DEFAULT_EVERY_S, Publisher, Target


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hours", type=float, default=24.0, help="length of the long run (default 24)")
    ap.add_argument("--gpus", type=int, default=8)
    ap.add_argument("--pairs", type=int, default=30)
    ap.add_argument("--every", type=float, default=DEFAULT_EVERY_S, help="seconds of run per round (default 10)")
    ap.add_argument("--loop-pairs", type=int, default=10, help="pairs of the training-loop claim (0: skip it)")
    args = ap.parse_args()
    rounds(args)
    if args.loop_pairs:
        loop_cost(args.loop_pairs)


def loop_cost(pairs: int, iters: int = 150, skip: int = 15) -> None:
    """The training loop's iteration time with a store publishing every second, over without one."""
    import os

    from foreign_scripts import arms, clean_env, iteration_times, runs_dir

    ratios, plain_ms = [], []
    with runs_dir() as root, tempfile.TemporaryDirectory(prefix="gpulens-store-") as store:
        env = clean_env(1)
        store_env = {**env, "GPULENS_PUBLISH_EVERY": "1"}
        for i in range(pairs):
            _, local = arms("char-gpt", iters, root)
            _, stored = arms("char-gpt", iters, root, ["--store", f"file://{store}"])
            out = {}
            order = (("stored", stored, store_env), ("local", local, env))
            for name, argv, e in (order if i % 2 else order[::-1]):
                out[name] = statistics.median(iteration_times(argv, e)[skip:])
            ratios.append(out["stored"] / out["local"])
            plain_ms.append(out["local"] * 1e3)
    print(fmt_ci(f"char-gpt, 1 thread, local median iteration {statistics.median(plain_ms):.1f} ms; with a store "
                 f"(a round every 1 s, from the publisher's own process) / local only", ratios, target=1.02))
    print(f"  ({os.cpu_count()} CPUs: the publisher runs at nice 10 beside the loop)")


def rounds(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(prefix="gpulens-publish-") as tmp:
        root = Path(tmp)
        t0 = time.perf_counter()
        long = write_rank(root / "long" / "rank-0.db", args.hours * 3600, gpus=args.gpus, start=1.7e9)
        built = time.perf_counter() - t0
        size = (root / "long" / "rank-0.db").stat().st_size
        fresh = SyntheticRank(root / "fresh" / "rank-0.db", gpus=args.gpus, start=1.7e9 + args.hours * 3600)
        store = f"file://{root / 'store'}"
        pubs = {"long": Publisher(store, root / "long" / "rank-0.db", Target("long", 0, 0)),
                "fresh": Publisher(store, root / "fresh" / "rank-0.db", Target("fresh", 0, 0))}
        t0 = time.perf_counter()
        pubs["long"].round()  # a publisher that starts late sends the backlog once
        backlog = (pubs["long"].last.bytes, time.perf_counter() - t0)
        fresh.advance(args.every)
        pubs["fresh"].round()
        ratios: list[float] = []
        sent: dict[str, list[int]] = {"long": [], "fresh": []}
        took: dict[str, list[float]] = {"long": [], "fresh": []}
        for i in range(args.pairs):
            for name in (("long", "fresh") if i % 2 else ("fresh", "long")):
                (long if name == "long" else fresh).advance(args.every)
                t0 = time.perf_counter()
                assert pubs[name].round()
                took[name].append(time.perf_counter() - t0)
                sent[name].append(pubs[name].last.bytes)
            ratios.append(sent["long"][-1] / sent["fresh"][-1])
        long.close()
        fresh.close()
    print(f"long run: {args.hours:g} h x {args.gpus} GPUs, {size / 1e6:,.0f} MB database (written in {built:.0f} s); "
          f"its first round sent the backlog: {backlog[0] / 1e6:,.1f} MB in {backlog[1]:.1f} s")
    print(fmt_ci(f"bytes per {args.every:g} s round, {args.hours:g} h run / fresh run", ratios, target=1.1))
    for name in ("long", "fresh"):
        b, s = sorted(sent[name]), sorted(took[name])
        print(f"  {name:5s}: median {statistics.median(b) / 1024:,.1f} KiB per round (max {b[-1] / 1024:,.1f} KiB, "
              f"a merge of {16} segments), round takes median {statistics.median(s) * 1e3:,.0f} ms, "
              f"max {s[-1] * 1e3:,.0f} ms -> the store is at most {args.every + s[-1]:.1f} s behind the run")
    print(f"  before (a whole-database snapshot per round): {size / 1e6:,.0f} MB per round; at the default "
          f"{DEFAULT_BUDGET_BPS / 1e6:g} MB/s budget one round every {size / DEFAULT_BUDGET_BPS / 60:,.0f} min")


if __name__ == "__main__":
    main()
