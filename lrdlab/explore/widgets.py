"""The explorers' widgets: :class:`RankExplorer` here, :class:`FreezingExplorer` from ``freezing_widget``."""

from __future__ import annotations

import time
from typing import Any

from lrdlab.explore import plots
from lrdlab.explore.freezing_widget import FreezingExplorer
from lrdlab.explore.rank_lab import DEFAULT_LAYER, DEFAULT_MODEL, GRANULARITIES, RATIOS, RankLab, readout_text
from lrdlab.zoo import models

__all__ = ["FreezingExplorer", "RankExplorer", "rank_explorer"]


class RankExplorer:
    """Widget: model and layer dropdowns, compression-ratio and granularity sliders → plot + readout.

    Drive it without a browser by setting ``.ratio.value`` / ``.granularity.value`` and reading
    ``.state``, ``.readout.value`` and ``.render_seconds``. Display it with ``display(explorer)``
    or as the last expression of a cell.
    """

    def __init__(self, model: str = DEFAULT_MODEL, layer: str = DEFAULT_LAYER, ratio: float = 2.0,
                 granularity: int = 1, lab: RankLab | None = None, auto_measure: bool = True,
                 model_names: list[str] | None = None):
        import ipywidgets as W

        self.lab = lab or RankLab()
        names = model_names or [m for m in models.MODELS if m.startswith("resnet")]
        self.model = W.Dropdown(options=names, value=model, description="model")
        self.layer = W.Dropdown(options=self.lab.layer_names(model), value=layer, description="layer")
        self.ratio = W.SelectionSlider(options=list(RATIOS), value=ratio, description="compression α",
                                       continuous_update=False, style={"description_width": "initial"})
        self.granularity = W.SelectionSlider(options=list(GRANULARITIES), value=granularity,
                                             description="granularity g", continuous_update=False,
                                             style={"description_width": "initial"})
        self.auto_measure = W.Checkbox(value=auto_measure, description="measure missing times")
        self.progress = W.IntProgress(min=0, max=1, value=0, description="measuring", layout={"visibility": "hidden"})
        self.image = W.Image(format="png")
        self.readout = W.HTML()
        for control, css in ((self.ratio, "lrd-ratio"), (self.granularity, "lrd-granularity"),
                             (self.image, "lrd-plot"), (self.readout, "lrd-readout")):
            control.add_class(css)  # stable handles for browser tests and custom CSS
        self.render_seconds: list[float] = []
        self.state: dict[str, Any] = {}
        self.widget = W.VBox([W.HBox([self.model, self.layer]), W.HBox([self.ratio, self.granularity]),
                              W.HBox([self.auto_measure, self.progress]), self.image, self.readout])
        self.model.observe(self._on_model, names="value")
        for control in (self.layer, self.ratio, self.granularity):
            control.observe(lambda _: self.update(), names="value")
        self.update()

    def _on_model(self, change) -> None:
        options = self.lab.layer_names(change["new"])
        with self.layer.hold_trait_notifications():
            self.layer.options = options
            self.layer.value = DEFAULT_LAYER if DEFAULT_LAYER in options else options[0]
        self.update()

    def _progress(self, done: int, total: int) -> None:
        self.progress.max, self.progress.value = total, done

    def update(self) -> None:
        """Recompute the state for the current controls and redraw (measuring first if asked and needed)."""
        start = time.perf_counter()
        state = self.lab.state(self.model.value, self.layer.value, self.ratio.value, self.granularity.value)
        if self.auto_measure.value and (state["original_ms"] is None or (state["ranks"] and state["time_ms"] is None)):
            self.progress.layout.visibility = "visible"
            state = self.lab.ensure_times(state, self._progress)
            self.progress.layout.visibility = "hidden"
        fig = self.lab.figure(state)
        self.image.value = plots.to_png(fig)
        self.readout.value = readout_text(state, self.lab.cache.reference_machine.get("cpu"))
        self.state = state
        self.render_seconds.append(time.perf_counter() - start)

    def _ipython_display_(self) -> None:
        from IPython.display import display

        display(self.widget)


def rank_explorer(**kwargs) -> RankExplorer:
    """Build a :class:`RankExplorer` (see there for the arguments)."""
    return RankExplorer(**kwargs)
