"""The freezing explorer widget: ratio, mode and period sliders over the shipped grid; new runs in the background."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from torch import nn

from lrdlab.explore import plots
from lrdlab.explore.figures import freezing_grid_figure
from lrdlab.explore.freezing_runs import (
    PERIODS,
    BackgroundRun,
    FreezingGrid,
    RunRequest,
    default_loaders,
    default_start_model,
    schedule_name,
)
from lrdlab.finetune.freezing import MODES
from lrdlab.measure.machine import machine_info


class FreezingExplorer:
    """Widget: compression ratio, freezing mode and period → accuracy / time / throughput curves from the grid.

    Moves only swap images: every selection of the grid is drawn once, in a background thread right after
    opening (``.prerender``), and memoised; ``render_seconds`` records each redraw.
    "run in background" fine-tunes the selected schedule in a worker thread (progress bar, cancel
    button) and joins the grid when done. Drive it without a browser through ``.mode.value``,
    ``.period.value``, ``.ratio.value``, ``.run_button.click()``, ``.cancel_button.click()``, ``.runner.wait()``.
    """

    def __init__(self, grid: FreezingGrid | None = None, mode: str = "sequential", period: str = "1 epoch",
                 ratio: float | None = None, run_epochs: int = 1,
                 start_model: Callable[[float], nn.Module] | None = None,
                 loaders: Callable[[], Any] | None = None):
        import ipywidgets as W

        self.grid = grid or FreezingGrid()
        settings = self.grid.settings
        self.run_epochs = run_epochs
        labels = [p[0] for p in PERIODS]
        wide = {"description_width": "initial"}  # labels in full, never cut ("compressi…")
        self.mode = W.ToggleButtons(options=list(MODES), value=mode, description="freezing", style=wide)
        self.period = W.SelectionSlider(options=labels, value=period, description="period (sequential)",
                                        continuous_update=True, style=wide, layout={"width": "360px"})
        ratios = self.grid.ratios
        self.ratio = W.SelectionSlider(options=ratios, value=ratio if ratio in ratios else ratios[0],
                                       description="compression ×", continuous_update=True, style=wide,
                                       layout={"width": "300px"})
        self.run_button = W.Button(description="run in background", button_style="primary",
                                   layout={"width": "auto"})
        self.cancel_button = W.Button(description="cancel", button_style="warning", disabled=True)
        self.bar = W.FloatProgress(min=0.0, max=1.0, value=0.0, description="run", style=wide)
        self.status = W.HTML()
        self.summary = W.HTML()
        self.image = W.Image(format="png")
        for control, css in ((self.mode, "lrd-mode"), (self.period, "lrd-period"), (self.ratio, "lrd-fratio"),
                             (self.image, "lrd-freezing-plot"), (self.status, "lrd-freezing-status"),
                             (self.summary, "lrd-freezing-summary"), (self.run_button, "lrd-run"),
                             (self.cancel_button, "lrd-cancel"), (self.bar, "lrd-run-progress")):
            control.add_class(css)
        self.runner = BackgroundRun(self.grid, start_model or default_start_model(settings),
                                    loaders or default_loaders(settings), lr=float(settings.get("finetune_lr", 0.02)),
                                    on_change=self._on_run_change)
        self.render_seconds: list[float] = []
        self._here = machine_info().to_dict()  # this machine, for the live-vs-recorded settings line
        self._png: dict[tuple, bytes] = {}
        self._joined: str | None = None
        # one row per slider: the period's readout ("every iteration") has room and never runs into the next label
        self.widget = W.VBox([W.HBox([self.mode]), self.period, self.ratio,
                              W.HBox([self.run_button, self.cancel_button, self.bar]), self.status, self.image,
                              self.summary])
        for control in (self.mode, self.period, self.ratio):
            control.observe(lambda _: self.update(), names="value")
        self.run_button.on_click(self._run)
        self.cancel_button.on_click(lambda _: self.runner.cancel())
        self._show_status()
        self._draw_lock = threading.Lock()
        self.update()
        self.prerender = threading.Thread(target=self._prerender, daemon=True, name="lrdlab-freezing-prerender")
        self.prerender.start()

    def _png_for(self, ratio: float, selected: str) -> bytes:
        """One selection's figure, drawn once (memoised; one drawing at a time: matplotlib's rc state is global)."""
        runs = self.grid.at_ratio(ratio)
        key = (ratio, selected, len(runs))
        if key not in self._png:
            with self._draw_lock:
                if key not in self._png:
                    fig = freezing_grid_figure(runs, selected, ratio, self.grid.machine.get("cpu", ""))
                    self._png[key] = plots.to_png(fig, dpi=72)
        return self._png[key]

    def _prerender(self) -> None:
        """Draw every (ratio, schedule) of the grid in the background, so slider moves only swap images."""
        for ratio in self.grid.ratios:
            for mode in MODES:
                for _, period, unit in (PERIODS if mode == "sequential" else PERIODS[1:2]):
                    self._png_for(ratio, schedule_name(mode, period, unit))

    @property
    def schedule(self) -> tuple[str, int, str]:
        _, period, unit = next(p for p in PERIODS if p[0] == self.period.value)
        return self.mode.value, period, unit

    @property
    def selected(self) -> str:
        return schedule_name(*self.schedule)

    def update(self) -> None:
        """Redraw for the current controls (from the PNG memo when this selection was drawn before)."""
        start = time.perf_counter()
        self.image.value = self._png_for(self.ratio.value, self.selected)
        self.summary.value = self.summary_text(self.grid.at_ratio(self.ratio.value))
        self.render_seconds.append(time.perf_counter() - start)

    def summary_text(self, runs) -> str:
        """What the selected schedule reached, from which source and settings, and how to read it."""
        sel = runs[runs["name"] == self.selected]
        if sel.empty:
            return (f"<b>{self.selected}</b> at ×{self.ratio.value:g}: not in the grid — press "
                    f"<i>run in background</i> to add it.")
        parts = []
        for _key, d in sel.groupby("key", sort=False):
            d = d.sort_values("epoch")
            src = "run here, this machine's clock" if d["source"].iloc[0] == "here" else "recorded"
            parts.append(f"{d['accuracy'].iloc[0]:.1f}% → {d['accuracy'].iloc[-1]:.1f}% after {int(d['epoch'].max())} "
                         f"epochs, {d[d['epoch'] > 0]['train_img_s'].median():.0f} training img/s [{src}]")
        return (f"<b>{self.selected}</b> at ×{self.ratio.value:g}: " + "; ".join(parts) + ". " + self.settings_text()
                + " Read: the bold curve against the faint ones — a schedule is better if it reaches the same "
                "accuracy in fewer training seconds; accuracies within about ±1.4 points (95%, 1,000 test images) "
                "are one result.")

    def settings_text(self) -> str:
        """The recorded grid's settings, and what a live run here shares with it and what differs."""
        s, m = self.grid.settings, self.grid.machine
        recorded = (f"Recorded: {s.get('finetune_epochs', '?')} epochs on {s.get('subset', '?')} images, batch "
                    f"{s.get('batch_size', '?')}, LR {s.get('finetune_lr', '?')}, on {m.get('cpu', '?')} with "
                    f"{m.get('torch_threads', '?')} torch thread(s), load {m.get('load_average', ['?'])[0]}.")
        here = self._here
        keys = (("CPU", "cpu"), ("threads", "torch_threads"), ("torch", "torch_version"))
        differ = [f"{what} {here.get(key)} here vs {m.get(key)}" for what, key in keys if here.get(key) != m.get(key)]
        return (recorded + " Runs here use the same recipe and start model (epochs set by the explorer); "
                + ("they differ in " + ", ".join(differ) + " and the load, so their seconds and img/s are this "
                   "machine's." if differ else "only the load and the clock differ: their seconds are this machine's."))

    def _run(self, _button=None) -> None:
        mode, period, unit = self.schedule
        self.runner.start(RunRequest(self.ratio.value, mode, period, unit, self.run_epochs))

    def _on_run_change(self) -> None:
        self._show_status()
        if self.runner.state == "done" and self.runner.key != self._joined:
            self._joined = self.runner.key
            self.update()

    def _show_status(self) -> None:
        r = self.runner
        label = {"idle": "", "running": "running: ", "done": "", "cancelled": "", "failed": ""}[r.state]
        self.status.value = f"{label}{r.message}"  # plain text: icon glyphs are empty boxes in some browsers
        self.bar.value = r.fraction
        running = r.state == "running"
        self.run_button.disabled = running
        self.cancel_button.disabled = not running

    def _ipython_display_(self) -> None:
        from IPython.display import display

        display(self.widget)
