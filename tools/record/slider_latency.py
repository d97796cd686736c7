"""How fast the rank explorer answers in a real browser, on a machine kept busy: JupyterLab in Debian's Chromium.

One command (about ten minutes; the load it makes and the load it finds go into the file)::

    python -m tools.record.slider_latency         # writes data/explorer_latency_chromium.json

The recorder makes its own load: :data:`BUSY` processes that spin one core each, for the whole recording, so the
figure is reproducible on a shared class server (the load the machine carried besides is recorded too). It opens
notebook 00 in JupyterLab as a teacher does, runs all of it, and then moves every control of its explorer as a
person does — keys on a slider's handle, a click on a rounding button, a choice in the layer and model lists —
onto settings on the shipped accuracy grid and off it (:data:`tools.record.explorer_grids.GRIDS`), ``--settle``
seconds apart (default 3: a person reads each answer), then fast slider moves 0.4 s apart. A move's latency is the
browser's own clock from its input event to the frame in which both the layer readout and the plot show the new
setting (polled every animation frame). The goal per control: median ≤ :data:`TARGET_MS`, max ≤ :data:`MAX_MS`.
Each model of the list is chosen twice: its first load (weights read; SmolLM2's from lrdlab's dequantized cache when
this machine has one) is reported as its own control and not held to the goal, the second choice is a move.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Any

from lrdlab.explore.rank_lab import GRANULARITIES, RATIOS
from lrdlab.measure.compute import load_average
from lrdlab.measure.machine import machine_info
from lrdlab.measure.records import data_dir, write_record
from tools.browser import jupyterlab, notebook_page
from tools.record.explorer_grids import GRIDS

COMMAND = "python -m tools.record.slider_latency"
TARGET_MS = 150.0
MAX_MS = 500.0
TIMEOUT_MS = 60_000  # a move with no redraw by then counts as this long
FIRST_LOAD = "model (first load)"  # a model's weights read for the first time: reported, not held to the goal
LOAD_TIMEOUT_MS = 300_000
LOAD_SETTLE_S = 20.0  # after a first load: its layer times and prerender start
BUSY = 2  # processes spinning a core each: a 2-core machine with both cores taken by other work
NOTEBOOK = Path(__file__).resolve().parents[2] / "notebooks" / "00_start_here.ipynb"
MODEL = "resnet20_mnist5k"  # the explorer notebook 00 opens on, at α 2, g 8, down
FAST_S = 0.4
# (what, control, how): slider keys, rounding button labels; settings on and off the shipped grid
MOVES: list[tuple[str, str, str]] = [
    ("g", "lrd-granularity", "ArrowRight"), ("g", "lrd-granularity", "ArrowRight"),
    ("rounding", "lrd-rounding", "up"), ("rounding", "lrd-rounding", "nearest"),
    ("α", "lrd-ratio", "ArrowRight"), ("g", "lrd-granularity", "ArrowRight"),
    ("α", "lrd-ratio", "ArrowRight"), ("rounding", "lrd-rounding", "down"),
    ("g", "lrd-granularity", "ArrowLeft"), ("g", "lrd-granularity", "ArrowLeft"),
    ("g", "lrd-granularity", "ArrowLeft"), ("g", "lrd-granularity", "ArrowLeft"),
    ("α", "lrd-ratio", "ArrowRight"), ("α", "lrd-ratio", "ArrowRight"), ("rounding", "lrd-rounding", "up"),
    ("α", "lrd-ratio", "ArrowLeft"), ("α", "lrd-ratio", "ArrowLeft"), ("α", "lrd-ratio", "ArrowLeft"),
    ("α", "lrd-ratio", "ArrowLeft"), ("rounding", "lrd-rounding", "down"), ("g", "lrd-granularity", "ArrowRight"),
]
FAST: list[tuple[str, str, str]] = [("α fast", "lrd-ratio", k) for k in ("ArrowRight",) * 3 + ("ArrowLeft",) * 3] + \
    [("g fast", "lrd-granularity", k) for k in ("ArrowRight",) * 3 + ("ArrowLeft",) * 3]
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
RUN_FINISHED = """() => {
    const nb = window.jupyterapp.shell.currentWidget;
    const kernel = nb.sessionContext.session?.kernel;
    return kernel?.status === 'idle' && nb.content.widgets.every(
        c => c.model.type !== 'code' || c.model.executionCount !== null);
}"""


@dataclass(frozen=True)
class Move:
    """One person's action and the browser's latency from its input event to the redrawn readout and plot."""

    control: str  # "α", "g", "rounding", "layer", "model", "α fast", "g fast"
    setting: str  # model · α · g · rounding · layer after the move
    on_grid: bool  # the setting's accuracy is in the shipped grid (else it is scored live, in the background)
    ms: float
    status: str  # the explorer's own status line after the move ("updated in … s" is the kernel's share)


@contextlib.contextmanager
def busy_cores(n: int = BUSY) -> Iterator[list[int]]:
    """``n`` processes that each keep one core busy (a Python loop), stopped by their ids afterwards."""
    procs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(n)]
    try:
        yield [p.pid for p in procs]
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(timeout=10)


class Setting:
    """The explorer's controls as the recorder moves them (α and g step along their sliders' options)."""

    def __init__(self) -> None:
        self.model, self.ratio, self.g, self.rounding, self.layer = MODEL, 2.0, 8, "down", "layer3.2.conv2"

    def apply(self, control: str, how: str) -> None:
        if control == "lrd-rounding":
            self.rounding = how
        elif control == "lrd-ratio":
            self.ratio = _step(RATIOS, self.ratio, how)
        elif control == "lrd-granularity":
            self.g = _step(GRANULARITIES, self.g, how)

    def on_grid(self) -> bool:
        ratios, gs, roundings = GRIDS.get(self.model, ((), (), ()))
        return self.ratio in ratios and (self.g in gs or self.g == 1) and self.rounding in roundings

    def __str__(self) -> str:
        return f"{self.model} · α {self.ratio:g} · g {self.g} · {self.rounding} · {self.layer}"


def _step(options: Sequence[Any], value: Any, key: str) -> Any:
    i = list(options).index(value) + (1 if key == "ArrowRight" else -1)
    return options[min(max(i, 0), len(options) - 1)]


def _timed(page: Any, events: Sequence[str], action: Callable[[], None], timeout: float = TIMEOUT_MS) -> float:
    page.evaluate(ARM, [list(events)])
    action()
    try:
        return float(page.wait_for_function(DONE, polling="raf", timeout=timeout).json_value())
    except Exception:  # recorded as a miss at the timeout (the page kept as a screenshot), and the next move goes on
        shot = Path(tempfile.gettempdir()) / f"slider_latency_timeout_{int(time.time())}.png"
        page.screenshot(path=str(shot), full_page=True)
        print(f"no redraw within {timeout / 1000:.0f} s: status {_status(page)!r}, screenshot {shot}", flush=True)
        return float(timeout)


def _status(page: Any) -> str:
    return page.locator(".lrd-status").inner_text().split(" · ")[0]


def _slider_or_button(page: Any, setting: Setting, what: str, control: str, how: str) -> Move:
    if control == "lrd-rounding":
        ms = _timed(page, ("pointerdown",), lambda: page.locator(".lrd-rounding button", has_text=how).click())
    else:
        page.locator(f".{control} .noUi-handle").focus()
        ms = _timed(page, ("keydown",), lambda: page.keyboard.press(how))
    setting.apply(control, how)
    move = Move(what, str(setting), setting.on_grid(), ms, _status(page))
    print(f"{ms:8.1f} ms  {what:<9} {setting}", flush=True)
    return move


def measure_moves(page: Any, settle_s: float, models: Sequence[str]) -> list[Move]:
    """Every move of :data:`MOVES` ``settle_s`` apart, the :data:`FAST` ones 0.4 s apart, every layer of
    :data:`LAYERS`, then each other model in ``models`` and back."""
    setting, moves = Setting(), []
    for what, control, how in MOVES:
        moves.append(_slider_or_button(page, setting, what, control, how))
        time.sleep(settle_s)
    for what, control, how in FAST:
        moves.append(_slider_or_button(page, setting, what, control, how))
        time.sleep(FAST_S)
    time.sleep(settle_s)
    select = page.locator(".lrd-layer select")
    for layer in LAYERS:
        ms = _timed(page, ("change", "input"), partial(select.select_option, layer))
        setting.layer = layer
        moves.append(Move("layer", str(setting), setting.on_grid(), ms, _status(page)))
        time.sleep(settle_s)
    model_select = page.locator(".lrd-model select")
    first = model_select.input_value()
    others = [m for m in models if m != first]
    seen = {first}
    for label in others + [first] + others + [first]:  # each model twice: its first load, then a move
        control = "model" if label in seen else FIRST_LOAD
        seen.add(label)
        ms = _timed(page, ("change", "input"), partial(model_select.select_option, label),
                    timeout=TIMEOUT_MS if control == "model" else LOAD_TIMEOUT_MS)
        setting.model, setting.layer = _model_key(label), page.locator(".lrd-layer select").input_value()
        moves.append(Move(control, str(setting), setting.on_grid(), ms, _status(page)))
        print(f"{ms:8.1f} ms  {control:<9} {setting}", flush=True)
        time.sleep(settle_s if control == "model" else max(settle_s, LOAD_SETTLE_S))
    return moves


def summary(moves: Sequence[Move]) -> dict[str, Any]:
    """Median and max latency per control, and whether each meets the goal (a model's first load is reported, not
    held to it: it reads the weights, SmolLM2's 135M parameters among them)."""
    out: dict[str, dict[str, Any]] = {}
    for control in dict.fromkeys(m.control for m in moves):
        ms = [m.ms for m in moves if m.control == control]
        med, top = statistics.median(ms), max(ms)
        out[control] = {"moves": len(ms), "median_ms": round(med, 1), "max_ms": round(top, 1),
                        "off_grid_moves": sum(not m.on_grid for m in moves if m.control == control),
                        "meets_goal": med <= TARGET_MS and top <= MAX_MS}
        if control == FIRST_LOAD:
            out[control] = {**out[control], "meets_goal": None, "held_to_goal": False}
    return out


def _model_key(label: str) -> str:
    """The shipped model a dropdown label names (its grid's key), else the label."""
    return next((key for key in GRIDS if key.split("_")[0] in label and "untrained" not in label), label)


def _model_options(page: Any) -> list[str]:
    return page.locator(".lrd-model select option").evaluate_all("os => os.map(o => o.value)")


def _link_lm_cache(cache: Path) -> str:
    """Link lrdlab's dequantized SmolLM2 (written by its first load anywhere on this machine) into the recording's
    fresh cache, so the LM's first load reads it as a class server's would; says where its weights come from."""
    try:
        from lrdlab.zoo import smollm

        entries = sorted(smollm.cache_dir().glob(f"{smollm.NAME}-v{smollm.CACHE_VERSION}-*"))
    except (ImportError, ValueError, OSError):
        entries = []
    if not entries:
        return "no dequantized SmolLM2 cached: its first load dequantizes the GGUF file"
    cache.mkdir(parents=True, exist_ok=True)
    (cache / entries[-1].name).symlink_to(entries[-1], target_is_directory=True)
    return f"lrdlab's dequantized SmolLM2 cache ({entries[-1].name}), linked in: the first load reads it"


def record(out: Path, settle_s: float = 3.0, busy: int = BUSY) -> dict[str, Any]:
    """Under ``busy`` spinning processes, open notebook 00, run it, move every control, write the latencies."""
    found = load_average()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp, busy_cores(busy) as pids:
        root, scratch = Path(tmp) / "lab", Path(tmp)
        root.mkdir()
        shutil.copy(NOTEBOOK, root / NOTEBOOK.name)
        lm_weights = _link_lm_cache(scratch / "cache")
        with jupyterlab(root, scratch) as server, notebook_page(server, NOTEBOOK.name, 1200) as page:
            page.wait_for_function(RUN_FINISHED, polling=1000, timeout=600_000)
            load_at_start = load_average()
            time.sleep(settle_s)
            models = [m for m in _model_options(page) if "untrained" not in m]
            moves = measure_moves(page, settle_s, models)
    rec = {"what": "rank explorer latency in Chromium, notebook 00 in JupyterLab under load: input event → readout "
                   "and plot redrawn (ms)",
           "command": COMMAND, "browser": "Debian chromium, headless, Playwright", "notebook": NOTEBOOK.name,
           "target_median_ms": TARGET_MS, "target_max_ms": MAX_MS, "settle_s": settle_s, "fast_s": FAST_S,
           "load_made": f"{busy} processes spinning one core each (pids {pids}) for the whole recording",
           "load_average_found": found, "load_average_at_first_move": load_at_start,
           "load_average_after": load_average(), "summary": summary(moves), "moves": [asdict(m) for m in moves],
           "machine": machine_info().to_dict(), "seconds": round(time.perf_counter() - started, 1),
           "first_loads": "a model's first load (its weights read) is listed apart and not held to the goal",
           "lm_weights": lm_weights,
           "meets_goal": all(s["meets_goal"] for s in summary(moves).values() if s["meets_goal"] is not None)}
    write_record(out, rec)
    return rec


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog=COMMAND, description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=data_dir() / "explorer_latency_chromium.json")
    parser.add_argument("--settle", type=float, default=3.0, help="seconds between moves (default 3)")
    parser.add_argument("--busy", type=int, default=BUSY, help=f"spinning processes to add (default {BUSY})")
    args = parser.parse_args(argv)
    rec = record(args.out, args.settle, args.busy)
    for m in rec["moves"]:
        print(f"{m['ms']:8.1f} ms  {m['control']:<9} {'grid' if m['on_grid'] else 'OFF '} {m['setting']:<60} "
              f"{m['status']}")
    for control, s in rec["summary"].items():
        print(control, s)
    print("load found", rec["load_average_found"], "· at first move", rec["load_average_at_first_move"], "→",
          rec["load_average_after"], "·", "meets goal" if rec["meets_goal"] else "misses goal")


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
