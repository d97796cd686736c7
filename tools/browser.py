"""JupyterLab on 127.0.0.1 driven by Debian's Chromium through Python Playwright: the one harness the browser
tests (tests/explore/test_browser.py) and the slider-latency recorder (tools/record/slider_latency.py) share."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-dev-shm-usage",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
RUN_ALL = """async () => {
    const app = window.jupyterapp;
    const nb = app.shell.currentWidget;
    await nb.context.ready;
    await nb.sessionContext.ready;
    await app.commands.execute('notebook:run-all-cells');
    return true;
}"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cell_notebook(path: Path, source: str) -> None:
    """A one-cell notebook (an explorer and nothing else)."""
    cell: dict[str, Any] = {"cell_type": "code", "execution_count": None, "metadata": {}, "outputs": [],
                            "source": source}
    path.write_text(json.dumps({"cells": [cell], "metadata": {"kernelspec": {"name": "python3", "language": "python",
                                                                             "display_name": "Python 3"}},
                                "nbformat": 4, "nbformat_minor": 4}))


def _settings(root: Path) -> Path:
    settings = root / ".settings"
    for rel, value in (
        ("@jupyterlab/apputils-extension/notification.jupyterlab-settings",
         {"checkForUpdates": False, "fetchNews": "false"}),
        ("@jupyterlab/notebook-extension/tracker.jupyterlab-settings", {"autoStartDefaultKernel": True}),
    ):
        (settings / rel).parent.mkdir(parents=True, exist_ok=True)
        (settings / rel).write_text(json.dumps(value))
    return settings


@contextlib.contextmanager
def jupyterlab(root: Path, scratch: Path) -> Iterator[tuple[str, str, Path]]:
    """A JupyterLab server serving ``root`` (its config, runtime files, log and lrdlab cache under ``scratch``);
    yields ``(base_url, token, log_path)`` and stops the server afterwards."""
    settings = _settings(root)
    port, token = free_port(), secrets.token_hex(16)
    checkout = str(Path(__file__).resolve().parents[1])  # the kernels import this checkout's lrdlab
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [checkout, os.environ.get("PYTHONPATH")])),
           "LRDLAB_CACHE": str(scratch / "cache"), "JUPYTER_CONFIG_DIR": str(scratch / "jcfg"),
           "JUPYTER_RUNTIME_DIR": str(scratch / "jrt")}
    log = scratch / "jupyterlab.log"
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


@contextlib.contextmanager
def notebook_page(server: tuple[str, str, Path], name: str, height: int) -> Iterator[Any]:
    """A Chromium page on notebook ``name`` in the running JupyterLab with every cell run; closes afterwards."""
    from playwright.sync_api import sync_playwright

    base, token, _ = server
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": height})
            page.set_default_timeout(120_000)
            page.goto(f"{base}/lab/tree/{name}?token={token}")
            page.wait_for_function("() => window.jupyterapp?.shell.currentWidget?.sessionContext !== undefined")
            page.evaluate(RUN_ALL)
            yield page
        finally:
            browser.close()


def slide(page: Any, css: str, steps: int = 1, key: str = "ArrowRight") -> None:
    """Move the slider with class ``css`` by ``steps`` positions with the keyboard, as a user would."""
    page.locator(f".{css} .noUi-handle").click()
    for _ in range(steps):
        page.keyboard.press(key)
