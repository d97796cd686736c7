"""One real-browser test: JupyterLab on 127.0.0.1, Debian Chromium driven by Python Playwright.

Opens notebooks/00_start_here.ipynb (a copy, so autosave never writes outputs into the repository), runs
all cells, moves the rank-granularity slider with the keyboard and checks that the plot (``img`` src) and the
readout change. Without /usr/bin/chromium (or Playwright) the test fails when ``CI`` is set, else skips.
"""

import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

CHROMIUM = "/usr/bin/chromium"
NOTEBOOK = Path(__file__).resolve().parents[2] / "notebooks" / "00_start_here.ipynb"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-dev-shm-usage",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def _missing(what: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"{what} is required in CI (make test installs Chromium)")
    pytest.skip(f"{what} not available")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def jupyterlab(tmp_path):
    """A JupyterLab server on 127.0.0.1 serving a copy of the notebook; yields (base_url, token, log_path)."""
    root = tmp_path / "lab"
    root.mkdir()
    shutil.copy(NOTEBOOK, root / NOTEBOOK.name)
    settings = root / ".settings"
    for rel, value in (
        ("@jupyterlab/apputils-extension/notification.jupyterlab-settings",
         {"checkForUpdates": False, "fetchNews": "false"}),
        ("@jupyterlab/notebook-extension/tracker.jupyterlab-settings", {"autoStartDefaultKernel": True}),
    ):
        (settings / rel).parent.mkdir(parents=True, exist_ok=True)
        (settings / rel).write_text(json.dumps(value))
    port, token = _free_port(), secrets.token_hex(16)
    env = {**os.environ, "LRDLAB_CACHE": str(tmp_path / "cache"), "JUPYTER_CONFIG_DIR": str(tmp_path / "jcfg"),
           "JUPYTER_RUNTIME_DIR": str(tmp_path / "jrt")}
    log = tmp_path / "jupyterlab.log"
    cmd = [sys.executable, "-m", "jupyterlab", "--no-browser", "--allow-root", "--ServerApp.ip=127.0.0.1",
           f"--ServerApp.port={port}", f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root}",
           f"--LabApp.user_settings_dir={settings}", f"--LabApp.workspaces_dir={root / '.ws'}",
           "--LabApp.expose_app_in_browser=True"]
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=root)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(f"{base}/api/status?token={token}", timeout=2)
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"JupyterLab did not start:\n{log.read_text()[-3000:]}") from None
                time.sleep(0.5)
        yield base, token, log
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()


RUN_ALL = """async () => {
    const app = window.jupyterapp;
    const nb = app.shell.currentWidget;
    await nb.context.ready;
    await nb.sessionContext.ready;
    await app.commands.execute('notebook:run-all-cells');
    return true;
}"""


@pytest.mark.browser
@pytest.mark.slow
def test_rank_explorer_in_jupyterlab(jupyterlab, tmp_path):
    if not Path(CHROMIUM).exists():
        _missing(CHROMIUM)
    try:
        from playwright.sync_api import expect, sync_playwright
    except ImportError:
        _missing("Python Playwright")
    base, token, log = jupyterlab
    shot = Path(os.environ.get("LRDLAB_SCREENSHOT", tmp_path / "rank_explorer.png"))
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.set_default_timeout(120_000)
            page.goto(f"{base}/lab/tree/{NOTEBOOK.name}?token={token}")
            page.wait_for_function("() => window.jupyterapp?.shell.currentWidget?.sessionContext !== undefined")
            page.evaluate(RUN_ALL)
            # the last cell draws a figure into the output area once the whole notebook has run
            page.locator(".jp-OutputArea-output img").first.wait_for(state="visible", timeout=240_000)
            readout = page.locator(".lrd-readout")
            expect(readout).to_contain_text("g=1,", timeout=60_000)
            plot = page.locator("img.lrd-plot")
            before_src, before_text = plot.get_attribute("src"), readout.inner_text()
            assert before_src and "ranks" in before_text

            page.locator(".lrd-granularity .noUi-handle").click()
            for _ in range(3):  # 1 → 2 → 4 → 8
                page.keyboard.press("ArrowRight")
            expect(page.locator(".lrd-granularity .widget-readout")).to_have_text("8")
            expect(readout).to_contain_text("g=8,", timeout=60_000)
            expect(plot).not_to_have_attribute("src", before_src, timeout=30_000)
            after_text = readout.inner_text()
            assert after_text != before_text
            assert "ranks 304,304" in after_text  # 309 rounded down to a multiple of 8
            page.screenshot(path=str(shot), full_page=True)
        finally:
            browser.close()
