"""Claim: gpulens parses and fully analyses a trace >= 5x faster than HolisticTraceAnalysis, in less memory.

For a real trace (``--trace``; by default the largest one recorded in
``sample_runs/``; the published figures used HolisticTraceAnalysis's own
35 MB test trace ``tests/data/trace_diff/control``) and for a synthetic large
trace (>= 200 MB of JSON, made by replicating that real trace with shifted
timestamps and ids), each tool runs in its own fresh process:

- gpulens: load_trace + analyze() (kernel table, tensor cores, HTA temporal
  breakdown, per-stream breakdown, idle attribution, launch and sync stats,
  memcpy, CPU ops, the plugin's GPU summary and step breakdown);
- HTA: TraceAnalysis(trace_dir) + get_temporal_breakdown +
  get_gpu_kernel_breakdown.

Prints wall time and peak RSS of both and the ratios.

``--end-to-end``: what a user runs instead -- ``gpulens import TRACE`` then
``gpulens report RUN --json`` (two fresh processes; the import computes the
report and keeps it beside the run, the second command prints it) against HTA's load + temporal + kernel
breakdown, in ``--pairs`` alternating pairs: the median speed-up with a 95 %
bootstrap interval, and both peak RSS.  ``--end-to-end --synthetic --synthetic-mb 1000``: the same on a
plain-JSON trace of that size made from ``--trace`` (written copy by copy, in bounded memory).
"""
from __future__ import annotations

import argparse
import gzip
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SAMPLE_RUNS = Path(__file__).resolve().parent.parent / "sample_runs"
DEFAULT = max(SAMPLE_RUNS.glob("*/traces/*.pt.trace.json.gz"), key=lambda p: p.stat().st_size, default=None)

# this process' peak RSS: ru_maxrss would carry the forking parent's (this script's) over from before exec
HWM = """
import re
def hwm_kib():
    return int(re.search(r"VmHWM:\\s*(\\d+)", open("/proc/self/status").read()).group(1))
"""
GPULENS = HWM + """
import sys, time
t0 = time.perf_counter()
from gpulens.profiler.analysis.trace import load_trace
from gpulens.profiler.analysis.trace.analysis import analyze
a = analyze(load_trace(sys.argv[1]))
print(time.perf_counter() - t0, hwm_kib(), a.temporal_breakdown.idle_pct)
"""
HTA = HWM + """
import sys, time, logging, warnings
warnings.simplefilter("ignore"); logging.disable(logging.WARNING)
t0 = time.perf_counter()
from hta.trace_analysis import TraceAnalysis
t = TraceAnalysis(trace_dir=sys.argv[1])
tb = t.get_temporal_breakdown(visualize=False)
t.get_gpu_kernel_breakdown(visualize=False)
print(time.perf_counter() - t0, hwm_kib(), tb.iloc[0]["idle_time_pctg"])
"""


def synthesize(src: Path, dest: Path, target_mb: float, rank: int | None = None, world: int = 1) -> float:
    """Write ``src``'s events again and again along time until the JSON is >= target_mb (MB, 1e6 bytes).

    Each copy shifts timestamps past the previous one and moves correlation / external ids and step
    numbers out of the earlier copies' range, so the analysis sees one long trace, not overlapping ones.
    Written copy by copy (gzip level 1 when ``dest`` ends in .gz): a gigabyte needs no gigabyte of memory.
    """
    data = json.loads(gzip.decompress(src.read_bytes()) if src.suffix == ".gz" else src.read_bytes())
    events = data.pop("traceEvents")
    if rank is not None:  # one rank of a job, as the profiler names it on each rank
        data["distributedInfo"] = {**(data.get("distributedInfo") or {}), "rank": rank, "world_size": world,
                                   "backend": "nccl"}
    ts = [e["ts"] for e in events if isinstance(e.get("ts"), (int, float))]
    span = max(ts) - min(ts) + 1000
    opener = (lambda p: gzip.open(p, "wb", compresslevel=1)) if dest.suffix == ".gz" else (lambda p: open(p, "wb"))
    written = 0
    with opener(dest) as fh:
        head = json.dumps(data)[:-1] + (', ' if data else '') + '"traceEvents": [\n'
        written += fh.write(head.encode())
        c = 0
        while written < target_mb * 1e6:
            out = []
            for e in events:
                e2 = dict(e)
                if "ts" in e2 and isinstance(e2["ts"], (int, float)):
                    e2["ts"] = e2["ts"] + c * span
                if c and "id" in e2 and isinstance(e2["id"], int):
                    e2["id"] = e2["id"] + c * 10_000_000
                args = e2.get("args")
                if c and isinstance(args, dict):
                    args = dict(args)
                    for key in ("correlation", "External id", "external id"):
                        if isinstance(args.get(key), int) and args[key] >= 0:
                            args[key] = args[key] + c * 10_000_000
                    e2["args"] = args
                name = e2.get("name")
                if c and isinstance(name, str) and name.startswith("ProfilerStep#"):
                    e2["name"] = f"ProfilerStep#{int(name.split('#')[1]) + c * 100}"
                out.append(json.dumps(e2))
            written += fh.write(((",\n" if c else "") + ",\n".join(out)).encode())
            c += 1
        written += fh.write(b"\n]}\n")
    return written / 1e6


