"""How fast the rank explorer answers in a real browser: JupyterLab in Debian's Chromium, driven by Playwright.

One command (a few minutes; run it on a quiet machine, the load goes into the file)::

    python -m tools.record.slider_latency         # writes data/explorer_latency_chromium.json

The explorer is built as a user builds it (``RankExplorer()``: the shipped ResNet-20, α 2, g 8, down). Each move is
made as a user makes it — a key on a slider's handle, a click on a rounding button, a choice in the layer list —
and its latency is the browser's own clock from that input event to the frame in which both the layer readout and
the plot show the new setting (polled every animation frame). The moves visit settings on the shipped grid
(:mod:`tools.record.explorer_grids`), each for the first time, then revisit some; layer changes pick layers not
shown before. Moves are ``--settle`` seconds apart (default 3: a user reads each answer; in that pause the
explorer prepares the settings one move away). The target is a median of at most 200 ms.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from lrdlab.measure.compute import load_average
from lrdlab.measure.machine import machine_info
from lrdlab.measure.records import data_dir, write_record
from tools.browser import cell_notebook, jupyterlab, notebook_page

COMMAND = "python -m tools.record.slider_latency"
TARGET_MS = 200.0
NOTEBOOK = "explorer.ipynb"
SOURCE = "from lrdlab.explore.widgets import RankExplorer\nex = RankExplorer()\nex"
# (what, control, how): each setting on the shipped grid; from α 2, g 8, down every move but the last two is a
# first visit (the explorer draws a new figure), the last two revisit settings drawn before.
MOVES: list[tuple[str, str, str]] = [
    ("g 8 → 16", "lrd-granularity", "ArrowRight"), ("g 16 → 32", "lrd-granularity", "ArrowRight"),
    ("rounding → up", "lrd-rounding", "up"), ("rounding → nearest", "lrd-rounding", "nearest"),
    ("α 2 → 1.5", "lrd-ratio", "ArrowLeft"), ("g 32 → 16", "lrd-granularity", "ArrowLeft"),
    ("rounding → down", "lrd-rounding", "down"), ("g 16 → 8", "lrd-granularity", "ArrowLeft"),
    ("rounding → up", "lrd-rounding", "up"), ("α 1.5 → 2", "lrd-ratio", "ArrowRight"),
    ("rounding → down (revisit)", "lrd-rounding", "down"), ("g 8 → 16 (revisit)", "lrd-granularity", "ArrowRight"),
]
LAYERS = ["layer1.0.conv1", "layer1.2.conv2", "layer2.1.conv1", "layer2.2.conv2", "layer3.0.conv1",
          "layer3.1.conv2", "layer2.0.conv2", "layer3.2.conv1", "layer1.1.conv2", "layer2.1.conv2"]

ARM = """([events]) => {
    const readout = document.querySelector('.lrd-readout'), plot = document.querySelector('img.lrd-plot');
    window.__lrd = {t0: null, text: readout.innerText, src: plot.getAttribute('src')};
    const mark = () => { if (window.__lrd.t0 === null) window.__lrd.t0 = performance.now(); };
    for (const e of events) document.addEventListener(e, mark, {capture: true, once: true});
}"""
DONE = """() => {
    const readout = document.querySelector('.lrd-readout'), plot = document.querySelector('img.lrd-plot');
    const s = window.__lrd;
    if (s.t0 !== null && readout.innerText !== s.text && plot.getAttribute('src') !== s.src) {
        return performance.now() - s.t0;
    }
    return null;
}"""


@dataclass(frozen=True)
class Move:
    """One user action and the browser's latency from its input event to the redrawn readout and plot."""

    what: str
    kind: str  # "slider", "rounding" or "layer"
    ms: float
    first_visit: bool
    status: str  # the explorer's own status line after the move ("updated in … s" is the kernel's share)


def _timed(page: Any, events: Sequence[str], action: Callable[[], None]) -> float:
    page.evaluate(ARM, [list(events)])
    action()
    return float(page.wait_for_function(DONE, polling="raf", timeout=120_000).json_value())


def _move(page: Any, control: str, how: str) -> Callable[[], None]:
    if control == "lrd-rounding":
        return lambda: page.locator(".lrd-rounding button", has_text=how).click()
    return lambda: page.keyboard.press(how)


def _choose(select: Any, layer: str) -> Callable[[], None]:
    return lambda: select.select_option(layer)


def _status(page: Any) -> str:
    return page.locator(".lrd-status").inner_text().split(" · ")[0]


def measure_moves(page: Any, settle_s: float) -> list[Move]:
    """Every move of :data:`MOVES` then every layer of :data:`LAYERS`, one at a time, ``settle_s`` apart."""
    moves = []
    for what, control, how in MOVES:
        if control != "lrd-rounding":
            page.locator(f".{control} .noUi-handle").focus()
        events = ("pointerdown",) if control == "lrd-rounding" else ("keydown",)
        ms = _timed(page, events, _move(page, control, how))
        kind = "rounding" if control == "lrd-rounding" else "slider"
        moves.append(Move(what, kind, ms, "revisit" not in what, _status(page)))
        time.sleep(settle_s)
    select = page.locator(".lrd-layer select")
    for layer in LAYERS:
        ms = _timed(page, ("change", "input"), _choose(select, layer))
        moves.append(Move(f"layer → {layer}", "layer", ms, True, _status(page)))
        time.sleep(settle_s)
    return moves


def summary(moves: list[Move]) -> dict[str, Any]:
    def stats(kind: set[str]) -> dict[str, Any]:
        ms = [m.ms for m in moves if m.kind in kind]
        return {"moves": len(ms), "median_ms": round(statistics.median(ms), 1), "max_ms": round(max(ms), 1),
                "within_target": statistics.median(ms) <= TARGET_MS}
    return {"alpha_g_rounding": stats({"slider", "rounding"}), "layer": stats({"layer"})}


def record(out: Path, settle_s: float = 3.0) -> dict[str, Any]:
    """Open the explorer in Chromium, make every move, and write the latencies with the machine and load."""
    before = load_average()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        root, scratch = Path(tmp) / "lab", Path(tmp)
        root.mkdir()
        cell_notebook(root / NOTEBOOK, SOURCE)
        with jupyterlab(root, scratch) as server, notebook_page(server, NOTEBOOK, 1200) as page:
            page.locator(".lrd-network").filter(has_text="test accuracy").wait_for(timeout=300_000)
            moves = measure_moves(page, settle_s)
    rec = {"what": "rank explorer latency in Chromium: input event → readout and plot redrawn (ms)",
           "command": COMMAND, "browser": "Debian chromium, headless, Playwright", "explorer": SOURCE,
           "target_ms": TARGET_MS, "settle_s": settle_s, "summary": summary(moves),
           "moves": [asdict(m) for m in moves],
           "machine": machine_info(), "load_average_before": before, "load_average_after": load_average(),
           "seconds": round(time.perf_counter() - started, 1)}
    write_record(out, rec)
    return rec


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog=COMMAND, description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=data_dir() / "explorer_latency_chromium.json")
    parser.add_argument("--settle", type=float, default=3.0, help="seconds between moves (default 3)")
    args = parser.parse_args(argv)
    rec = record(args.out, args.settle)
    for m in rec["moves"]:
        print(f"{m['ms']:8.1f} ms  {m['what']:<32} {m['status']}")
    print(rec["summary"], "load", rec["load_average_before"], "→", rec["load_average_after"])


if __name__ == "__main__":
    main()
