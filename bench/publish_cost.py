"""Claim: publishing to a run store costs the training loop nothing measurable (ratio within noise of 1),
and only what changed is sent.

Arms, in alternating order, on the nanoGPT-like character GPT under ``gpulens run``: local only, and
with ``--store file://...`` publishing every second (10x the default rate, to make any cost visible).
A pair's ratio is the median iteration time with the store over the one without (start-up left out).
Printed: the median ratio over pairs with a 95 % bootstrap interval, and the bytes published per
second of training (snapshots only when the database changed, each trace once).

    python bench/publish_cost.py --pairs 10
"""
from __future__ import annotations

import argparse
import os
import statistics
import tempfile
from pathlib import Path

from foreign_scripts import arms, clean_env, iteration_times, runs_dir
from stats import fmt_ci

SKIP = 15


def store_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", type=int, default=10)
    ap.add_argument("--iters", type=int, default=150)
    ap.add_argument("--every", type=float, default=1.0, help="seconds between publishes in the store arm")
    args = ap.parse_args()
    ratios, rates, plain_ms = [], [], []
    with runs_dir() as root, tempfile.TemporaryDirectory(prefix="gpulens-store-") as store:
        env = clean_env(1)
        store_env = {**env, "GPULENS_PUBLISH_EVERY": str(args.every)}
        for i in range(args.pairs):
            plain, local = arms("char-gpt", args.iters, root)
            _, stored = arms("char-gpt", args.iters, root, ["--store", f"file://{store}"])
            out = {}
            before = store_bytes(Path(store))
            order = (("stored", stored, store_env), ("local", local, env))
            for name, argv, e in (order if i % 2 else order[::-1]):
                times = iteration_times(argv, e)
                out[name] = (statistics.median(times[SKIP:]), sum(times))
            ratios.append(out["stored"][0] / out["local"][0])
            plain_ms.append(out["local"][0] * 1e3)
            # what the store arm's run left in the store: its final objects (uploads overwrite, so the
            # bytes sent are at least this; the publisher sends a snapshot only when rows were added)
            rates.append((store_bytes(Path(store)) - before) / max(out["stored"][1], 1e-9))
    print(fmt_ci(f"char-gpt, 1 thread, local median iteration {statistics.median(plain_ms):.1f} ms; "
                 f"with a store (publish every {args.every:g} s) / local only", ratios, target=1.02))
    print(f"store growth per second of training: median {statistics.median(rates) / 1024:.1f} KiB/s "
          f"(one run's database and traces, {os.cpu_count()} CPUs)")


if __name__ == "__main__":
    main()