def run(code: str, arg: str) -> tuple[float, float, float]:
    out = subprocess.run([sys.executable, "-c", code, arg], capture_output=True, text=True, check=True, env=ENV)
    wall, rss_kb, idle = out.stdout.strip().splitlines()[-1].split()
    return float(wall), float(rss_kb) / 1024, float(idle)


def compare(label: str, trace: Path, mb: float) -> None:
    with tempfile.TemporaryDirectory() as hta_dir:
        os.symlink(trace.resolve(), Path(hta_dir) / trace.name)
        g_wall, g_rss, g_idle = run(GPULENS, str(trace))
        h_wall, h_rss, h_idle = run(HTA, hta_dir)
    print(f"{label} ({mb:.0f} MB of JSON)")
    print(f"  gpulens  {g_wall:7.2f} s  peak RSS {g_rss:8.0f} MiB   idle {g_idle:.2f}%")
    print(f"  HTA      {h_wall:7.2f} s  peak RSS {h_rss:8.0f} MiB   idle {h_idle:.2f}%")
    print(f"  speed-up {h_wall / g_wall:.1f}x   memory ratio (HTA / gpulens) {h_rss / g_rss:.1f}x")


#: Both tools run as installed code does, from bytecode caches (pip writes them at install).  Where
#: PYTHONDONTWRITEBYTECODE is set (this machine sets it), a checkout of gpulens would compile its own sources
#: in every process while HTA's site-packages keep theirs: a handicap no installed gpulens has.
ENV = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}


