"""The ``gpulens`` command line.

Bad input (a missing run, a corrupt database, a bad argument) ends with one
line on stderr and exit status 2 -- never a traceback.  Set GPULENS_DEBUG=1
to see tracebacks of unexpected errors.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from gpulens import fmt
from gpulens.profiler.errors import GpulensError

if TYPE_CHECKING:
    from gpulens.profiler.analysis.report import Report

EXIT_OK, EXIT_INTERNAL, EXIT_BAD_INPUT = 0, 1, 2
EXIT_REGRESSION = 1  # gpulens compare --fail-on: a rule broken beyond the noise


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # one line instead of usage + message
        self.exit(EXIT_BAD_INPUT, f"gpulens: error: {message} (see '{self.prog} --help')\n")


def _build_parser() -> argparse.ArgumentParser:
    from gpulens import __version__

    parser = _Parser(prog="gpulens", description="GPU monitoring and profiling for PyTorch training.")
    parser.add_argument("--version", action="version", version=f"gpulens {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    rep = sub.add_parser("report", help="summary of one run in the terminal (or --json)")
    rep.add_argument("run", help="run directory, rank-N.db file, run id under the runs root, or STORE_URL/RUN_ID")
    rep.add_argument("--json", action="store_true", help="print the figures as JSON (stable keys)")
    rep.add_argument("--runs-dir", help="runs root for run ids (default $GPULENS_DIR or ./gpulens-runs)")

    adv = sub.add_parser("advise", help="ranked suggestions for one run (or --json)")
    adv.add_argument("run", help="run directory, rank-N.db file, run id under the runs root, or STORE_URL/RUN_ID")
    adv.add_argument("--json", action="store_true", help="print the suggestions as JSON (stable schema)")
    adv.add_argument("--runs-dir", help="runs root for run ids (default $GPULENS_DIR or ./gpulens-runs)")

    cmp = sub.add_parser("compare", help="two runs side by side with noise-aware verdicts; --fail-on makes it a "
                                         "CI regression gate (exit 1 on a real regression)")
    cmp.add_argument("base", help="the baseline run (directory, run id, or STORE_URL/RUN_ID)")
    cmp.add_argument("candidate", help="the run to judge against it")
    cmp.add_argument("--fail-on", metavar="RULES",
                     help='exit 1 when a rule is broken beyond the noise, e.g. "step_time>+5%%,peak_memory>+10%%,'
                          'data_wait>+3pp,throughput<-5%%,status" (status: either run did not finish)')
    cmp.add_argument("--json", action="store_true", help="print the comparison (and the gate) as JSON")
    cmp.add_argument("--runs-dir", help="runs root for run ids (default $GPULENS_DIR or ./gpulens-runs)")

    exp_ = sub.add_parser("export", help="a run's tables as parquet or CSV files (steps, series, kernels, "
                                         "suggestions) for pandas, DuckDB, spreadsheets")
    exp_.add_argument("run", help="run directory, run id under the runs root, or STORE_URL/RUN_ID")
    exp_.add_argument("--format", default="parquet", choices=("parquet", "csv"), help="file format (default parquet)")
    exp_.add_argument("--what", default="steps,series,kernels,suggestions", metavar="TABLES",
                      help="comma-separated tables (default: steps,series,kernels,suggestions)")
    exp_.add_argument("--out", metavar="DIR", help="output directory (default ./<run id>-export)")
    exp_.add_argument("--runs-dir", help="runs root for run ids (default $GPULENS_DIR or ./gpulens-runs)")

    imp = sub.add_parser("import", help="turn PyTorch profiler chrome traces (one per rank) into a run")
    imp.add_argument("traces", nargs="+", help="trace files (.json or .json.gz), one per rank")
    imp.add_argument("--name", help="run name (default: from the first file name)")
    imp.add_argument("--runs-dir", help="runs root (default $GPULENS_DIR or ./gpulens-runs)")
    imp.add_argument("--report", action="store_true",
                     help="then print the run's report, as `gpulens report RUN` would (the run's folder goes to "
                          "stderr)")
    imp.add_argument("--json", action="store_true", help="with --report: the report as JSON")

    prf = sub.add_parser("profile", help="profile the next N steps of a running job, without a restart: a "
                                         "torch.profiler window on the chosen ranks (trigger: on demand)")
    prf.add_argument("run", help="run directory, or run id under the runs root, of a running job; or "
                                 "STORE_URL/RUN_ID of one that publishes to a store (asked through the store)")
    prf.add_argument("--steps", type=int, default=5, help="steps to record after one warm-up step (default 5)")
    prf.add_argument("--rank", default="all", help="a rank number, or all (default)")
    prf.add_argument("--memory", action="store_true",
                     help="also save a CUDA allocator snapshot at the next step boundary (for pytorch.org/memory_viz)")
    prf.add_argument("--no-wait", action="store_true",
                     help="ask and return; the answers land in RUN/requests/ (a store's run: STORE/RUN/requests/)")
    prf.add_argument("--timeout", type=float, default=300.0,
                     help="seconds to wait for the windows to be saved (default 300)")
    prf.add_argument("--runs-dir", help="runs root for run ids (default $GPULENS_DIR or ./gpulens-runs)")

    ls = sub.add_parser("ls", help="list the runs under a runs root or a store URL")
    ls.add_argument("runs_dir", nargs="?", help="runs root or store URL (default $GPULENS_DIR or ./gpulens-runs)")
    pub = sub.add_parser("publish", help="upload a finished local run to a run store (s3://, gs://, file://)")
    pub.add_argument("run_dir", help="the run's directory")
    pub.add_argument("url", help="store URL, e.g. s3://bucket/gpulens-runs")
    ls.add_argument("--json", action="store_true", help="print the list as JSON")
    dsh = sub.add_parser("dashboard", help="serve the web dashboard (http://127.0.0.1:8050 by default)")
    dsh.add_argument("runs_dir", nargs="?",
                     help="runs root (default $GPULENS_DIR or ./gpulens-runs; with no runs there, the sample runs)")
    dsh.add_argument("--host", default="127.0.0.1",
                     help="address to bind (default 127.0.0.1; anything else needs a password or a token)")
    dsh.add_argument("--port", type=int, default=8050, help="TCP port (default 8050; 0 picks a free one)")
    dsh.add_argument("--auth", metavar="USER:PASSWORD",
                     help="require HTTP Basic authentication (visible in the process list: prefer $GPULENS_AUTH "
                          "or --auth-file)")
    dsh.add_argument("--auth-file", metavar="FILE", help="require HTTP Basic authentication; FILE holds USER:PASSWORD")
    dsh.add_argument("--token", help="require this bearer token (or ?token=... once; visible in the process list: "
                                      "prefer $GPULENS_TOKEN or --token-file)")
    dsh.add_argument("--token-file", metavar="FILE", help="require the bearer token FILE holds")
    dsh.add_argument("--allow-host", action="append", default=[], metavar="NAME",
                     help="also accept requests for this Host name (reverse proxies, DNS names)")

    run = sub.add_parser("run", help="run a training command unmodified with recording on: "
                                     "gpulens run -- python train.py",
                         description="Run a training script unmodified with recording on. Steps and phases are "
                                     "found automatically (optimizer.step, backward, DataLoader, root modules); "
                                     "torchrun ranks record into one run. Exit status and signals pass through.")
    run.add_argument("-m", dest="module", metavar="MODULE", help="run a module, as python -m MODULE")
    run.add_argument("--name", help="run name (default: the script or module name)")
    run.add_argument("--run-id", help="run id (default: <name>-<date>-<time>-<random>)")
    run.add_argument("--runs-dir", help="runs root (default $GPULENS_DIR or ./gpulens-runs)")
    run.add_argument("--store", metavar="URL", help="also publish the run to this store every 10 s "
                     "(s3://bucket/prefix, gs://..., file:///shared/runs; default $GPULENS_STORE)")
    run.add_argument("--batch-size", type=int, help="samples per step when batches are not tensors")
    run.add_argument("--profile-every", type=int, metavar="N",
                     help="torch.profiler window every N steps (default 500; 0 turns windows off)")
    run.add_argument("--no-flops", action="store_true", help="do not count the FLOPs of one step")
    run.add_argument("--prometheus-port", type=int, metavar="PORT",
                     help="serve Prometheus metrics on PORT (+ local rank under torchrun)")
    run.add_argument("--prometheus-addr", default=None, metavar="ADDR",
                     help="address for the metrics endpoint (default 127.0.0.1)")
    run.add_argument("--what-if", metavar="WHAT",
                     help="measure a change for a short stretch of the real loop: synthetic-data (replay cached "
                          "batches: step time without input waits), batch-size=N, or num-workers=N (the loop's next "
                          "batches, same order, loaded by N DataLoader workers), autocast=bf16 (the model's "
                          "forward in bf16 mixed precision), channels-last (the model and its image inputs in "
                          "NHWC) or optimizer=fused|foreach (the optimizers' steps with that torch "
                          "implementation); :at=STEP,steps=N to place it "
                          "(default at=20, steps=20); those steps stay out of the run's own throughput")
    run.add_argument("--no-auto-capture", action="store_true",
                     help="no automatic profiler window of a lasting slowdown or of the first non-finite loss")
    run.add_argument("--nvtx", action="store_true",
                     help="mark steps and phases as NVTX ranges for Nsight Systems (on by itself under nsys)")
    run.add_argument("--quiet", action="store_true", help="no gpulens messages unless something fails")
    run.add_argument("--no-advise", action="store_true", help="do not print the top suggestions at the end")
    run.add_argument("--dry-run", action="store_true", help="print the command and environment, run nothing")
    run.add_argument("command_args", nargs="*", metavar="-- COMMAND ARGS",
                     help="the training command (or SCRIPT.py ARGS, or -m MODULE ARGS)")

    exp = sub.add_parser("exporter",
                         help="standalone Prometheus exporter of this node's GPUs and host (dcgm-exporter names)")
    exp.add_argument("--port", type=int, default=9400, help="TCP port (default 9400, as dcgm-exporter)")
    exp.add_argument("--addr", default="127.0.0.1",
                     help="address to bind (default 127.0.0.1; 0.0.0.0 to let another host scrape it)")
    exp.add_argument("--interval", type=float, default=1.0, help="seconds between readings (default 1)")

    demo = sub.add_parser("demo", help="train a small model on the CPU and follow it live in the dashboard")
    demo.add_argument("--port", type=int, default=8050, help="TCP port (default 8050)")
    demo.add_argument("--seconds", type=float, default=600.0, help="how long the demo trains (default 600)")
    demo.add_argument("--runs-dir", help="where the demo run goes (default: a new temporary directory)")
    return parser


def sample_runs_dir() -> Path | None:
    """The repository's sample_runs/ (a source checkout or editable install), if there is one."""
    from pathlib import Path

    import gpulens

    candidate = Path(gpulens.__file__).resolve().parent.parent / "sample_runs"
    return candidate if candidate.is_dir() else None


