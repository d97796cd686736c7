"""One real-browser test: JupyterLab on 127.0.0.1, Debian Chromium driven by Python Playwright.

Opens notebooks/00_start_here.ipynb (a copy, so autosave never writes outputs into the repository), runs
all cells, moves the rank-granularity slider with the keyboard and checks that the plot (``img`` src) and the
readout change. Without /usr/bin/chromium (or Playwright) the test fails when ``CI`` is set, else skips.
"""

import contextlib
import os
import re
import shutil
from pathlib import Path

import pytest

from tools.browser import CHROMIUM, cell_notebook, notebook_page, slide

NOTEBOOK = Path(__file__).resolve().parents[2] / "notebooks" / "00_start_here.ipynb"


def _missing(what: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"{what} is required in CI (make test installs Chromium)")
    pytest.skip(f"{what} not available")


RANK_NB, FREEZING_NB = "rank.ipynb", "freezing.ipynb"


@pytest.fixture
def jupyterlab(tmp_path):
    """A JupyterLab server on 127.0.0.1 serving a copy of the notebook; yields (base_url, token, log_path)."""
    from tools.browser import jupyterlab as serve

    root = tmp_path / "lab"
    root.mkdir()
    shutil.copy(NOTEBOOK, root / NOTEBOOK.name)
    cell_notebook(root / RANK_NB, "import torch\ntorch.set_num_threads(1)\nfrom lrdlab.explore.widgets import "
                  "RankExplorer\nex = RankExplorer(granularity=1)\nex")
    cell_notebook(root / FREEZING_NB, "import torch\ntorch.set_num_threads(1)\nfrom lrdlab.explore.widgets import "
                  "FreezingExplorer\nfx = FreezingExplorer(mode='sequential', period='1 epoch', run_epochs=1)\nfx")
    with serve(root, tmp_path) as server:
        yield server


@pytest.mark.browser
@pytest.mark.slow
def test_rank_explorer_in_jupyterlab(jupyterlab, tmp_path):
    from playwright.sync_api import expect

    shot = Path(os.environ.get("LRDLAB_SCREENSHOT", tmp_path / "rank_explorer.png"))
    with _notebook_page(jupyterlab, NOTEBOOK.name, 1000) as page:
        # the last cell draws a figure into the output area once the whole notebook has run
        page.locator(".jp-OutputArea-output img").first.wait_for(state="visible", timeout=240_000)
        readout = page.locator(".lrd-readout")
        expect(readout).to_contain_text("rounded (g=", timeout=60_000)
        plot = page.locator("img.lrd-plot")
        before_src, before_text = plot.get_attribute("src"), readout.inner_text()
        assert before_src and "ranks" in before_text
        slide(page, "lrd-granularity")
        expect(readout).not_to_have_text(before_text, timeout=60_000)
        expect(plot).not_to_have_attribute("src", before_src, timeout=30_000)
        page.screenshot(path=str(shot), full_page=True)


def _changes(locator, action, attribute: str | None = None, timeout: int = 90_000) -> str | None:
    """Run ``action`` and wait until ``locator``'s text (or ``attribute``, e.g. an image's ``src``) changes;
    returns the new value."""
    from playwright.sync_api import expect

    read = (lambda: locator.get_attribute(attribute)) if attribute else locator.inner_text
    before = read()
    action()
    if attribute:
        expect(locator).not_to_have_attribute(attribute, before or "", timeout=timeout)
    else:
        expect(locator).not_to_have_text(before, timeout=timeout)
    return read()


@contextlib.contextmanager
def _notebook_page(jupyterlab, name: str, height: int):
    """A Chromium page on ``name`` in JupyterLab with every cell run; the browser closes afterwards."""
    _require_browser()
    with notebook_page(jupyterlab, name, height) as page:
        yield page


def _require_browser():
    if not Path(CHROMIUM).exists():
        _missing(CHROMIUM)
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        _missing("Python Playwright")


