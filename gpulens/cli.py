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
from typing import Any, Sequence

from gpulens.profiler.errors import GpulensError

EXIT_OK, EXIT_INTERNAL, EXIT_BAD_INPUT = 0, 1, 2


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line instead of usage + message
        self.exit(EXIT_BAD_INPUT, f"gpulens: error: {message} (see '{self.prog} --help')\n")


def _build_parser() -> argparse.ArgumentParser:
    from gpulens import __version__

    parser = _Parser(prog="gpulens", description="GPU monitoring and profiling for PyTorch training.")
    parser.add_argument("--version", action="version", version=f"gpulens {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    rep = sub.add_parser("report", help="summary of one run in the terminal (or --json)")
    rep.add_argument("run", help="run directory, rank-N.db file, or run id under the runs root")
    rep.add_argument("--json", action="store_true", help="print the figures as JSON (stable keys)")
    rep.add_argument("--runs-dir", help="runs root for run ids (default $GPULENS_DIR or ./gpulens-runs)")

    adv = sub.add_parser("advise", help="ranked suggestions for one run (or --json)")
    adv.add_argument("run", help="run directory, rank-N.db file, or run id under the runs root")
    adv.add_argument("--json", action="store_true", help="print the suggestions as JSON (stable schema)")
    adv.add_argument("--runs-dir", help="runs root for run ids (default $GPULENS_DIR or ./gpulens-runs)")

    imp = sub.add_parser("import", help="turn PyTorch profiler chrome traces (one per rank) into a run")
    imp.add_argument("traces", nargs="+", help="trace files (.json or .json.gz), one per rank")
    imp.add_argument("--name", help="run name (default: from the first file name)")
    imp.add_argument("--runs-dir", help="runs root (default $GPULENS_DIR or ./gpulens-runs)")

    ls = sub.add_parser("ls", help="list the runs under a runs root")
    ls.add_argument("runs_dir", nargs="?", help="runs root (default $GPULENS_DIR or ./gpulens-runs)")
    ls.add_argument("--json", action="store_true", help="print the list as JSON")
    dsh = sub.add_parser("dashboard", help="serve the web dashboard (http://127.0.0.1:8050 by default)")
    dsh.add_argument("runs_dir", nargs="?",
                     help="runs root (default $GPULENS_DIR or ./gpulens-runs; with no runs there, the sample runs)")
    dsh.add_argument("--host", default="127.0.0.1",
                     help="address to bind (default 127.0.0.1; anything else needs --auth or --token)")
    dsh.add_argument("--port", type=int, default=8050, help="TCP port (default 8050; 0 picks a free one)")
    dsh.add_argument("--auth", metavar="USER:PASSWORD", help="require HTTP Basic authentication")
    dsh.add_argument("--token", default=os.environ.get("GPULENS_TOKEN"),
                     help="require this bearer token (or ?token=... once); default $GPULENS_TOKEN")
    dsh.add_argument("--allow-host", action="append", default=[], metavar="NAME",
                     help="also accept requests for this Host name (reverse proxies, DNS names)")

    demo = sub.add_parser("demo", help="train a small model on the CPU and follow it live in the dashboard")
    demo.add_argument("--port", type=int, default=8050, help="TCP port (default 8050)")
    demo.add_argument("--seconds", type=float, default=600.0, help="how long the demo trains (default 600)")
    demo.add_argument("--runs-dir", help="where the demo run goes (default: a new temporary directory)")
    return parser


def sample_runs_dir() -> "Path | None":  # noqa: F821 (Path imported inside, like every command here)
    """The repository's sample_runs/ (a source checkout or editable install), if there is one."""
    from pathlib import Path

    import gpulens

    candidate = Path(gpulens.__file__).resolve().parent.parent / "sample_runs"
    return candidate if candidate.is_dir() else None


def cmd_dashboard(args: argparse.Namespace) -> int:
    from gpulens.dashboard.serve import prepare, serve
    from gpulens.profiler import list_runs, runs_root

    root = runs_root(args.runs_dir)
    if args.runs_dir is None and not list_runs(root):
        samples = sample_runs_dir()
        if samples is not None:
            print(f"gpulens: no runs in {root} yet; showing the sample runs in {samples}", file=sys.stderr)
            root = samples
    access = prepare(root, args.host, args.port, args.auth, args.token, args.allow_host)
    serve(root, access)
    return EXIT_OK


def cmd_demo(args: argparse.Namespace) -> int:
    from gpulens.demo import run_demo

    return run_demo(args.port, args.seconds, args.runs_dir)


def cmd_report(args: argparse.Namespace) -> int:
    from pathlib import Path

    from gpulens.profiler import open_run, resolve_run

    from gpulens.profiler.advisor import advise
    from gpulens.profiler.kernel_summary import window_analyses
    from gpulens.profiler.summary import gather, summarize_data

    root = Path(args.runs_dir) if args.runs_dir else None
    with open_run(resolve_run(args.run, root)) as run:
        done, problems = window_analyses(run)  # analysed once for the report and the advice
        summary = summarize_data(gather(run, done, problems))
        summary["suggestions"] = advise(run, done, summary).as_dict()
    if args.json:
        print(json.dumps(summary, indent=2, default=_json_default))
    else:
        from gpulens.report_view import render

        render(summary)
    return EXIT_OK


def cmd_advise(args: argparse.Namespace) -> int:
    from pathlib import Path

    from gpulens.profiler import open_run, resolve_run
    from gpulens.profiler.advisor import advise

    root = Path(args.runs_dir) if args.runs_dir else None
    with open_run(resolve_run(args.run, root)) as run:
        advice = advise(run).as_dict()
    if args.json:
        print(json.dumps(advice, indent=2, default=_json_default))
    else:
        from gpulens.report_view import render_advice

        render_advice(advice, full=True)
    return EXIT_OK


def cmd_import(args: argparse.Namespace) -> int:
    from gpulens.profiler import runs_root
    from gpulens.profiler.importer import import_traces

    run_dir = import_traces(args.traces, runs_root(args.runs_dir), args.name)
    print(run_dir)
    return EXIT_OK


def cmd_ls(args: argparse.Namespace) -> int:
    from gpulens import fmt
    from gpulens.profiler import list_runs, open_run, runs_root
    from gpulens.profiler.errors import RunError

    root = runs_root(args.runs_dir)
    if not root.is_dir():
        raise GpulensError(f"{root}: no such runs directory")
    rows: list[dict[str, Any]] = []
    for path in list_runs(root):
        try:
            with open_run(path) as run:
                info = run.info
                n_steps = len(run.steps())
                rows.append({"id": info.id, "name": info.name, "status": info.status,
                             "gpus": [g.get("name") for g in info.gpus], "start": info.start,
                             "duration_s": info.duration_s, "steps": n_steps, "error": None})
        except RunError as exc:
            rows.append({"id": path.name, "name": None, "status": "broken", "gpus": [], "start": None,
                         "duration_s": None, "steps": None, "error": str(exc)})
    if args.json:
        print(json.dumps(rows, indent=2))
        return EXIT_OK
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"runs in {root}", title_justify="left")
    for col in ("run", "status", "GPUs", "duration", "steps"):
        table.add_column(col)
    for r in rows:
        gpus = f"{len(r['gpus'])} × {r['gpus'][0]}" if r["gpus"] else "-"
        status = r["status"] if not r["error"] else f"broken: {r['error']}"
        table.add_row(r["id"], status, gpus, fmt.seconds(r["duration_s"]), str(r["steps"] if r["steps"] is not None else "-"))
    Console().print(table)
    return EXIT_OK


def _json_default(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    return str(value)


COMMANDS = {"report": cmd_report, "advise": cmd_advise, "ls": cmd_ls, "import": cmd_import,
            "dashboard": cmd_dashboard, "demo": cmd_demo}


def main(argv: Sequence[str] | None = None) -> int:
    parser = _build_parser()
    args = parser.parse_args(argv)
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