def cmd_dashboard(args: argparse.Namespace) -> int:
    from gpulens.dashboard.serve import prepare, serve
    from gpulens.profiler import list_runs, runs_root
    from gpulens.profiler.store.mirror import start_mirror
    from gpulens.profiler.store.remote import is_url

    store = args.runs_dir if is_url(args.runs_dir) else None
    root = start_mirror(store) if store else runs_root(args.runs_dir)
    fallback = None
    if args.runs_dir is None and not list_runs(root):
        fallback = sample_runs_dir()
        if fallback is not None:
            print(f"gpulens: no runs in {fmt.shown_path(root)} yet; showing the sample runs in "
                  f"{fmt.shown_path(fallback)} until the first one is recorded there", file=sys.stderr)
    from gpulens.dashboard.security import auth_setting, token_setting

    auth, source, warning = auth_setting(args.auth, args.auth_file)
    token, _, token_warning = token_setting(args.token, args.token_file)
    access = prepare(fallback or root, args.host, args.port, auth, token, args.allow_host, auth_source=source)
    for line in (warning, token_warning):  # after the checks: bad input stays one line
        if line:
            print(line, file=sys.stderr)
    serve(root, access, fallback=fallback, store=store)
    return EXIT_OK


def cmd_publish(args: argparse.Namespace) -> int:

    from gpulens.profiler import resolve_run
    from gpulens.profiler.store.publisher import publish_run
    from gpulens.profiler.store.remote import is_url, redact

    if not is_url(args.url):
        raise GpulensError(f"{redact(args.url)}: not a store URL (s3://bucket/prefix, gs://..., file:///shared/runs)")
    run_dir = resolve_run(args.run_dir)
    stats = publish_run(run_dir, args.url)
    print(f"gpulens: published {run_dir.name}: {stats.objects} object(s), {fmt.bytes_(stats.bytes)} "
          f"-> {redact(args.url.rstrip('/'))}/{run_dir.name}")
    return EXIT_OK