@pytest.mark.browser
@pytest.mark.slow
def test_rank_explorer_every_control_in_jupyterlab(jupyterlab, tmp_path):
    """Model, layer, α, g and rounding each change the plot and readouts, and they stay consistent."""
    from playwright.sync_api import expect

    with _notebook_page(jupyterlab, RANK_NB, 1200) as page:
        readout, net = page.locator(".lrd-readout"), page.locator(".lrd-network")
        plot = page.locator("img.lrd-plot")
        expect(net).to_contain_text("test accuracy", timeout=240_000)
        expect(readout).to_contain_text("layer3.2.conv2")
        assert "38,38" in readout.inner_text()  # the 2x Tucker ranks of a 64→64 3×3 conv (P1 Table 1)

        _changes(plot, lambda: slide(page, "lrd-granularity", 3), "src")  # g 1 → 2 → 4 → 8
        expect(readout).to_contain_text("rounded (g=8, down)", timeout=90_000)
        expect(readout).to_contain_text("32,32")  # 38 rounded down to a multiple of 8
        expect(net).to_contain_text("rounded (g=8, down)")
        _changes(plot, lambda: page.locator(".lrd-rounding button", has_text="up").click(), "src")
        expect(readout).to_contain_text("rounded (g=8, up)", timeout=90_000)
        expect(readout).to_contain_text("40,40")
        expect(net).to_contain_text("rounded (g=8, up)")
        _changes(plot, lambda: slide(page, "lrd-ratio"), "src")  # α 2 → 2.5
        expect(readout).to_contain_text("α=2.5", timeout=90_000)
        page.locator(".lrd-layer select").select_option("layer2.0.conv2")
        expect(readout).to_contain_text("layer2.0.conv2", timeout=90_000)
        page.locator(".lrd-model select").select_option(label="resnet18 · untrained (random init)")
        expect(net).to_contain_text("accuracy means nothing", timeout=180_000)  # the new model's whole network
        expect(page.locator(".lrd-layer select")).not_to_have_value("layer2.0.conv2")
        layer = page.locator(".lrd-layer select").input_value()
        expect(readout).to_contain_text(layer, timeout=180_000)  # the readout names the layer the dropdown shows
        assert "resnet18" in net.inner_text() and "resnet20" not in net.inner_text()  # the new model's network
        # every time names its source (a layer with no time yet is timed here in the background, then redrawn)
        expect(readout).to_contain_text(re.compile("measured here|reference file"), timeout=180_000)
        page.screenshot(path=str(tmp_path / "rank_explorer_controls.png"), full_page=True)


@pytest.mark.browser
@pytest.mark.slow
def test_freezing_explorer_controls_and_a_cancelled_background_run(jupyterlab, tmp_path):
    """Mode, period and ratio redraw from the grid; a background run starts, reports progress, and is cancelled."""
    from playwright.sync_api import expect

    with _notebook_page(jupyterlab, FREEZING_NB, 1100) as page:
        summary, plot = page.locator(".lrd-freezing-summary"), page.locator("img.lrd-freezing-plot")
        expect(summary).to_contain_text("sequential N=1", timeout=240_000)
        seen = {plot.get_attribute("src")}
        text = _changes(summary, lambda: page.locator(".lrd-mode button", has_text="regular").click())
        assert text.startswith("regular")
        seen.add(plot.get_attribute("src"))
        page.locator(".lrd-mode button", has_text="sequential").click()
        expect(summary).to_contain_text("sequential N=1")
        assert "sequential N=2" in _changes(summary, lambda: slide(page, "lrd-period"))  # 1 epoch → 2 epochs
        seen.add(plot.get_attribute("src"))
        assert "×3" in _changes(summary, lambda: slide(page, "lrd-fratio"))  # ×2 → ×3
        seen.add(plot.get_attribute("src"))
        assert len(seen) == 4  # every move drew a different figure
        status = page.locator(".lrd-freezing-status")
        page.locator(".lrd-run button, button.lrd-run").first.click()
        expect(status).to_contain_text("running:", timeout=30_000)
        expect(status).to_contain_text("batch", timeout=180_000)  # per-batch progress from the worker
        page.locator(".lrd-cancel button, button.lrd-cancel").first.click()
        expect(status).to_contain_text("cancelled", timeout=120_000)
        expect(status).to_contain_text("nothing was added")
        assert "run here" not in summary.inner_text()
        page.screenshot(path=str(tmp_path / "freezing_explorer.png"), full_page=True)
