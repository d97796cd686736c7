"""The explorers' widgets: :class:`RankExplorer` here, :class:`FreezingExplorer` from ``freezing_widget``."""

from __future__ import annotations

import threading
import time
from typing import Any

from lrdlab.explore.background import Foreground, lower_priority, pausing_modules
from lrdlab.explore.compute import conditions
from lrdlab.explore.figures import RankFigure
from lrdlab.explore.freezing_widget import FreezingExplorer
from lrdlab.explore.lab_models import default_keys, is_loaded, lab_model, load
from lrdlab.explore.network_lab import NetworkLab, network_plan, network_text
from lrdlab.explore.rank_lab import (
    DEFAULT_LAYER,
    DEFAULT_MODEL,
    GRANULARITIES,
    RATIOS,
    ROUNDINGS,
    RankLab,
    model_label,
    readout_text,
)

__all__ = ["FreezingExplorer", "RankExplorer", "rank_explorer"]
_STALE = ("stale",)  # a network key no setting has: the readout is recomputed
LM_QUALITY = ("perplexity, not accuracy: notebook 09 measures it live and shows the recorded table "
              "(data/lm_quality_smollm2.json)")


class RankExplorer:
    """Widget: model, layer, compression α, granularity g and rounding → spectra, layer and whole-network readouts.

    The layer readout puts the unrounded (g = 1) and the rounded ranks side by side at the same α; the
    network readout shows params, FLOPs, measured throughput (interleaved, with a 95% interval) and, for a trained
    model, the calibrated test accuracy of both plans. Models (``model_names``, default
    :func:`~lrdlab.explore.lab_models.default_keys`): every shipped trained model — a ViT too, whose layers
    include its attention ``q_proj/k_proj/v_proj/out_proj`` —, the pretrained language model SmolLM2-135M-Instruct
    (loaded in a thread when first chosen) and random-init ones. Drive it without a browser by setting control
    ``.value`` s and reading ``.state``, ``.network``, ``.readout.value``, ``.net_readout.value``,
    ``.render_seconds``. Accuracy comes from the shipped grid where it holds the plan
    (:mod:`tools.record.explorer_grids`); other plans are scored here, in the background with a progress bar
    (``background=False``: at once, before the readout), and :meth:`wait` waits for that. A move is drawn alone:
    background work (layer timing, scoring, the network readout, the prerender) waits at :attr:`gate` while a move
    runs and while the browser draws it (:mod:`lrdlab.explore.background`; the scoring thread also runs at a
    lower OS priority). Once a setting has stood still, a background thread draws the settings one move away — the
    neighbouring α and g, the other roundings, the nearest layers (:meth:`_prerender`; ``prerender=False``, or the
    class's :attr:`PRERENDER` when None: not), so a move mostly looks its image up; any update stops that thread
    after at most one step.
    """

    PRERENDER = True
    PRERENDER_DELAY_S = 0.3
    PRERENDER_LAYERS = 24  # the nearest layers in the dropdown (all of ResNet-20): their backgrounds, once per layer
    PRERENDER_FIGURES = 4  # of which the nearest: their figures at this setting (drawn anew at every setting)
    PRERENDER_GRID = True  # then every other α, g and rounding of the layer, nearest first: any slider move a lookup
    PNG_MEMO = 512  # figures kept (≈ 40 kB each), oldest dropped first

    def __init__(self, model: str = DEFAULT_MODEL, layer: str | None = None, ratio: float = 2.0,
                 granularity: int = 8, rounding: str = "down", lab: RankLab | None = None, auto_measure: bool = True,
                 model_names: list[str] | None = None, network: NetworkLab | None = None,
                 measure_network: bool = False, background: bool = True, prerender: bool | None = None):
        import ipywidgets as W

        self.lab = lab or RankLab()
        self.net_lab = network
        names = model_names or default_keys()
        if model not in names:
            raise ValueError(f"model {model!r} is not among the explorer's models {names}; pass one of them "
                             "(a trained model is listed only when its weights ship with lrdlab)")
        self.model = W.Dropdown(options=[(model_label(n), n) for n in names], value=model, description="model",
                                layout={"width": "360px"})
        options = self.lab.layer_names(model)
        self.layer = W.Dropdown(options=options, value=layer if layer in options else self._default_layer(options),
                                description="layer")
        self.ratio = W.SelectionSlider(options=list(RATIOS), value=ratio, description="compression α",
                                       continuous_update=False, style={"description_width": "initial"})
        self.granularity = W.SelectionSlider(options=list(GRANULARITIES), value=granularity,
                                             description="granularity g", continuous_update=False,
                                             style={"description_width": "initial"})
        self.rounding = W.ToggleButtons(options=list(ROUNDINGS), value=rounding, description="rounding")
        self.auto_measure = W.Checkbox(value=auto_measure, description="measure missing times here")
        self.measure_net = W.Button(description="measure network throughput", icon="tachometer",
                                    layout={"width": "auto"})  # the whole label, never "measure netw…"
        self.progress = W.IntProgress(min=0, max=1, value=0, description="measuring", layout={"visibility": "hidden"})
        self.scoring = W.IntProgress(min=0, max=1, value=0, description="accuracy",
                                     layout={"visibility": "hidden"}, style={"description_width": "initial"})
        self.status = W.HTML()
        self.image = W.Image(format="png")
        self.readout = W.HTML()
        self.net_readout = W.HTML()
        for control, css in ((self.model, "lrd-model"), (self.layer, "lrd-layer"), (self.ratio, "lrd-ratio"),
                             (self.granularity, "lrd-granularity"), (self.rounding, "lrd-rounding"),
                             (self.image, "lrd-plot"), (self.readout, "lrd-readout"),
                             (self.net_readout, "lrd-network"), (self.status, "lrd-status"),
                             (self.measure_net, "lrd-measure-net"), (self.scoring, "lrd-scoring")):
            control.add_class(css)  # stable handles for browser tests and custom CSS
        self._measure_network = measure_network
        self.background = background
        self._job: threading.Thread | None = None
        self._lock = threading.Lock()
        self._missing: list = []  # (accuracy lab, plan) of the current setting without an accuracy yet
        self._measurer: threading.Thread | None = None  # times the current setting's layer here, in the background
        self._to_measure: tuple | None = None
        self._states: dict[tuple, dict[str, Any]] = {}
        self._memo_lock = threading.Lock()
        self.render_seconds: list[float] = []
        self._png: dict[tuple, bytes] = {}
        self._figure = RankFigure(dpi=72)  # one figure redrawn per setting: no figure or axes made per move
        # background threads draw on a figure of their own (sharing the layers' backgrounds): a move never waits
        # for the lock of a prerender step
        self._back_figure = RankFigure(dpi=72, backgrounds=self._figure)
        self._network_key: tuple | None = None  # the (model, α, g, rounding) of self.network
        self._net_thread: threading.Thread | None = None  # computes the network readout after a move
        self._net_again = False
        self._busy = threading.RLock()  # an update, or one prerendered layer: never both (one figure, global rc)
        self.gate = Foreground()  # a move runs alone: background threads wait at their next step meanwhile
        self._background_work = threading.Lock()  # one background job at a time (timing, scoring)
        self._generation = 0
        self.prerender = self.PRERENDER if prerender is None else prerender
        self.prerender_thread: threading.Thread | None = None
        self.state: dict[str, Any] = {}
        self.network: dict[str, Any] = {}
        self.widget = W.VBox([W.HBox([self.model, self.layer]), W.HBox([self.ratio, self.granularity]),
                              W.HBox([self.rounding]), W.HBox([self.auto_measure, self.measure_net, self.progress]),
                              self.scoring, self.status, self.image, self.readout, self.net_readout])
        self._shown_model = model  # the model whose layers the layer list holds (the dropdown's, once loaded)
        self._loader: threading.Thread | None = None
        self.model.observe(self._on_model, names="value")
        self._quiet = False
        for control in (self.layer, self.ratio, self.granularity, self.rounding):
            control.observe(lambda _: None if self._quiet else self.update(), names="value")
        self.measure_net.on_click(lambda _: self.measure_network())
        self.update()

    @staticmethod
    def _default_layer(options: list[str]) -> str:
        return next((n for n in (DEFAULT_LAYER, "layer4.1.conv2") if n in options), options[len(options) // 2])

    def _on_model(self, change) -> None:
        name = change["new"]
        if not is_loaded(name) and lab_model(name).kind == "lm" and self.background:
            # a language model's first load takes seconds: in a thread, the controls showing the previous model
            # meanwhile (and working); the switch happens when it is loaded, if the dropdown still names it
            self.status.value = (f"loading {model_label(name)} (first use: its weights are read once, seconds to a "
                                 "minute on a busy machine) — the explorer keeps answering for "
                                 f"{model_label(self._shown_model)} meanwhile …")
            self._loader = threading.Thread(target=self._load_then_switch, args=(name,), daemon=True,
                                            name="lrdlab-load-model")
            self._loader.start()
            return
        self._switch_model(name)

    def _load_then_switch(self, name: str) -> None:
        self.lab.layer_names(name)  # loads it
        if self.model.value == name:
            self._switch_model(name)

    def _switch_model(self, name: str) -> None:
        """Show ``name``'s layers and redraw (once, not once per intermediate layer value)."""
        options = self.lab.layer_names(name)
        self._quiet = True
        try:
            with self._busy, self.layer.hold_sync():  # no move draws a mix of the two models; one message
                self._shown_model = name
                self.layer.options = options
                self.layer.value = self._default_layer(options)
        finally:
            self._quiet = False
        self.update()

    def _progress(self, done: int, total: int) -> None:
        self.progress.max, self.progress.value = total, done

    def _yielding_progress(self, done: int, total: int) -> None:
        """:meth:`_progress` of a background timing, which waits for a move between its rounds."""
        self._progress(done, total)
        self.gate.pause()

    def measure_network(self) -> None:
        """Time the whole network here (the button): the button is disabled and a bar counts the interleaved
        rounds while it runs, the status says what is measured, and the readouts redraw when it ends."""
        self.measure_net.disabled = True
        try:
            self.update(measure_network=True)
        finally:
            self.measure_net.disabled = False
            self.progress.layout.visibility = "hidden"
            self.progress.description = "measuring"

    def _network_progress(self, net: NetworkLab) -> None:
        """Show the rounds bar and say what the network measurement about to start measures."""
        most = net.most_rounds()
        self.progress.description, self.progress.value, self.progress.max = "rounds", 0, most
        self.progress.layout.visibility = "visible"
        self.status.value = (f"measuring the whole network here ({conditions()}): the original and both plans at "
                             f"batch {net.batch}, interleaved, up to {most} rounds — this can take minutes on a "
                             "large model …")

    def _network_lab(self, name: str) -> NetworkLab:
        """The network lab, its current accuracy lab that of ``name`` when trained (what notebooks read)."""
        if self.net_lab is None:
            self.net_lab = NetworkLab(batch=self.lab.batch)
        spec = lab_model(name)
        if spec.scored and spec.pretrained is not None:
            self.net_lab.use_accuracy(spec.pretrained)
        return self.net_lab

    def network_state(self, measure: bool, key: tuple | None = None) -> dict[str, Any]:
        """Whole-network counts, throughput (measured here, or None) and accuracy at g = 1 and the chosen g, of
        ``key`` = (model, α, g, rounding) (default: the controls now). ``"missing"``: the plans whose accuracy is
        still to be scored (at once when ``background`` is False, else by :meth:`_show_network`'s job)."""
        name, ratio, granularity, rounding = key or self._network_key_now()
        model, spec = load(name), lab_model(name)
        size, lm = spec.input_size, spec.kind == "lm"
        net = self._network_lab(name)
        plans = {"unrounded (g=1)": network_plan(model, ratio, 1, exclude=spec.stem),
                 f"rounded (g={granularity}, {rounding})":
                     network_plan(model, ratio, granularity, rounding, spec.stem)}
        accuracy = net.accuracy_lab(spec.pretrained) if spec.scored and spec.pretrained is not None else None
        counts = {label: (accuracy and accuracy.structure(plan)) or net.counts(name, model, plan, size,
                                                                               spec.input_dtype)
                  for label, plan in plans.items()}  # the shipped grid's counts are instant
        if lm:  # per sequence of tokens; its speed and quality are notebook 09's (decode, perplexity)
            counts = {label: {**c, "per": f"{size[0]}-token sequence"} for label, c in counts.items()}
        measure = measure and not lm
        if measure and not net.has_speed(name, plans):
            self._network_progress(net)
        speed = net.speed(name, model, plans, size, measure=measure,
                          on_round=lambda done: setattr(self.progress, "value", done))
        acc: dict[str, Any] = {label: {"text": LM_QUALITY} if lm else None for label in plans}
        missing: list = []
        if accuracy is not None:
            missing = [(accuracy, p) for p in plans.values() if not accuracy.known(p)]
            if missing and not self.background:
                accuracy.prefetch([p for _, p in missing])  # both plans at once, one per core
                missing = []
            acc = {label: net.accuracy_of(plan, accuracy) if accuracy.known(plan) else {"pending": True}
                   for label, plan in plans.items()}
        return {"counts": counts, "speed": speed, "accuracy": acc, "missing": missing, "key": (name, ratio,
                                                                                                granularity, rounding)}

    def _show_network(self, network: dict[str, Any]) -> bool:
        """Show a :meth:`network_state` if it is of the controls' setting now (else drop it: a later one comes),
        and score what it lacks in the background. One writer of :attr:`network` and the network readout."""
        key = network["key"]
        with self._lock:
            if key != self._network_key_now():
                return False
            self.network, self._network_key = network, key
            self._missing = list(network["missing"])
            self.net_readout.value = network_text(network["counts"], network["speed"], network["accuracy"],
                                                  model_label(key[0]))
        if network["missing"]:
            self._score_in_background()
        return True

    def _score_in_background(self) -> None:
        """Score the shown setting's :attr:`_missing` plans in a background thread (one job at a time, the progress
        bar counting them, each plan yielding to every move); then redraw the network readout, and score the
        setting shown then if the controls moved meanwhile."""
        with self._lock:
            if self._job is not None:
                return  # the running job scores the current setting's plans when it ends the one in hand
            self.scoring.max, self.scoring.value = len(self._missing), 0
            self.scoring.description = (f"scoring {len(self._missing)} plan{'s' if len(self._missing) > 1 else ''} "
                                        "here")
            self.scoring.layout.visibility = "visible"
            self._job = threading.Thread(target=self._run_job, daemon=True, name="lrdlab-accuracy")
            self._job.start()

    def _run_job(self) -> None:
        lower_priority()  # the scorer's CPU goes to the browser and the kernel's foreground first
        try:
            while True:
                with self._lock:  # the controls may have moved to another unscored setting meanwhile
                    todo = [(lab, p) for lab, p in self._missing if not lab.known(p)]
                    if not todo:
                        self._end_job()
                        return
                    self.scoring.max, self.scoring.value = len(todo), 0
                for done, (lab, plan) in enumerate(todo, 1):
                    self.gate.pause()
                    with self._background_work, pausing_modules(self.gate):
                        lab.accuracy(plan)  # one thread; every module forward waits while a move runs
                    self.scoring.value = done
                self._redraw_network()
        except BaseException:
            with self._lock:
                self._end_job()
            raise

    def _end_job(self) -> None:
        self.scoring.layout.visibility = "hidden"
        self._job = None

    def _redraw_network(self) -> None:
        """Recompute and show the network readout of the current controls (after scoring), in the worker."""
        with self._lock:
            self._network_key = _STALE
        self._network_in_background()

    def _network_key_now(self) -> tuple:
        return (self._shown_model, self.ratio.value, self.granularity.value, self.rounding.value)

    def _network_in_background(self) -> None:
        """Compute the network readout of the current controls in a worker thread (one at a time; it redoes the
        work while the controls keep moving) and show it when it is the controls' setting. Says so meanwhile."""
        with self._lock:
            key = self._network_key_now()
            if self._network_key != key:
                self.net_readout.value = (f"<i>whole network · {model_label(key[0])} at α={key[1]:g}, g={key[2]} "
                                          f"({key[3]}): counting in the background …</i>")
            if self._net_thread is not None:
                self._net_again = True
                return
            self._net_again = False
            self._net_thread = threading.Thread(target=self._run_network, daemon=True, name="lrdlab-network")
            self._net_thread.start()

    def _run_network(self) -> None:
        try:
            while True:
                self.gate.pause()  # after the move is drawn
                network = self.network_state(measure=bool(self._measure_network))
                with self._lock:
                    again, self._net_again = self._net_again, False
                    if again or network["key"] != self._network_key_now():
                        continue
                shown = self._show_network(network)
                with self._lock:  # done only once it is shown: wait() returns with the readout up to date
                    if shown and not self._net_again:
                        self._net_thread = None
                        return
        except BaseException:
            with self._lock:
                self._net_thread = None
            raise

    def wait(self, timeout: float = 600.0) -> None:
        """Wait for the network readout and the background scoring (and the one it starts for a setting that
        moved meanwhile) to end."""
        deadline = time.perf_counter() + timeout
        if self._loader is not None:
            self._loader.join(timeout)
        while time.perf_counter() < deadline:
            threads = [t for t in (self._net_thread, self._job) if t is not None]
            if not threads:
                return
            for thread in threads:
                thread.join(max(0.0, deadline - time.perf_counter()))

    def update(self, measure_network: bool = False) -> None:
        """Recompute everything for the current controls and redraw (measuring first if asked and needed); then
        prepare the settings one move away in the background (:meth:`_one_move_away`)."""
        start = time.perf_counter()
        self._generation += 1  # a running prerender stops at its next step
        with self.gate.move(), self._busy:  # background work waits meanwhile, and while the browser draws
            self._update(start, measure_network)
        if self.prerender:
            self.prerender_thread = threading.Thread(target=self._prerender, args=(self._generation,), daemon=True,
                                                     name="lrdlab-rank-prerender")
            self.prerender_thread.start()

    @staticmethod
    def _lacks_times(state: dict[str, Any]) -> bool:
        """Whether :meth:`RankLab.ensure_times` would measure (times missing, or from different sources)."""
        twin = state.get("unrounded", {})
        needed = [(state["original_ms"], state["original_source"])]
        needed += [(state["time_ms"], state["time_source"])] if state["ranks"] else []
        needed += [(twin.get("time_ms"), twin.get("time_source"))] if twin.get("ranks") else []
        return any(ms is None for ms, _ in needed) or len({src for _, src in needed}) > 1

    def _measure_in_background(self, values: tuple) -> None:
        """Time the setting ``values`` here in a worker thread (one at a time: a later setting waits for the
        running one), then redraw if the controls still show it. The move itself is drawn at once, with the times
        known so far."""
        with self._lock:
            self._to_measure = values
            if self._measurer is not None:
                return
            self._measurer = threading.Thread(target=self._run_measure, daemon=True, name="lrdlab-layer-times")
            self._measurer.start()

    def _run_measure(self) -> None:
        try:
            while True:
                with self._lock:
                    values, self._to_measure = self._to_measure, None
                    if values is None:
                        self._measurer = None
                        return
                self.gate.pause()
                self.progress.layout.visibility = "visible"
                with self._background_work:  # never timed while a plan is scored, nor while a move runs
                    self.lab.ensure_times(self.lab.state(*values), self._yielding_progress)
                with self._memo_lock:
                    self._states.clear()  # states carry the cached times: the new ones are read anew
                self.progress.layout.visibility = "hidden"
                if values == self._values():  # the layer's new background first, outside the update's lock
                    self.gate.pause()
                    self._back_figure.background(self.lab, self._state(values),
                                                 self.lab.cache.reference_machine.get("cpu"))
                if values == self._values():
                    self.update()
        except BaseException:
            with self._lock:
                self._measurer = None
            raise

    def _state(self, values: tuple) -> dict[str, Any]:
        """:meth:`RankLab.state` of ``values`` (model, layer, α, g, rounding), memoised until new times arrive."""
        state = self._states.get(values)  # the measuring thread may clear the memo at any time: read it once
        if state is None:
            state = self.lab.state(*values)
            with self._memo_lock:  # the prerender thread fills it too
                while len(self._states) >= self.PNG_MEMO:
                    self._states.pop(next(iter(self._states)))
                self._states[values] = state
        return state

    def _values(self) -> tuple:
        return (self._shown_model, self.layer.value, self.ratio.value, self.granularity.value, self.rounding.value)

    def _png_for(self, state: dict[str, Any], stale_ok: bool = False, figure: RankFigure | None = None) -> bytes:
        """The figure of a state, drawn once per setting and the layer's times (memoised; any thread), on
        ``figure`` (default: the moves' own).

        ``stale_ok`` (a move): when the layer's times changed since its background was drawn, draw on the old
        background at once and let a background thread draw the new one and redraw (never memoised stale)."""
        figure = figure or self._figure
        values = tuple(state[k] for k in ("model", "layer", "ratio", "granularity", "rounding"))
        drawn_times = len(self.lab.times(state["model"], state["layer"], state["input_shape"]))
        key = (values, drawn_times, state["time_ms"], state["original_ms"])
        png = self._png.get(key)
        if png is None:
            stale = stale_ok and figure.stale(self.lab, state)
            png = figure.png(self.lab, state, self.lab.cache.reference_machine.get("cpu"), stale_ok)
            if stale:  # drawn on the layer's previous background
                threading.Thread(target=self._refresh, args=(values,), daemon=True, name="lrdlab-refresh").start()
                return png
            with self._memo_lock:
                while len(self._png) >= self.PNG_MEMO:
                    self._png.pop(next(iter(self._png)))
                self._png[key] = png
        return png

    def _refresh(self, values: tuple) -> None:
        """Draw the layer's background with its new times (yielding to moves), then redraw if still shown."""
        self.gate.pause()
        if values[:2] != self._values()[:2]:
            return
        self._back_figure.background(self.lab, self._state(values), self.lab.cache.reference_machine.get("cpu"))
        if values == self._values():
            self.update()

    def _one_move_away(self) -> list[tuple[str, float, int, str]]:
        """(layer, α, g, rounding) one control move from the current setting: the neighbouring g and α on their
        sliders and the other roundings, then the nearest layers at this setting."""
        layer, ratio, g, rounding = self.layer.value, self.ratio.value, self.granularity.value, self.rounding.value
        near: list[tuple[str, float, int, str]] = []
        for step in (1, -1):
            i = GRANULARITIES.index(g) + step
            near += [(layer, ratio, GRANULARITIES[i], rounding)] if 0 <= i < len(GRANULARITIES) else []
        for step in (1, -1):
            i = RATIOS.index(ratio) + step
            near += [(layer, RATIOS[i], g, rounding)] if 0 <= i < len(RATIOS) else []
        near += [(layer, ratio, g, r) for r in ROUNDINGS if r != rounding]
        names = list(self.layer.options)
        here = names.index(layer) if layer in names else 0
        nearest = sorted((abs(i - here), name) for i, name in enumerate(names))[1:self.PRERENDER_LAYERS + 1]
        return near + [(name, ratio, g, rounding) for _, name in nearest]

    def _layer_grid(self) -> list[tuple[str, float, int, str]]:
        """Every (layer, α, g, rounding) of the current layer, the fewest slider steps from the setting first."""
        layer, ratio, g, rounding = self.layer.value, self.ratio.value, self.granularity.value, self.rounding.value
        a, k = RATIOS.index(ratio), GRANULARITIES.index(g)
        grid = [(abs(i - a) + abs(j - k) + (r != rounding), (layer, RATIOS[i], GRANULARITIES[j], r))
                for i in range(len(RATIOS)) for j in range(len(GRANULARITIES)) for r in ROUNDINGS]
        return [setting for _, setting in sorted(grid, key=lambda item: item[0])]

    def _prerender(self, generation: int) -> None:
        """Prepare what a next move shows, until an update: the figures of the settings one move away — the
        neighbouring α and g, the other roundings and the :attr:`PRERENDER_FIGURES` nearest layers (such a move
        only looks its image up) —, the figure each other loaded model opens on at this setting (a model switch
        looks it up), and the backgrounds of the other nearest layers (drawn once per layer: a move there blits).
        Then, with :attr:`PRERENDER_GRID`, the figures of every other setting of the layer. Never measures (a
        timing here would compete with the foreground), never holds the update's lock, and waits at :attr:`gate`
        before each step; it draws on a figure of its own, so a move never waits for the step being drawn."""
        time.sleep(self.PRERENDER_DELAY_S)  # a setting passed through quickly is not prerendered
        model, layer = self._shown_model, self.layer.value
        cpu = self.lab.cache.reference_machine.get("cpu")
        near = self._one_move_away()
        figures = len(near) - self.PRERENDER_LAYERS + self.PRERENDER_FIGURES
        steps = [((model, *v), i < figures or v[0] == layer) for i, v in enumerate(near)]
        steps[figures:figures] = [(v, True) for v in self._other_models_here()]
        steps += [((model, *v), True) for v in (self._layer_grid()[1:] if self.PRERENDER_GRID else [])]
        for values, figure in steps:
            self.gate.pause()
            if generation != self._generation:
                return
            state = self._state(values)
            self.gate.pause()
            if generation != self._generation:
                return
            if figure:
                self._png_for(state, figure=self._back_figure)
            else:
                self._back_figure.background(self.lab, state, cpu)

    def _other_models_here(self) -> list[tuple]:
        """(model, layer, α, g, rounding) that a switch to each other loaded model shows (its default layer)."""
        setting = (self.ratio.value, self.granularity.value, self.rounding.value)
        return [(name, self._default_layer(self.lab.layer_names(name)), *setting)
                for _, name in self.model.options if name != self._shown_model and is_loaded(name)]

    def _update(self, start: float, measure_network: bool) -> None:
        values = self._values()
        state = self._state(values)
        measuring = self.auto_measure.value and self._lacks_times(state)
        if measuring and not self.background:
            measured = self.lab.ensure_times(state, self._progress)
            if measured is not state:  # new times: every memoised state of this layer is stale
                with self._memo_lock:
                    self._states.clear()
                    self._states[values] = state = measured
            measuring = False
        elif measuring:
            self._measure_in_background(values)
        network_key = (values[0], *values[2:])  # model, α, g, rounding: a layer change leaves the network as it is
        at_once = measure_network or not self.background or self._network_key is None  # the first one
        if at_once:
            self._show_network(self.network_state(measure=measure_network or bool(self._measure_network),
                                                  key=network_key))
        self.progress.layout.visibility = "hidden"
        if values != self._values():
            return  # the controls moved meanwhile: their own update draws the current state
        cpu = self.lab.cache.reference_machine.get("cpu")
        # the plot and the layer readout are the move's first messages to the browser (what it waits to see)
        self.image.value = self._png_for(state, stale_ok=True)  # a setting drawn before is looked up
        self.readout.value = readout_text(state, cpu)
        self.state = state
        if not at_once and (network_key != self._network_key or self._net_thread is not None):
            self._network_in_background()  # the whole network's counts: a worker thread, never this move
        self.render_seconds.append(time.perf_counter() - start)
        pending = f" · measuring {values[1]} here in the background …" if measuring else ""
        self.status.value = (f"updated in {self.render_seconds[-1]:.2f} s{pending} · live times: {conditions()}. Read: "
                             "compare the two columns — rounding to g changes the ranks and can keep small layers "
                             "whole; whether that costs accuracy or buys speed is in the readouts, measured, not "
                             "assumed; a speed-up is shown only between times from the same source. Accuracy: "
                             "from the shipped grid (recorded grid) where it holds the setting, else scored here.")

    def _ipython_display_(self) -> None:
        from IPython.display import display

        display(self.widget)


def rank_explorer(**kwargs) -> RankExplorer:
    """Build a :class:`RankExplorer` (see there for the arguments)."""
    return RankExplorer(**kwargs)