def cmd_demo(args: argparse.Namespace) -> int:
    from gpulens.demo import run_demo

    return run_demo(args.port, args.seconds, args.runs_dir)


def cmd_run(args: argparse.Namespace) -> int:
    from gpulens.hooks.launcher.launch import execute, interpreter_note, prepare

    if args.profile_every is not None and args.profile_every < 0:
        raise GpulensError("--profile-every must be 0 (off) or a positive number of steps")
    for flag in ("prometheus_port", "batch_size"):
        value = getattr(args, flag)
        if value is not None and value <= 0:
            raise GpulensError(f"--{flag.replace('_', '-')} must be a positive number")
    if args.what_if:
        from gpulens.hooks.track.whatif import parse_what_if

        parse_what_if(args.what_if)  # a bad value is one line and exit 2 here, not a warning in the run
    launch = prepare(args.command_args, module=args.module, name=args.name, runs_dir=args.runs_dir, run_id=args.run_id,
                     batch_size=args.batch_size, profile_every=args.profile_every,
                     count_flops=False if args.no_flops else None, prometheus_port=args.prometheus_port,
                     prometheus_addr=args.prometheus_addr, quiet=args.quiet or None,
                     advise=False if args.no_advise else None, check_script=not args.dry_run,
                     what_if=args.what_if, nvtx=True if args.nvtx else None,
                     auto_capture=False if args.no_auto_capture else None)
    if args.store:
        from gpulens.profiler.store.remote import ENV_STORE, is_url, redact

        if not is_url(args.store):
            raise GpulensError(f"--store {redact(args.store)}: not a store URL (s3://bucket/prefix, "
                               "file:///shared/runs)")
        launch.env[ENV_STORE] = args.store
    note = interpreter_note(launch.argv)
    if note:
        print(note, file=sys.stderr)
    if args.dry_run:
        print(" ".join(launch.argv))
        for key in ("PYTHONPATH", "GPULENS_RUN_ID", "GPULENS_AUTORUN"):
            print(f"{key}={launch.env[key]}")
        return EXIT_OK
    if not args.quiet:
        print(f"gpulens: recording run {launch.run_id} into {fmt.shown_path(launch.run_dir)}", file=sys.stderr)
    execute(launch)
    return EXIT_INTERNAL  # not reached: execute() replaces this process


