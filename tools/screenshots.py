"""Refresh the dashboard screenshots in docs/ from the real pages (sample runs, headless Chromium).

Run with the test environment: ``.venv/bin/python tools/screenshots.py``.  It serves
sample_runs/ on a free loopback port, opens each page as a user would and
waits for its figures before taking the picture.
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

from playwright.sync_api import sync_playwright

REPO = Path(__file__).resolve().parent.parent
DOCS = REPO / "docs"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--no-first-run"]
PAGES = (  # (file, path, selector that must be drawn, full page)
    ("dashboard-runs.png", "/", ".ag-row", False),
    ("dashboard-run.png", "/run/h100-cnn-input-bound", "#ts-graph .js-plotly-plot .scatterlayer path", True),
    ("dashboard-kernels.png", "/run/h200-cnn-input-bound/kernels", "#k-breakdown .js-plotly-plot .barlayer", True),
    ("dashboard-compare.png", "/compare?a=h100-cnn-input-bound&b=h100-cnn-healthy",
     "#cmp-overlay .js-plotly-plot .scatterlayer path", True),
)


def main() -> int:
    chromium = os.environ.get("GPULENS_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    if not chromium:
        print("screenshots: no Chromium (apt-get install chromium)", file=sys.stderr)
        return 2
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "gpulens", "dashboard", str(REPO / "sample_runs"),
                               "--port", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(300):
            try:
                urllib.request.urlopen(base + "/healthz", timeout=1)
                break
            except OSError:
                time.sleep(0.2)
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium, args=ARGS)
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            for name, path, ready, full in PAGES:
                page.goto(base + path)
                page.wait_for_selector(ready, timeout=60_000)
                time.sleep(1.5)  # the last callbacks (suggestions, legends) settle
                page.screenshot(path=str(DOCS / name), full_page=full)
                print(f"docs/{name}")
            browser.close()
    finally:
        server.terminate()
        server.wait(timeout=10)
    return 0


if __name__ == "__main__":
    sys.exit(main())
