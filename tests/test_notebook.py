"""Runs in Jupyter: the inline view (``_repr_html_``) of a finished and of a live run, and ``gpulens.show``'s
figures -- rendered as HTML here and by executing a real notebook with nbclient on an IPython kernel."""
from __future__ import annotations

import re
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import gpulens  # noqa: E402
from gpulens.notebook import render_html, sparkline  # noqa: E402
from gpulens.profiler import RunAnalysis, open_run  # noqa: E402

SAMPLES = Path(__file__).resolve().parent.parent / "sample_runs"


def test_finished_run_renders_cards_suggestions_and_sparkline() -> None:
    run = gpulens.load(SAMPLES / "h100-cnn-input-bound")
    page = run._repr_html_()
    assert page.startswith("<div class='gpulens-run'")
    assert "h100-cnn-input-bound" in page and "finished" in page
    assert "GPU busy" in page and "Wh" in page  # headline cards, energy included
    assert "The training loop waits for data" in page  # the top suggestion
    assert page.count("<polyline") == 1
    figs = gpulens.show(run)
    assert set(figs) == {"timeline", "breakdown"}
    names = {t.name for t in figs["timeline"].data}
    assert {"GPU 0", "host", "steps", "loss"} <= names  # the run page's panels, one legend entry per source


def test_html_escapes_what_the_run_says() -> None:
    with open_run(SAMPLES / "cpu-cnn-workers") as run:
        report = RunAnalysis(run, persist=False).report()
    report.run.name = "<script>alert(1)</script>"
    page = render_html(report, np.array([0.01, 0.02, 0.015]))
    assert "<script>" not in page and "&lt;script&gt;" in page


def test_sparkline_buckets_long_runs() -> None:
    svg = sparkline(np.r_[np.full(5000, 0.01), np.full(5000, 0.03)])
    points = re.search(r"points='([^']+)'", svg).group(1).split()
    assert len(points) == 120
    ys = [float(p.split(",")[1]) for p in points]
    assert ys[0] > ys[-1]  # slower steps later: the line rises (SVG y grows downwards)
    assert sparkline(np.array([0.01])) == ""


def test_live_run_renders_what_it_has_so_far(tmp_path: Path) -> None:
    model = torch.nn.Linear(8, 2)
    with gpulens.track("live", runs_dir=tmp_path, quiet=True, profile=False, advise=False) as run:
        for _ in range(15):
            model(torch.randn(4, 8)).sum().backward()
            run.step()
        page = run._repr_html_()
        assert "running" in page and "15 steps" in page
    assert "finished" in run._repr_html_()


NOTEBOOK_CELLS = [
    "import gpulens, torch\n"
    "run = gpulens.load({sample!r})\n"
    "run",
    "int(run.steps['duration_s'].count())",
    "figs = gpulens.show(run)\n"
    "figs['timeline'].layout.height > 200",
    "model = torch.nn.Linear(8, 2)\n"
    "with gpulens.track('in-notebook', runs_dir={root!r}, quiet=True, profile=False, advise=False) as live:\n"
    "    for _ in range(12):\n"
    "        model(torch.randn(4, 8)).sum().backward()\n"
    "        live.step()\n"
    "live",
]


def test_notebook_executes_with_nbclient(tmp_path: Path) -> None:
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    cells = [c.format(sample=str(SAMPLES / "h100-gpt-small-batch"), root=str(tmp_path / "runs"))
             for c in NOTEBOOK_CELLS]
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in cells])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    client = nbclient.NotebookClient(nb, timeout=240, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}})
    client.execute()
    # each cell's result (a stream output may come first: the "no GPU monitoring" line of this machine)
    outs = [[o for o in cell.outputs if "data" in o] for cell in nb.cells]
    first = outs[0][0]["data"]
    assert "text/html" in first and "gpulens-run" in first["text/html"] and "<polyline" in first["text/html"]
    assert outs[1][0]["data"]["text/plain"] == "862"  # the sample run's 862 steps
    assert outs[2][0]["data"]["text/plain"] == "True"
    live = outs[3][0]["data"]["text/html"]
    assert "in-notebook" in live and "12 steps" in live and "finished" in live
    assert sys.executable  # the kernel is this environment's python (ipykernel's native kernel spec)