def cmd_exporter(args: argparse.Namespace) -> int:
    from gpulens.profiler.export.prometheus import serve_node

    if args.interval <= 0:
        raise GpulensError("--interval must be a positive number of seconds")
    return serve_node(args.port, args.addr, args.interval)


def cmd_profile(args: argparse.Namespace) -> int:
    from gpulens import profile_request
    from gpulens.profiler import resolve_run
    from gpulens.profiler.store.remote import is_url

    if not args.timeout > 0:
        raise GpulensError("--timeout must be a positive number of seconds")
    if is_url(args.run):  # STORE/RUN: asked through the store, which the job's publishers read
        target = profile_request.check_store(args.run, args.steps, args.rank, args.memory)
    else:
        run_dir = resolve_run(args.run, Path(args.runs_dir) if args.runs_dir else None)
        target = profile_request.check(run_dir, args.steps, args.rank, args.memory)
    request = profile_request.ask(target, args.steps, args.memory)
    print(f"gpulens: asked run {target.run_id} (rank {', '.join(map(str, target.ranks))}) to profile its next "
          f"{args.steps} steps (request {request.id}" + (", through the store" if target.store_url else "") + ")",
          flush=True)
    if args.no_wait:
        return EXIT_OK
    return profile_request.wait(target, request, args.timeout)


