"""The explorer notebook in a real browser: JupyterLab serves it, headless Chromium (through Playwright, with the
system browser's executable) runs all cells, sees the overlays, changes the methods, clicks the image and sees
each method's attention. Run with ``make test-browser``; skipped, saying why, without a browser."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[2]
BROWSERS = ("chromium", "chromium-browser", "google-chrome")
TIMEOUT_MS = int(os.environ.get("NACLIP_BROWSER_TIMEOUT_MS", "240000"))

if not os.environ.get("NACLIP_BROWSER_TESTS"):
    pytest.skip("browser tests run with `make test-browser` (NACLIP_BROWSER_TESTS=1)", allow_module_level=True)
playwright = pytest.importorskip("playwright.sync_api", reason="pip install playwright to run the browser tests")
EXECUTABLE = os.environ.get("NACLIP_BROWSER") or next(filter(None, map(shutil.which, BROWSERS)), None)
if EXECUTABLE is None:
    pytest.skip("no Chromium: apt-get install chromium, or set NACLIP_BROWSER=/path/to/it", allow_module_level=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """JupyterLab serving a copy of the explorer set to the tiny random model; its URL."""
    folder = tmp_path_factory.mktemp("lab")
    nb = nbformat.read(ROOT / "notebooks" / "explore.ipynb", as_version=4)
    (parameters,) = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    parameters.source = 'model = "naclip-tiny"\npretrained = None\ndevice = "cpu"'
    nbformat.write(nb, folder / "explore.ipynb")
    port, token = free_port(), "naclip-browser-test"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    server = subprocess.Popen(
        [sys.executable, "-m", "jupyterlab", "--no-browser", f"--port={port}", f"--IdentityProvider.token={token}",
         f"--ServerApp.root_dir={folder}", "--ServerApp.ip=127.0.0.1", "--allow-root"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(f"{url}/api/status?token={token}", timeout=2)
            break
        except OSError:
            time.sleep(0.5)
    else:
        server.kill()
        pytest.fail("JupyterLab did not start within 60 s")
    yield f"{url}/lab/tree/explore.ipynb?token={token}"
    server.terminate()
    server.wait(timeout=30)


def test_the_explorer_runs_redraws_and_shows_attention_on_a_click(lab, tmp_path):
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=EXECUTABLE, headless=True, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1600, "height": 1200})
        page.set_default_timeout(TIMEOUT_MS)
        try:
            page.goto(lab)
            page.locator(".jp-Notebook").wait_for()
            page.get_by_text("Python 3 (ipykernel) | Idle").wait_for()  # the kernel is up: Run All now runs
            page.locator(".lm-MenuBar-itemLabel", has_text="Run").first.click()
            page.locator(".lm-Menu-itemLabel", has_text="Run All Cells").first.click()
            images = page.locator(".widget-image")
            page.wait_for_function("document.querySelectorAll('.widget-image').length >= 3", timeout=TIMEOUT_MS)
            assert page.locator(".widget-html", has_text="RANDOM WEIGHTS").first.is_visible()
            assert images.count() == 3  # the picture, then clip's and naclip's overlays
            page.locator(".widget-select-multiple select").select_option(["clip", "sclip", "naclip"])
            page.wait_for_function("document.querySelectorAll('.widget-image').length >= 4", timeout=TIMEOUT_MS)
            images.first.click(position={"x": 100, "y": 60})
            page.wait_for_function("document.querySelectorAll('.widget-image').length >= 7", timeout=TIMEOUT_MS)
            assert images.count() == 7  # and the attention of the clicked patch for each of the three methods
        finally:  # what the page showed, passed or not
            page.screenshot(path=str(tmp_path / "explorer.png"), full_page=True)
        browser.close()
