"""The dashboard in a real headless Chromium (Debian's package, driven by Playwright).

The server is the real thing: ``python -m gpulens dashboard ROOT --port P``
in its own process (waitress, default loopback bind), on a runs root with
recorded sample runs, a broken run and a run whose kernel names are hostile
HTML.  A screenshot of every failing test lands in test-artifacts/.
"""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import psutil
import pytest
from dash_support import BROKEN_ID, HOSTILE, HOSTILE_ID, REPO, make_root

CHROMIUM = os.environ.get("GPULENS_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
ARTIFACTS = REPO / "test-artifacts"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run"]

if not CHROMIUM:
    if os.environ.get("GPULENS_REQUIRE_BROWSER"):
        raise RuntimeError("Chromium not found: test.sh installs it (apt-get install chromium); "
                           "set GPULENS_CHROMIUM to its path")
    pytest.skip("no Chromium on this machine (./test.sh installs it)", allow_module_level=True)

playwright = pytest.importorskip("playwright.sync_api")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return make_root(tmp_path_factory.mktemp("browser") / "runs")


@pytest.fixture(scope="module")
def server(root):
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "gpulens", "dashboard", str(root), "--port", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            urllib.request.urlopen(base + "/healthz", timeout=1)
            break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                out = proc.stdout.read().decode() if proc.stdout else ""
                proc.kill()
                raise RuntimeError(f"dashboard did not start: {out}") from None
            time.sleep(0.2)
    yield base, proc
    proc.terminate()
    proc.wait(timeout=10)


@pytest.fixture(scope="module")
def browser():
    with playwright.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture
def page(browser, request):
    ctx = browser.new_context(viewport={"width": 1400, "height": 1000})
    pg = ctx.new_page()
    errors: list[str] = []
    pg.on("pageerror", lambda e: errors.append(str(e)))
    pg.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    pg.set_default_timeout(20_000)
    yield pg
    rep = getattr(request.node, "rep_call", None)
    if rep is not None and rep.failed:
        ARTIFACTS.mkdir(exist_ok=True)
        pg.screenshot(path=str(ARTIFACTS / f"{request.node.name}.png"), full_page=True)
    ctx.close()
    assert not [e for e in errors if "favicon" not in e], errors  # no JS errors, no failed callbacks


def _wait_for(pg, js: str, arg=None, timeout: float = 20.0):
    """Poll a JS expression from here until it is truthy.  Playwright's wait_for_function evals its predicate
    in the page, which the dashboard's Content-Security-Policy (no 'unsafe-eval') rightly refuses."""
    deadline = time.monotonic() + timeout
    while True:
        value = pg.evaluate(js, arg)
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for: {js}")
        time.sleep(0.1)


def _graph_data(pg, graph_id: str) -> dict:
    return pg.evaluate(f"""() => {{
        const gd = document.querySelector('#{graph_id} .js-plotly-plot');
        if (!gd || !gd.data) return null;
        // _fullData: the traces as plotted, base64 typed arrays decoded
        return {{n: gd.data.length, range: gd.layout.xaxis && gd.layout.xaxis.range,
                 x: gd._fullData.map(t => {{ const x = Array.from(t.x || []).filter(v => v !== null);
                                       return [x.length ? Math.min(...x) : null, x.length ? Math.max(...x) : null,
                                               x.length]; }})}};
    }}""")


def _wait_graph(pg, graph_id: str, timeout: float = 20.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        d = _graph_data(pg, graph_id)
        if d and d["n"] > 0:
            return d
        time.sleep(0.2)
    raise AssertionError(f"graph {graph_id} never drew any trace")


def test_server_listens_on_loopback_only(server):
    _, proc = server
    listening = [c.laddr for c in psutil.Process(proc.pid).net_connections() if c.status == psutil.CONN_LISTEN]
    assert listening and all(a.ip in ("127.0.0.1", "::1") for a in listening), listening


def test_runs_list_renders_with_the_broken_run_and_opens_a_run(server, page):
    base, _ = server
    page.goto(base + "/")
    page.wait_for_selector(".ag-row >> text=h100-cnn-input-bound")
    grid = page.inner_text("#runs-grid")
    for run_id in ("h100-cnn-input-bound", "h100-gpt-small-batch", "cpu-cnn-workers", BROKEN_ID):
        assert run_id in grid
    broken = " ".join(page.locator(f"#runs-grid .ag-row[row-id='{BROKEN_ID}']").all_inner_texts())
    assert "not a gpulens database" in broken and "broken" in broken
    _wait_for(page, "document.querySelector('#runs-grid').innerText.includes('The training loop waits')")
    page.click("#runs-grid a[href='/run/h100-cnn-input-bound']")
    page.wait_for_url("**/run/h100-cnn-input-bound")
    data = _wait_graph(page, "ts-graph")
    assert data["n"] >= 12  # every panel drew its lines
    page.wait_for_selector("#card-gpu_busy")
    assert "15.2%" in page.inner_text("#card-gpu_busy")
    assert _wait_graph(page, "steps-graph")["n"] == 5
    assert page.locator("#suggestion-dataloader_bound").count() == 1


def test_zoom_reads_full_resolution_and_evidence_links_zoom(server, page):
    base, _ = server
    page.goto(base + "/run/h100-cnn-input-bound")
    _wait_graph(page, "ts-graph")
    page.evaluate("() => Plotly.relayout(document.querySelector('#ts-graph .js-plotly-plot'), "
                  "{'xaxis.range[0]': 5, 'xaxis.range[1]': 7})")
    _wait_for(page, "document.querySelector('#ts-level').innerText.startsWith('5.0–7.0 s')")
    d = _graph_data(page, "ts-graph")
    lo = min(x[0] for x in d["x"] if x[0] is not None)
    hi = max(x[1] for x in d["x"] if x[1] is not None)
    assert 5.0 - 1e-3 <= lo and hi <= 7.0 + 1e-3 and d["range"] == [5, 7]
    page.click("text=profiled steps (zoom)")
    _wait_for(page, """() => { const r = document.querySelector('#ts-graph .js-plotly-plot').layout.xaxis.range;
                              return r && r[0] > 0.5 && r[1] - r[0] < 4; }""")
    steps = _graph_data(page, "steps-graph")
    assert steps["range"] is not None  # the step breakdown follows the same range


def test_kernels_page_renders_hostile_names_as_text(server, page):
    base, _ = server
    page.goto(f"{base}/run/{HOSTILE_ID}/kernels?window=0:0")
    page.wait_for_selector("#k-grid .ag-row")
    cell = page.locator("#k-grid .ag-row .ag-cell[col-id='name']").first
    assert cell.inner_text() == HOSTILE
    assert page.locator("#k-grid img").count() == 0 and page.locator("#k-grid script").count() == 0
    assert page.evaluate("window.__pwned") is None
    assert page.locator("#k-trace-link").get_attribute("href") == f"/download/trace/{HOSTILE_ID}/0/0"
    _wait_graph(page, "k-categories")
    assert "Kernels per step" in page.inner_text("#k-cards")


def test_compare_page_and_theme_toggle(server, page):
    base, _ = server
    page.goto(f"{base}/compare?a=h100-cnn-input-bound&b=h100-gpt-small-batch")
    page.wait_for_selector("#cmp-headline")
    assert "Samples/s" in page.inner_text("#cmp-headline")
    before = page.evaluate("document.documentElement.dataset.theme")
    page.click("#theme-toggle")
    _wait_for(page, f"document.documentElement.dataset.theme !== '{before}'")
    after = page.evaluate("document.documentElement.dataset.theme")
    assert {before, after} == {"light", "dark"}
    _wait_for(page, """(want) => { const gd = document.querySelector('#cmp-steps .js-plotly-plot');
        return gd && gd.layout.font.color === want; }""", arg="#e6edf3" if after == "dark" else "#1f2328")


def test_live_page_receives_new_points_within_two_seconds(server, page, root):
    base, _ = server
    run_dir = root / "live-writer"
    writer = subprocess.Popen([sys.executable, str(Path(__file__).parent / "live_writer.py"), str(run_dir), "40"],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        assert writer.stdout.readline().strip() == b"ready"
        time.sleep(1.0)
        requests: list[float] = []
        page.on("request", lambda r: requests.append(time.monotonic()) if "_dash-update-component" in r.url else None)
        page.goto(f"{base}/live/live-writer")
        _wait_graph(page, "live-graph")
        page.wait_for_selector("#live-status .badge-running")
        lags = []
        t_end = time.monotonic() + 6.0
        while time.monotonic() < t_end:
            d = _graph_data(page, "live-graph")
            newest = d["x"][0][1]
            lags.append((time.time(), newest))
            time.sleep(0.25)
        from gpulens.profiler import open_run

        with open_run(run_dir) as run:
            t0 = run.info.start
        worst = max(wall - (t0 + newest) for wall, newest in lags)
        assert worst < 2.0, f"newest point was up to {worst:.2f} s old"
        # zoom survives updates
        page.evaluate("() => Plotly.relayout(document.querySelector('#live-graph .js-plotly-plot'), "
                      "{'xaxis.range[0]': 1, 'xaxis.range[1]': 3})")
        time.sleep(3.0)
        d = _graph_data(page, "live-graph")
        assert d["range"] == [1, 3] and d["x"][0][1] > 3  # still zoomed while new points arrived
        xs = page.evaluate("""() => Array.from(document.querySelector('#live-graph .js-plotly-plot').data[0].x)
                                    .filter(v => v !== null)""")
        assert all(b > a for a, b in zip(xs, xs[1:])), "points duplicated or out of order"
        span = requests[-1] - requests[0] if len(requests) > 1 else 1.0
        assert len(requests) <= span / 0.9 + 6, "callbacks piled up"
    finally:
        writer.terminate()
        writer.wait(timeout=10)