def _run_target(run: str, runs_dir: str | None) -> Path:
    """A run argument as a path: a directory, rank file or run id under the runs root, or STORE_URL/RUN_ID
    (fetched into the local cache)."""
    from gpulens.profiler import resolve_run
    from gpulens.profiler.store.remote import is_url

    if is_url(run):
        from gpulens.profiler.store.mirror import local_run  # the segment format, numpy: only for a store

        return local_run(run)
    return resolve_run(run, Path(runs_dir) if runs_dir else None)


def _computed_report(target: Path) -> tuple[Report, str]:
    """The report of the run in ``target`` and its ``--json`` text, kept beside the run when it is settled."""
    from gpulens.profiler import RunAnalysis, open_run
    from gpulens.profiler.analysis import report_cache

    before = report_cache.key(target)
    with open_run(target) as run:
        report = RunAnalysis(run).report()
    text = json.dumps(report.as_dict(), indent=2, default=_json_default)
    report_cache.store(target, report.status, text, before)
    return report, text


def cmd_report(args: argparse.Namespace) -> int:
    from gpulens.profiler.analysis import report_cache

    target = _run_target(args.run, args.runs_dir)
    if args.json:
        kept = report_cache.load(target)  # a settled run's report, printed without numpy, reader or summary
        if kept is not None:
            print(kept)
            return EXIT_OK
    report, text = _computed_report(target)
    if args.json:
        print(text)
    else:
        from gpulens.report_view import render

        render(report)
    return EXIT_OK


def cmd_advise(args: argparse.Namespace) -> int:
    from gpulens.profiler import RunAnalysis, open_run

    with open_run(_run_target(args.run, args.runs_dir)) as run:
        advice = RunAnalysis(run).advice.as_dict()
    if args.json:
        print(json.dumps(advice, indent=2, default=_json_default))
    else:
        from gpulens.report_view import render_advice

        render_advice(advice, full=True)
    return EXIT_OK


def cmd_compare(args: argparse.Namespace) -> int:
    from gpulens.profiler import RunAnalysis, open_run
    from gpulens.profiler.analysis.compare import check, check_fixes, compare, parse_rules, side_of

    rules = parse_rules(args.fail_on) if args.fail_on is not None else []  # bad rules: exit 2 before any work
    sides = []
    proposed: list[dict[str, Any]] = []
    for target in (args.base, args.candidate):
        with open_run(_run_target(target, args.runs_dir)) as run:
            analysis = RunAnalysis(run)
            sides.append(side_of(run, analysis.report(suggestions=False), analysis.data.energy_curves))
            if len(sides) == 1:  # the base's advice: check_fixes takes the changes it proposed, with predictions
                proposed = analysis.advice.as_dict()["suggestions"]
    comparison = compare(sides[0], sides[1])
    check_fixes(comparison, proposed, sides[0], sides[1])
    results = check(comparison, rules)
    failed = [r for r in results if r.failed]
    if args.json:
        out = comparison.as_dict()
        out["gate"] = {"rules": [vars(r) for r in results], "passed": not failed} if rules else None
        print(json.dumps(out, indent=2, default=_json_default))
    else:
        from gpulens.report_view import render_comparison

        render_comparison(comparison, results)
    return EXIT_REGRESSION if failed else EXIT_OK


