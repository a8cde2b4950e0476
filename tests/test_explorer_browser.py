"""The explorer in a real JupyterLab, driven by Debian's headless chromium through Playwright.

Slow (a JupyterLab server, a kernel and a browser): runs only with GEOLIB_SLOW=1. Needs
`apt-get install chromium` (the Playwright package drives it; no browser is downloaded).
The screenshot goes to `<outputs>/screenshots/explorer_jupyterlab.png`.
"""
from __future__ import annotations

import os
import secrets
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from geolib.paths import outputs_root

CHROMIUM = os.environ.get("GEOLIB_CHROMIUM", "/usr/bin/chromium")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]

# A self-contained notebook: a small result set with images, then the explorer.
DEMO = r'''
import numpy as np
from pathlib import Path
from PIL import Image
from geolib.apps import explorer as ex
from geolib.evaluation.crossview import Embedded, Evaluation, score_direction
from geolib.data.datasets import ImageItem

def items(view, role):
    out = []
    for p in range(6):
        path = Path(f"img/{role}_{view}/{p:04d}.png")
        path.parent.mkdir(parents=True, exist_ok=True)
        colour = (40 * p, 255 - 40 * p, 120 if role == "query" else 200)
        Image.new("RGB", (64, 64), colour).save(path)
        out.append(ImageItem(path.resolve(), view, "test", role, p, utm_east=500000.0 + 25 * p + 900 * (p > 2),
                             utm_north=4600000.0 + 10 * p, meta={"region": "A" if p < 3 else "B"}))
    return out

rng = np.random.default_rng(0)
g = np.eye(6, dtype=np.float32)
q = g + 0.6 * rng.random((6, 6)).astype(np.float32)
q /= np.linalg.norm(q, axis=1, keepdims=True)
qs, gs = Embedded(items("street", "query"), q), Embedded(items("drone", "gallery"), g)
ev = Evaluation(sets={("query", "street"): qs, ("gallery", "drone"): gs})
ev.results["street→drone"] = score_direction(qs, gs, "street", "drone")
app = ex.explore(ex.ExplorerResults.from_evaluation("demo", ev, k=5), k=4, thumb=96)
app
'''


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for_server(url: str, proc: subprocess.Popen, timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"jupyter lab exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"jupyter lab did not answer {url} within {timeout:.0f} s")


@pytest.fixture
def jupyter_lab(tmp_path):
    """A JupyterLab on localhost serving a folder with the demo notebook; isolated config dirs."""
    import nbformat

    root = tmp_path / "lab"
    root.mkdir()
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(DEMO.strip())],
                                  metadata={"kernelspec": {"name": "python3", "display_name": "Python 3",
                                                           "language": "python"}})
    nbformat.write(nb, str(root / "explorer_demo.ipynb"))
    port, token = _free_port(), secrets.token_hex(16)
    env = {**os.environ, "JUPYTER_CONFIG_DIR": str(tmp_path / "cfg"), "JUPYTER_RUNTIME_DIR": str(tmp_path / "rt"),
           "JUPYTERLAB_SETTINGS_DIR": str(tmp_path / "settings"), "JUPYTERLAB_WORKSPACES_DIR": str(tmp_path / "ws"),
           "MPLBACKEND": "Agg"}
    cmd = [sys.executable, "-m", "jupyterlab", "--allow-root", "--no-browser", "--ip=127.0.0.1", f"--port={port}",
           f"--ServerApp.token={token}", f"--ServerApp.root_dir={root}",
           "--LabApp.news_url=", "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"]
    log = open(tmp_path / "jupyter.log", "wb")
    proc = subprocess.Popen(cmd, cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        _wait_for_server(f"http://127.0.0.1:{port}/api/status?token={token}", proc)
        yield f"http://127.0.0.1:{port}", token
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def _run_first_cell(page, tmp_path: Path) -> None:
    """Run the demo cell once the kernel is idle; a debug screenshot is kept if the widget never shows."""
    page.get_by_text("| Idle").first.wait_for(timeout=90_000)
    page.locator(".jp-Notebook .jp-Cell .jp-InputArea-editor").first.click()
    page.keyboard.press("Escape")
    page.keyboard.press("Shift+Enter")
    try:
        page.locator(".widget-slider").first.wait_for(timeout=120_000)
    except Exception:
        page.screenshot(path=str(tmp_path / "debug.png"))
        raise


def _header(page) -> str:
    return page.locator(".widget-html-content", has_text="demo · street→drone").first.inner_text()


def _query_src(page) -> str:
    return page.locator(".widget-image").first.get_attribute("src") or ""


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_query_slider_changes_the_shown_query_in_jupyterlab(jupyter_lab, tmp_path):
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} not found: apt-get install chromium (or set GEOLIB_CHROMIUM)")
    from playwright.sync_api import sync_playwright

    base, token = jupyter_lab
    shot = outputs_root() / "screenshots" / "explorer_jupyterlab.png"
    shot.parent.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as pw:
        browser = pw.chromium.launch_persistent_context(
            str(tmp_path / "chromium-profile"), executable_path=CHROMIUM, headless=True, args=FLAGS,
            viewport={"width": 1400, "height": 1150})
        try:
            page = browser.new_page()
            page.goto(f"{base}/lab/tree/explorer_demo.ipynb?token={token}", wait_until="domcontentloaded")
            page.locator(".jp-Notebook .jp-Cell").first.wait_for(timeout=60_000)
            _run_first_cell(page, tmp_path)
            page.wait_for_function("document.querySelectorAll('.widget-image[src^=\"blob:\"], .widget-image[src^=\"data:\"]').length >= 5",
                                   timeout=60_000)
            before, src_before = _header(page), _query_src(page)
            assert "query 0 (1 of 6" in before

            handle = page.locator(".widget-slider .noUi-handle").first  # the query slider comes first
            handle.focus()
            page.keyboard.press("ArrowRight")
            page.wait_for_function(
                "[...document.querySelectorAll('.widget-html-content')].some(e => e.innerText.includes('query 1 (2 of 6'))",
                timeout=30_000)
            page.wait_for_timeout(1500)  # let the thumbnails and the map redraw before the screenshot
            news = page.get_by_role("button", name="No", exact=True)  # JupyterLab's news prompt
            if news.count():
                news.first.click(timeout=5_000)
            page.locator(".jp-Cell-inputCollapser").first.click()  # hide the code: the explorer fills the view
            after, src_after = _header(page), _query_src(page)
            assert "query 1 (2 of 6" in after and src_after != src_before
            assert page.locator(".js-plotly-plot").count() >= 1, "the plotly map did not render"
            page.screenshot(path=str(shot), full_page=True)
        finally:
            browser.close()
    assert shot.stat().st_size > 10_000
    print(f"screenshot: {shot}")