def timed(argv: list[str]) -> tuple[float, float, str]:
    """Wall seconds, peak RSS (MiB) and stdout of a command in a fresh process."""
    t0 = time.perf_counter()
    proc = subprocess.run(["/usr/bin/time", "-f", "%M", *argv], capture_output=True, text=True, env=ENV)
    if proc.returncode != 0:
        sys.exit(f"trace_analysis.py: {argv[0]} failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
    return time.perf_counter() - t0, float(proc.stderr.strip().splitlines()[-1]) / 1024, proc.stdout


def end_to_end(trace: Path, pairs: int, one_process: bool = False) -> None:
    from stats import fmt_ci

    gpulens = str(Path(sys.executable).with_name("gpulens"))
    ratios, ours, theirs, rss_ours, rss_theirs = [], [], [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        hta_dir = Path(tmp) / "hta"
        hta_dir.mkdir()
        os.symlink(trace.resolve(), hta_dir / trace.name)
        for i in range(-1, pairs):  # pair -1 warms both up (bytecode caches, the page cache) and is not counted
            def gl(runs: Path = Path(tmp) / f"runs{i}") -> tuple[float, float]:
                if one_process:  # trace to figures in one command
                    t, r, _ = timed([gpulens, "import", str(trace), "--runs-dir", str(runs), "--report", "--json"])
                    return t, r
                t1, r1, out = timed([gpulens, "import", str(trace), "--runs-dir", str(runs)])
                t2, r2, _ = timed([gpulens, "report", out.strip(), "--json"])
                return t1 + t2, max(r1, r2)

            def ht() -> tuple[float, float]:
                t, r, _ = timed([sys.executable, "-c", HTA, str(hta_dir)])
                return t, r

            (g, gr), (h, hr) = (gl(), ht()) if i % 2 == 0 else tuple(reversed((ht(), gl())))
            if i < 0:
                continue
            ours.append(g)
            theirs.append(h)
            rss_ours.append(gr)
            rss_theirs.append(hr)
            ratios.append(h / g)
    med = lambda v: sorted(v)[len(v) // 2]  # noqa: E731
    what = "import --report --json" if one_process else "import + report --json"
    print(f"{trace.name}: gpulens {what} {med(ours):.2f} s (peak RSS {max(rss_ours):.0f} MiB); "
          f"HTA load + temporal + kernel breakdown {med(theirs):.2f} s (peak RSS {max(rss_theirs):.0f} MiB)")
    print("  " + fmt_ci("speed-up (HTA time / gpulens time)", ratios))


def multi_rank(src: Path, ranks: int, mb: float) -> None:
    """``gpulens import`` of a job's ``ranks`` traces of ``mb`` MB each, then its report: time, peak RSS and
    the per-rank and cross-rank figures (HTA is not run: it would hold every rank at once, ~6x each)."""
    gpulens = str(Path(sys.executable).with_name("gpulens"))
    with tempfile.TemporaryDirectory() as tmp:
        t0, paths = time.time(), []
        for r in range(ranks):
            paths.append(Path(tmp) / f"rank-{r}.pt.trace.json")
            written = synthesize(src, paths[-1], mb, rank=r, world=ranks)
        print(f"({ranks} rank traces of {written:.0f} MB written in {time.time() - t0:.0f} s)")
        t1, r1, out = timed([gpulens, "import", *map(str, paths), "--runs-dir", str(Path(tmp) / "runs")])
        t2, r2, report = timed([gpulens, "report", out.strip(), "--json"])
    doc = json.loads(report)
    print(f"{ranks} x {written:.0f} MB: gpulens import {t1:.1f} s (peak RSS {r1:.0f} MiB), "
          f"report --json {t2:.1f} s (peak RSS {r2:.0f} MiB)")
    for row in doc.get("ranks", []):
        print("  rank", {k: row.get(k) for k in ("rank", "node_rank", "steps", "step_time_median_s")})
    print("  suggestions:", [s["id"] for s in doc.get("suggestions", {}).get("suggestions", [])])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trace", type=Path, default=DEFAULT, help="a gzipped Kineto trace (default: largest in sample_runs/)")
    ap.add_argument("--synthetic-mb", type=float, default=200.0,
                    help="size of the synthetic trace made from --trace (MB of JSON)")
    ap.add_argument("--end-to-end", action="store_true", help="gpulens import + report vs HTA, in pairs")
    ap.add_argument("--synthetic", action="store_true",
                    help="with --end-to-end: on a synthetic trace of --synthetic-mb (plain JSON) made from --trace")
    ap.add_argument("--pairs", type=int, default=8)
    ap.add_argument("--one-process", action="store_true",
                    help="with --end-to-end: time `gpulens import --report --json` (one process) for gpulens")
    ap.add_argument("--ranks", type=int, default=0,
                    help="import a job of this many synthetic rank traces of --synthetic-mb each (gpulens only)")
    args = ap.parse_args()
    if args.ranks < 0 or args.pairs < 1 or args.synthetic_mb <= 0:
        sys.exit("trace_analysis.py: --ranks must be >= 0, --pairs >= 1 and --synthetic-mb > 0")
    if args.trace is None or not args.trace.exists():
        sys.exit(f"trace_analysis.py: trace {args.trace} not found; pass --trace PATH.pt.trace.json.gz")
    if args.ranks:
        multi_rank(args.trace, args.ranks, args.synthetic_mb)
        return
    if args.end_to_end and args.synthetic:
        with tempfile.TemporaryDirectory() as tmp:
            big = Path(tmp) / "synthetic.pt.trace.json"
            t0 = time.time()
            mb = synthesize(args.trace, big, args.synthetic_mb)
            print(f"(synthetic trace of {mb:.0f} MB written in {time.time() - t0:.0f} s)")
            end_to_end(big, args.pairs, args.one_process)
        return
    if args.end_to_end:
        end_to_end(args.trace, args.pairs, args.one_process)
        return
    raw_mb = len(gzip.decompress(args.trace.read_bytes())) / 1e6
    compare(f"real trace {args.trace.name}", args.trace, raw_mb)
    with tempfile.TemporaryDirectory() as tmp:
        big = Path(tmp) / "synthetic.pt.trace.json.gz"
        t0 = time.time()
        mb = synthesize(args.trace, big, args.synthetic_mb)
        print(f"(synthetic trace written in {time.time() - t0:.0f} s)")
        compare("synthetic trace", big, mb)


if __name__ == "__main__":
    main()