def cmd_export(args: argparse.Namespace) -> int:
    from gpulens.profiler import RunAnalysis, open_run
    from gpulens.profiler.export.frames import export

    tables = tuple(t.strip() for t in args.what.split(",") if t.strip())
    with open_run(_run_target(args.run, args.runs_dir)) as run:
        out = Path(args.out) if args.out else Path(f"{run.info.id}-export")
        written = export(run, RunAnalysis(run), out, args.format, tables)
    for table, (path, rows) in written.items():
        print(f"{fmt.shown_path(path)}  {rows:,} rows ({table})")
    return EXIT_OK


def cmd_import(args: argparse.Namespace) -> int:
    from gpulens.profiler import runs_root
    from gpulens.profiler.importer import import_traces

    if args.json and not args.report:
        print("gpulens import: --json goes with --report (the report as JSON)", file=sys.stderr)
        return EXIT_BAD_INPUT
    run_dir = import_traces(args.traces, runs_root(args.runs_dir), args.name)
    if not args.report:
        # the report computed now, from the analysis the import just kept beside each trace, and kept beside
        # the run: `gpulens report RUN --json` then prints it at once.  Best effort: the run is imported.
        try:
            _computed_report(run_dir)
        except (GpulensError, OSError) as exc:
            print(f"gpulens: imported, but its report could not be computed yet: {fmt.safe_text(exc)}",
                  file=sys.stderr)
        print(run_dir)
        return EXIT_OK
    # one process from trace to figures: the report reads the analysis the import just kept beside the trace
    print(f"gpulens: imported into {fmt.shown_path(run_dir)}", file=sys.stderr)
    return cmd_report(argparse.Namespace(run=str(run_dir), runs_dir=None, json=args.json))


def cmd_ls(args: argparse.Namespace) -> int:
    from gpulens.profiler import list_runs, open_run, runs_root
    from gpulens.profiler.store.remote import is_url, redact
    from gpulens.profiler.store.runstore import validate_run_id

    rows: list[dict[str, Any]] = []
    shown_root: object
    if is_url(args.runs_dir):
        from gpulens.profiler.store.mirror import index_rows, sync_runs

        index, stats = sync_runs(args.runs_dir, full=False)  # the processes' metadata only: a big store lists fast
        shown_root = redact(args.runs_dir)
        for row in index_rows(index, stats.broken):
            rows.append({"id": fmt.safe_text(row.id), "name": fmt.safe_text(row.name), "status": row.status,
                         "gpus": [fmt.safe_text(g) for g in row.gpus], "start": row.start,
                         "duration_s": row.duration_s, "steps": row.steps,
                         "error": fmt.safe_text(row.error) if row.error else None})
    else:
        root = runs_root(args.runs_dir)
        shown_root = root
        if not root.is_dir():
            raise GpulensError(f"{root}: no such runs directory")
        for path in list_runs(root):
            shown = fmt.safe_text(path.name)
            try:
                validate_run_id(path.name)
                with open_run(path) as run:
                    info = run.info
                    n_steps = len(run.steps())
                    rows.append({"id": info.id, "name": fmt.safe_text(info.name), "status": info.status,
                                 "gpus": [fmt.safe_text(g.get("name")) for g in info.gpus], "start": info.start,
                                 "duration_s": info.duration_s, "steps": n_steps, "error": None})
            except (GpulensError, OSError) as exc:  # one broken run is shown as broken; the rest list
                reason = str(exc) if isinstance(exc, GpulensError) else f"cannot read ({exc.strerror or exc})"
                rows.append({"id": shown, "name": None, "status": "broken", "gpus": [], "start": None,
                             "duration_s": None, "steps": None, "error": fmt.safe_text(reason)})
    if args.json:
        print(json.dumps(rows, indent=2))
        return EXIT_OK
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    table = Table(title=Text(f"runs in {fmt.safe_text(shown_root)}"), title_justify="left")
    for col in ("run", "status", "GPUs", "duration", "steps"):
        table.add_column(col)
    for r in rows:
        gpus = f"{len(r['gpus'])} × {r['gpus'][0]}" if r["gpus"] else "-"
        status = r["status"] if not r["error"] else f"broken: {r['error']}"
        table.add_row(Text(r["id"]), Text(status), Text(gpus), fmt.seconds(r["duration_s"]),
                      str(r["steps"] if r["steps"] is not None else "-"))
    Console(markup=False, emoji=False).print(table)
    return EXIT_OK


def _json_default(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    return str(value)


COMMANDS = {"report": cmd_report, "advise": cmd_advise, "compare": cmd_compare, "export": cmd_export, "ls": cmd_ls,
            "import": cmd_import,
            "dashboard": cmd_dashboard, "demo": cmd_demo, "run": cmd_run, "exporter": cmd_exporter,
            "publish": cmd_publish, "profile": cmd_profile}


def _run_value_flags() -> set[str]:
    """``gpulens run``'s options that take a value, read off its parser (one list, not two)."""
    sub = next(a for a in _build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return {flag for action in sub.choices["run"]._actions if action.nargs != 0 and action.option_strings
            for flag in action.option_strings if flag != "-m"}


def _split_run_args(tokens: list[str], value_flags: set[str] | None = None) -> tuple[list[str], list[str]]:
    """``gpulens run``'s own options, and the command after them (which keeps every option of its own).

    argparse would claim the script's ``--lr 3`` as unknown options of ours;
    the command starts at ``--``, at ``-m MODULE`` or at the first word.
    """
    value_flags = _run_value_flags() if value_flags is None else value_flags
    own: list[str] = []
    i = 0
    while i < len(tokens):
        tok = tokens[i]
        if tok == "--":
            return own, tokens[i + 1:]
        if tok == "-m":
            return own + tokens[i:i + 2], tokens[i + 2:]
        if tok in value_flags:
            own += tokens[i:i + 2]
            i += 2
            continue
        if not tok.startswith("-"):
            return own, tokens[i:]
        own.append(tok)
        i += 1
    return own, []


def main(argv: Sequence[str] | None = None) -> int:
    parser = _build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    command: list[str] | None = None
    if argv[:1] == ["run"]:
        own, command = _split_run_args(argv[1:])
        argv = ["run", *own]
    args = parser.parse_args(argv)
    if command is not None:
        args.command_args = command
    if not args.command:
        parser.print_help()
        return EXIT_BAD_INPUT
    try:
        return COMMANDS[args.command](args)
    except GpulensError as exc:
        print(f"gpulens: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return EXIT_OK
    except Exception as exc:
        if os.environ.get("GPULENS_DEBUG"):
            raise
        print(f"gpulens: internal error: {type(exc).__name__}: {exc} "
              "(set GPULENS_DEBUG=1 for a traceback, and please report it)", file=sys.stderr)
        return EXIT_INTERNAL
    finally:
        _release_arrow()


def _release_arrow() -> None:
    """Free what Parquet reads left behind while pyarrow is still whole: an Arrow reader's thread that
    lives on into interpreter shutdown can abort the process after its work is done ("terminate called
    without an active exception", apache/arrow#34314; seen once in `gpulens ls` of a store here).  At exit,
    once: a collection costs 0.2 s in a big process (a notebook, a test run) that calls main() many times."""
    global _ARROW_RELEASE_REGISTERED
    if "pyarrow" in sys.modules and not _ARROW_RELEASE_REGISTERED:
        import atexit
        import gc

        atexit.register(gc.collect)
        _ARROW_RELEASE_REGISTERED = True


_ARROW_RELEASE_REGISTERED = False
