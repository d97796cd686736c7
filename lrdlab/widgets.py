"""Interactive explorers (ipywidgets) over cached results, built on pure functions testable without a browser.

- :class:`RankExplorer`: model + layer → compression target and rank granularity sliders → the
  layer's spectrum with the chosen rank, reconstruction error, params / FLOPs, and the measured
  layer time (from a disk cache; measured and cached on first use, with a progress bar).
- :class:`FreezingExplorer`: freezing mode + period → accuracy and throughput curves from cached
  runs; a button trains a new short run on the embedded data and adds it.

The maths lives in :class:`RankLab` and :func:`freezing_figure` (no widgets), so tests and scripts
call them directly; the widgets only wire controls to them. Slider moves over cached data only
redraw (measured: see ``RankExplorer.render_seconds``).
"""

from __future__ import annotations

import fnmatch
import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from matplotlib.figure import Figure
from torch import nn

from . import factorize, measure, models, plots
from .counting import count_flops
from .layers import build, describe, unsupported_reason
from .plan import make_plan

DATA_DIR = Path(__file__).resolve().parent.parent / "data"
REFERENCE_LAYER_TIMES = DATA_DIR / "reference_layer_times.json"
REFERENCE_FREEZING = DATA_DIR / "reference_freezing.json"
RATIOS = (1.5, 2.0, 2.5, 3.0, 4.0, 6.0, 8.0)
GRANULARITIES = (1, 2, 4, 8, 16, 32, 64)
DEFAULT_MODEL, DEFAULT_LAYER = "resnet50", "layer4.1.conv2"


def default_cache_dir() -> Path:
    """Where measured results are cached: ``$LRDLAB_CACHE`` or ``~/.cache/lrdlab``."""
    return Path(os.environ.get("LRDLAB_CACHE", Path.home() / ".cache" / "lrdlab"))


# --- timing and its cache -----------------------------------------------------------------------


def _key(model: str, layer: str, ranks: tuple[int, ...] | None, input_shape: tuple[int, ...]) -> str:
    r = "orig" if ranks is None else "x".join(map(str, ranks))
    return f"{model}|{layer}|{r}|{'x'.join(map(str, input_shape))}"


class TimeCache:
    """Measured layer times: a writable JSON cache on this machine, over a read-only shipped reference.

    ``get`` answers ``(ms, source)`` with source ``"here"`` (measured on this machine) or
    ``"reference"`` (shipped in ``data/``, measured on the machine named in that file), or None.
    """

    def __init__(self, path: Path | None = None, reference: Path | None = REFERENCE_LAYER_TIMES):
        self.path = Path(path) if path else default_cache_dir() / "layer_times.json"
        self.local: dict[str, float] = self._read(self.path)
        ref = self._read_file(reference) if reference else {}
        self.reference: dict[str, float] = ref.get("times", {})
        self.reference_machine: dict[str, Any] = ref.get("machine", {})

    @staticmethod
    def _read_file(path: Path | None) -> dict[str, Any]:
        try:
            return json.loads(Path(path).read_text())
        except (OSError, ValueError):
            return {}

    def _read(self, path: Path) -> dict[str, float]:
        return self._read_file(path).get("times", {})

    def get(self, key: str) -> tuple[float, str] | None:
        if key in self.local:
            return self.local[key], "here"
        if key in self.reference:
            return self.reference[key], "reference"
        return None

    def put(self, key: str, ms: float) -> None:
        self.local[key] = float(ms)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"machine": measure.machine_info(), "times": self.local}, indent=1, sort_keys=True))
        tmp.replace(self.path)

    def layer_times(self, model: str, layer: str, input_shape: tuple[int, ...]) -> pd.DataFrame:
        """All cached times of one layer: columns ``rank`` (first rank; 0 = original), ``time_ms``, ``source``."""
        prefix, suffix = f"{model}|{layer}|", f"|{'x'.join(map(str, input_shape))}"
        rows = {}
        for source, table in (("reference", self.reference), ("here", self.local)):  # local wins
            for key, ms in table.items():
                if key.startswith(prefix) and key.endswith(suffix):
                    r = key[len(prefix):-len(suffix)]
                    rows[r] = (0 if r == "orig" else int(r.split("x")[0]), ms, source)
        return pd.DataFrame(sorted(rows.values()), columns=["rank", "time_ms", "source"])


# --- the rank explorer's maths ------------------------------------------------------------------


@dataclass
class LayerData:
    """What the explorer needs about one layer, computed once: shapes, spectra, error table."""

    name: str
    module: nn.Module
    info: dict[str, Any]
    method: str
    input_shape: tuple[int, ...]  # one sample, batch of 1
    spectra: list[np.ndarray]  # SVD: [σ]; Tucker-2: [σ of input unfolding (R1), σ of output unfolding (R2)]
    error_table: np.ndarray | None = field(default=None, repr=False)  # Tucker-2: kept energy by (r2, r1)


@lru_cache(maxsize=4)
def _model(name: str) -> nn.Module:
    torch.manual_seed(0)
    return models.get_model(name).eval()


@lru_cache(maxsize=8)
def _input_shapes(name: str) -> dict[str, tuple[int, ...]]:
    """Input shape (batch 1) of every Linear/Conv2d layer, from one meta-device forward pass."""
    import copy

    model = copy.deepcopy(_model(name)).to("meta")
    shapes: dict[str, tuple[int, ...]] = {}
    hooks = [m.register_forward_hook(lambda mod, inp, out, n=n: shapes.__setitem__(n, tuple(inp[0].shape)))
             for n, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    with torch.no_grad():
        model(torch.empty((1, *models.input_size(name)), device="meta"))
    for h in hooks:
        h.remove()
    return shapes


def tucker2_kept_energy(weight: torch.Tensor) -> np.ndarray:
    """``E[r2, r1]``: energy ‖W‖² kept by the HOSVD Tucker-2 truncation at ranks (r2, r1) (index 0 = rank 0).

    With complete orthonormal channel bases the rotated core G has ‖G‖ = ‖W‖, and truncating to the
    leading (r2, r1) block is an orthogonal projection, so the relative error is
    ``sqrt(1 − E[r2, r1] / ‖W‖²)`` — every (r2, r1) answered from one table.
    """
    W = weight.detach().double()
    with plots.one_thread():
        u_out = factorize.leading_left_vectors(factorize.mode_unfolding(W, 0), W.shape[0])
        u_in = factorize.leading_left_vectors(factorize.mode_unfolding(W, 1), W.shape[1])
    core = torch.einsum("scij,sa,cb->abij", W, u_out, u_in)
    block = (core ** 2).sum(dim=(2, 3)).numpy()
    table = np.zeros((block.shape[0] + 1, block.shape[1] + 1))
    table[1:, 1:] = block.cumsum(0).cumsum(1)
    return table


class RankLab:
    """The rank explorer without widgets: ``state(model, layer, ratio, granularity)`` → everything shown."""

    def __init__(self, cache: TimeCache | None = None, batch: int = 8, measure: bool = True):
        self.cache = cache if cache is not None else TimeCache()
        self.batch = batch
        self.measure = measure
        self._layers: dict[tuple[str, str], LayerData] = {}
        self._flop_memo: dict[tuple, int] = {}

    @staticmethod
    def layer_names(model: str) -> list[str]:
        """Decomposable Linear/Conv2d layers of a registered model, in module order."""
        return [n for n, m in _model(model).named_modules()
                if isinstance(m, (nn.Linear, nn.Conv2d)) and unsupported_reason(m) is None]

    def layer(self, model: str, name: str) -> LayerData:
        key = (model, name)
        if key not in self._layers:
            module = _model(model).get_submodule(name)
            info = describe(module)
            plan = make_plan(_model(model), ratio=2, include=[name])
            method = plan[name].method or ("svd" if info["kernel_size"] == [1, 1] else "tucker2")
            W = module.weight.detach()
            if method == "tucker2":
                spectra = [plots.layer_spectrum(module, "input"), plots.layer_spectrum(module, "output")]
                table = tucker2_kept_energy(W)
            else:
                spectra, table = [plots.layer_spectrum(module)], None
            self._layers[key] = LayerData(name, module, info, method, _input_shapes(model)[name], spectra, table)
        return self._layers[key]

    def timing_shape(self, data: LayerData) -> tuple[int, ...]:
        return (self.batch, *data.input_shape[1:])

    def state(self, model: str, name: str, ratio: float, granularity: int) -> dict[str, Any]:
        """Ranks, params, FLOPs, reconstruction error and cached times of one layer at one setting."""
        data = self.layer(model, name)
        row = make_plan(_model(model), ratio=ratio, granularity=granularity, include=[name])[name]
        shape = self.timing_shape(data)
        out: dict[str, Any] = {
            "model": model, "layer": name, "ratio": ratio, "granularity": granularity, "method": data.method,
            "C": data.info["in_channels"], "S": data.info["out_channels"], "kernel": data.info["kernel_size"],
            "ranks": tuple(row.ranks) if row.ranks else None, "target_ranks": row.target_ranks,
            "reason": row.reason, "params_before": row.params_before, "params_after": row.params_after,
            "input_shape": shape,
        }
        out["params_removed_pct"] = 100.0 * (1 - row.params_after / row.params_before)
        out["compression_ratio"] = row.params_before / row.params_after
        out["flops_before"] = self._flops(data, None)
        out["flops_after"] = self._flops(data, out["ranks"])
        out["rel_error"] = self.rel_error(data, out["ranks"])
        orig = self.cache.get(_key(model, name, None, shape))
        new = self.cache.get(_key(model, name, out["ranks"], shape)) if out["ranks"] else orig
        out["original_ms"], out["original_source"] = orig if orig else (None, None)
        out["time_ms"], out["time_source"] = new if new else (None, None)
        return out

    def _flops(self, data: LayerData, layer_ranks: tuple[int, ...] | None) -> int:
        """Forward FLOPs of one sample through the layer (original when ``layer_ranks`` is None), memoised."""
        key = (data.name, id(data.module), layer_ranks)
        if key not in self._flop_memo:
            if layer_ranks is None:
                module = data.module
            else:
                with torch.device("meta"):
                    module = build(data.info, data.method, layer_ranks)
            self._flop_memo[key] = count_flops(module, data.input_shape)
        return self._flop_memo[key]

    @staticmethod
    def rel_error(data: LayerData, layer_ranks: tuple[int, ...] | None) -> float:
        """Relative Frobenius error ‖W − Ŵ‖/‖W‖ of the (HOSVD) decomposition at these ranks."""
        if layer_ranks is None:
            return 0.0
        if data.method == "tucker2":
            r1, r2 = layer_ranks
            t = data.error_table
            kept = t[min(r2, t.shape[0] - 1), min(r1, t.shape[1] - 1)] / t[-1, -1]
        else:
            energy = plots.cumulative_energy(data.spectra[0])
            kept = energy[min(layer_ranks[0], len(energy)) - 1]
        return math.sqrt(max(0.0, 1.0 - kept))

    def _timing_module(self, data: LayerData, layer_ranks: tuple[int, ...] | None) -> nn.Module:
        if layer_ranks is None:
            return data.module
        with torch.device("meta"):
            module = build(data.info, data.method, tuple(layer_ranks))
        module = module.to_empty(device="cpu")  # time does not depend on the values
        for p in module.parameters():
            torch.nn.init.normal_(p, std=0.01)
        return module

    def measure_times(self, model: str, name: str, todo: list[tuple[int, ...] | None],
                      progress: Callable[[int, int], None] | None = None, rounds: int = 3) -> dict:
        """Measure (here) and cache layer times: ``None`` is the original layer, a tuple a decomposition.

        The variants are timed interleaved, A B A B …, ``rounds`` times (:func:`lrdlab.measure.compare`,
        one warm-up and three timed runs per round); each time is the median over rounds.
        """
        data = self.layer(model, name)
        shape = self.timing_shape(data)
        variants = {str(r): self._timing_module(data, r) for r in todo}
        per_round: dict[str, list[float]] = {k: [] for k in variants}
        for i in range(rounds):
            df = measure.compare(variants, shape, rounds=1, warmup=1, repeats=3)
            for k, sec in zip(df["name"], df["median_s"]):
                per_round[k].append(sec)
            if progress:
                progress(i + 1, rounds)
        out = {}
        for r in todo:
            out[r] = 1000.0 * float(np.median(per_round[str(r)]))
            self.cache.put(_key(model, name, None if r is None else tuple(r), shape), out[r])
        return out

    def ensure_times(self, state: dict[str, Any], progress: Callable[[int, int], None] | None = None) -> dict:
        """Measure whatever of (original, chosen ranks) is missing from the cache; return the fresh state.

        When the chosen ranks are missing the original is re-timed beside them, so the pair is comparable.
        """
        todo: list[tuple[int, ...] | None] = []
        if state["ranks"] and state["time_ms"] is None:
            todo = [None, state["ranks"]]
        elif state["original_ms"] is None:
            todo = [None]
        if todo:
            self.measure_times(state["model"], state["layer"], todo, progress)
        return self.state(state["model"], state["layer"], state["ratio"], state["granularity"]) if todo else state

    def figure(self, state: dict[str, Any]) -> Figure:
        """Spectrum with the chosen rank (σ and energy) and the cached layer time vs rank."""
        data = self.layer(state["model"], state["layer"])
        r = state["ranks"][0] if state["ranks"] else None
        sigma = data.spectra[0]
        times = self.cache.layer_times(state["model"], state["layer"], state["input_shape"])
        with plots.style():
            fig, (ax_s, ax_e, ax_t) = plots.new_figure(1, 3, width=12, height=3.6, layout=None)
            fig.subplots_adjust(left=0.06, right=0.99, bottom=0.14, top=0.84, wspace=0.28)
            idx = np.arange(1, len(sigma) + 1)
            energy = 100 * plots.cumulative_energy(sigma)
            ax_s.semilogy(idx, sigma / sigma[0])
            ax_e.plot(idx, energy)
            what = "input-channel unfolding (R1)" if data.method == "tucker2" else "weight matrix"
            ax_s.set(xlabel="index i", ylabel="σ_i / σ_1", title=f"spectrum, {what}")
            ax_e.set(xlabel="rank r", ylabel="energy kept (%)", title="cumulative energy", ylim=(0, 101))
            if r is not None:
                for ax, y in ((ax_s, sigma[r - 1] / sigma[0]), (ax_e, energy[r - 1])):
                    ax.axvline(r, color="tab:red", linestyle=":")
                    ax.plot([r], [y], "o", color="tab:red", markeredgecolor="black", label=f"r = {r}")
                ax_e.legend(fontsize="small", loc="lower right")
            dec = times[times["rank"] > 0]
            if not dec.empty:
                ax_t.plot(dec["rank"], dec["time_ms"], "o-", markersize=4, label="decomposed (cached)")
            if state["original_ms"] is not None:
                ax_t.axhline(state["original_ms"], color="black", linestyle="--", label="original")
            if state["time_ms"] is not None and r is not None:
                ax_t.plot([r], [state["time_ms"]], "o", color="tab:red", markersize=9, markeredgecolor="black",
                          label=f"r = {r}")
            ax_t.set(xlabel="rank r", ylabel=f"time per batch of {self.batch} (ms)", title="measured layer time")
            ax_t.set_ylim(bottom=0)
            if ax_t.lines:
                ax_t.legend(fontsize="small")
            else:
                ax_t.text(0.5, 0.5, "not measured yet", ha="center", va="center", transform=ax_t.transAxes)
            fig.suptitle(f"{state['model']} · {state['layer']} ({state['C']}→{state['S']}, "
                         f"k={'×'.join(map(str, state['kernel']))}, {state['method']})")
        return fig


def readout_text(state: dict[str, Any], reference_cpu: str | None = None) -> str:
    """One-line HTML summary of a :meth:`RankLab.state` (what the explorer prints under the plot)."""
    if state["ranks"] is None:
        return f"<b>{state['layer']}</b>: kept — {state['reason']}"
    ranks = ",".join(map(str, state["ranks"]))

    def t(ms, src):
        if ms is None:
            return "not measured"
        where = "" if src == "here" else f" (reference{', ' + reference_cpu if reference_cpu else ''})"
        return f"{ms:.3g} ms{where}"

    speed = ""
    if state["time_ms"] and state["original_ms"]:
        speed = f" · speed-up {100 * (state['original_ms'] / state['time_ms'] - 1):+.1f}%"
    return (
        f"<b>g={state['granularity']}, ratio={state['ratio']:g}</b> → ranks <b>{ranks}</b> "
        f"(target {','.join(map(str, state['target_ranks']))}) · params removed "
        f"{state['params_removed_pct']:.1f}% (×{state['compression_ratio']:.2f}) · FLOPs "
        f"{state['flops_before'] / 1e6:.1f}M → {state['flops_after'] / 1e6:.1f}M · rel. error "
        f"{state['rel_error']:.3f} · time {t(state['time_ms'], state['time_source'])} vs original "
        f"{t(state['original_ms'], state['original_source'])}{speed}"
    )


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


def build_reference_layer_times(
    model: str = DEFAULT_MODEL, layers: list[str] | None = None, ratios=RATIOS, granularities=GRANULARITIES,
    batch: int = 8, path: Path = REFERENCE_LAYER_TIMES, rounds: int = 7,
) -> Path:
    """Measure every (ratio, granularity) rank of ``layers`` on this machine and write the shipped reference.

    Re-runnable: ``python -c "from lrdlab.widgets import build_reference_layer_times as b; b()"``.
    """
    from tqdm.auto import tqdm

    load_before = os.getloadavg()
    cache = TimeCache(path=path, reference=None)
    lab = RankLab(cache=cache, batch=batch)
    layers = layers or [DEFAULT_LAYER]
    todo = []
    for name in layers:
        todo.append((name, None))
        for ratio in ratios:
            for g in granularities:
                r = lab.state(model, name, ratio, g)["ranks"]
                if r and (name, r) not in todo:
                    todo.append((name, r))
    by_layer: dict[str, list] = {}
    for name, r in todo:
        by_layer.setdefault(name, []).append(r)
    for name, variants in tqdm(by_layer.items(), desc="layer times"):
        lab.measure_times(model, name, variants, rounds=rounds)
    data = json.loads(path.read_text())
    data["settings"] = {"batch": batch, "rounds": rounds, "warmup": 1, "repeats": 3, "interleaved": True,
                        "statistic": "median over rounds of the median of repeats", "dtype": "float32",
                        "model_weights": "random (time does not depend on values)"}
    data["load_average_before"], data["load_average_after"] = list(load_before), list(os.getloadavg())
    data["command"] = ("python -c \"import torch; torch.set_num_threads(1); from lrdlab.widgets import "
                       f"build_reference_layer_times as b; b(layers={list(layers)!r}, rounds={rounds})\"")
    path.write_text(json.dumps(data, indent=1, sort_keys=True))
    return path


# --- the freezing explorer ----------------------------------------------------------------------

RUN_COLUMNS = ["run", "source", "mode", "period", "epoch", "wall_s", "accuracy", "loss", "train_img_s"]


@dataclass
class FreezingSetup:
    """The short runs' recipe: a model trained from scratch on the embedded data, decomposed, fine-tuned."""

    model: str = "resnet20"
    data: str = "mnist5k"
    pretrain_epochs: int = 3
    finetune_epochs: int = 3
    ratio: float = 2.0
    batch_size: int = 128
    lr: float = 0.1
    finetune_lr: float = 0.02
    subset: int | None = None
    seed: int = 0
    image_size: int | None = None
    channels: int | None = None
    exclude: tuple[str, ...] = ("conv1", "*.downsample.*")

    def key(self) -> str:
        return "_".join(f"{v}" for v in (self.model, self.data, self.pretrain_epochs, self.ratio, self.subset,
                                         self.seed, self.image_size, self.channels, self.lr))

    @classmethod
    def from_study(cls, settings: dict[str, Any]) -> FreezingSetup:
        """The setup matching a :func:`lrdlab.train.run_freezing_study` result's ``settings``."""
        names = {"epochs": "pretrain_epochs"}
        kw = {names.get(k, k): v for k, v in settings.items()}
        kw = {k: v for k, v in kw.items() if k in cls.__dataclass_fields__}
        if "exclude" in kw:
            kw["exclude"] = tuple(kw["exclude"])
        return cls(**kw)


def runs_from_study(study: dict[str, Any]) -> pd.DataFrame:
    """A saved freezing study (``run_freezing_study`` JSON) as explorer runs: its fine-tuning histories only."""
    h = pd.DataFrame(study.get("history", []))
    if h.empty:
        return pd.DataFrame(columns=RUN_COLUMNS)
    period = int(study.get("settings", {}).get("period", 1))
    h = h[h["mode"] != "original"].copy()
    h["period"] = period
    h["run"] = [m + (f" N={period}" if m == "sequential" else "") for m in h["mode"]]
    h["source"] = "reference"
    return h[RUN_COLUMNS]


class FreezingLab:
    """Freezing runs without widgets: cached histories (shipped reference + runs made here) and new short runs.

    ``runs()`` has one row per (run, epoch) with :data:`RUN_COLUMNS`; ``throughput()`` is the shipped
    interleaved benchmark (F7 columns of :func:`lrdlab.train.freezing_throughput`).
    """

    def __init__(self, setup: FreezingSetup | None = None, reference: Path | None = REFERENCE_FREEZING,
                 cache_dir: Path | None = None):
        self.cache_dir = Path(cache_dir) if cache_dir else default_cache_dir()
        self.path = self.cache_dir / "freezing_runs.json"
        ref = TimeCache._read_file(reference) if reference else {}
        self.setup = setup or FreezingSetup.from_study(ref.get("settings", {}))
        self.reference_machine = ref.get("machine", {})
        self._reference = runs_from_study(ref)
        self._throughput = pd.DataFrame(ref.get("throughput", []))
        local = TimeCache._read_file(self.path)
        self._local = pd.DataFrame(local.get("history", []), columns=RUN_COLUMNS)
        self._base: tuple[nn.Module, Any] | None = None

    def runs(self) -> pd.DataFrame:
        return pd.concat([d for d in (self._reference, self._local) if not d.empty] or [self._reference],
                         ignore_index=True)

    def throughput(self) -> pd.DataFrame:
        return self._throughput.copy()

    def find(self, mode: str, period: int) -> list[str]:
        """Names of the cached runs with this mode (and period, for sequential)."""
        runs = self.runs()
        hit = runs[(runs["mode"] == mode) & ((runs["period"] == period) | (mode != "sequential"))]
        return list(dict.fromkeys(hit["run"]))

    def _loaders(self):
        from .data import get_loaders

        s = self.setup
        return get_loaders(s.data, s.batch_size, subset=s.subset, seed=s.seed, image_size=s.image_size,
                           channels=s.channels, cache_dir=self.cache_dir / "datasets")

    def base_model(self, progress: Callable[[str], None] | None = None) -> nn.Module:
        """The trained-then-decomposed starting point of every short run (trained once, cached on disk)."""
        from .plan import decompose, load_decomposed, save_decomposed
        from .train import fit, set_seed

        if self._base is not None:
            return self._base[0]
        s = self.setup
        folder = self.cache_dir / f"freezing_base_{s.key()}"
        loaders = self._loaders()
        if (folder / "plan.json").exists():
            net = load_decomposed(folder, models.get_model(s.model, num_classes=loaders.num_classes))
        else:
            if progress:
                progress(f"training {s.model} from scratch for {s.pretrain_epochs} epochs (once; cached)")
            set_seed(s.seed)
            original = models.get_model(s.model, num_classes=loaders.num_classes)
            fit(original, loaders.train, loaders.test, s.pretrain_epochs, s.lr, seed=s.seed, progress=False)
            names = [n for n, m in original.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
            exclude = [p for p in s.exclude if any(fnmatch.fnmatchcase(n, p) for n in names)]
            plan = make_plan(original.eval(), ratio=s.ratio, exclude=exclude or None, model_name=s.model)
            net = decompose(original, plan)
            save_decomposed(net, plan, folder)
        self._base = (net, loaders)
        return net

    def run_short(self, mode: str, period: int = 1, epochs: int | None = None,
                  progress: Callable[[str], None] | None = None, save: bool = True) -> pd.DataFrame:
        """Fine-tune a copy of :meth:`base_model` with ``Freezer(mode, period)``; add its history to the cache."""
        import copy

        from .freezing import MODES, Freezer
        from .train import fit

        if mode not in MODES:
            raise ValueError(f"freezing mode must be one of {MODES} (got {mode!r})")
        base = self.base_model(progress)
        loaders = self._base[1]
        s = self.setup
        net = copy.deepcopy(base)
        freezer = Freezer(net, mode, period=period, unit="epoch")
        epochs = epochs or s.finetune_epochs

        def report(row: dict[str, Any]) -> None:
            if progress:
                progress(f"{mode} N={period}: epoch {row['epoch']}/{epochs}, accuracy {row['accuracy']:.2f}%")

        h = fit(net, loaders.train, loaders.test, epochs, s.finetune_lr, freezer, seed=s.seed,
                evaluate_start=True, progress=False, callbacks=[report])
        name = f"{mode}" + (f" N={period}" if mode == "sequential" else "")
        h = h.assign(run=name, mode=mode, period=period)
        return self.add(h, source="here" if save else "unsaved")

    def add(self, history: pd.DataFrame, source: str = "here") -> pd.DataFrame:
        """Add one run's history (``fit`` columns plus run, mode, period) and persist it when ``source == 'here'``."""
        rows = history.assign(source=source)[RUN_COLUMNS]
        taken = set(self.runs()["run"])
        name, base, i = rows["run"].iloc[0], rows["run"].iloc[0], 2
        while name in taken:
            name, i = f"{base} #{i}", i + 1
        rows = rows.assign(run=name)
        self._local = pd.concat([d for d in (self._local, rows) if not d.empty], ignore_index=True)
        if source == "here":
            self.cache_dir.mkdir(parents=True, exist_ok=True)
            local = self._local[self._local["source"] == "here"]
            self.path.write_text(json.dumps({"machine": measure.machine_info(), "setup": self.setup.__dict__,
                                             "history": local.to_dict("records")}, default=float))
        return rows


def freezing_figure(runs: pd.DataFrame, highlight: list[str] | None = None,
                    throughput: pd.DataFrame | None = None) -> Figure:
    """Accuracy vs epoch and vs wall-clock, and training throughput per run; ``highlight`` runs drawn bold.

    ``runs``: :data:`RUN_COLUMNS`. ``throughput``: optional F7 table (technique, train_img_s) drawn as bars.
    """
    highlight = list(highlight or [])
    names = list(dict.fromkeys(runs["run"]))
    colors = dict(zip(names, __import__("seaborn").color_palette(plots.PALETTE, max(1, len(names)))))
    panels = 4 if throughput is not None and not throughput.empty else 3
    with plots.style():
        fig, axes = plots.new_figure(1, panels, width=3.6 * panels, height=3.6, layout=None)
        fig.subplots_adjust(left=0.05, right=0.99, bottom=0.16, top=0.82, wspace=0.32)
        for name in names:
            d = runs[runs["run"] == name].sort_values("epoch")
            bold = name in highlight
            kw = {"color": colors[name], "linewidth": 2.6 if bold else 1.0, "alpha": 1.0 if bold else 0.45,
                  "marker": "o", "markersize": 4 if bold else 2,
                  "label": f"{name}{' (' + d['source'].iloc[0] + ')' if d['source'].iloc[0] != 'reference' else ''}"}
            axes[0].plot(d["epoch"], d["accuracy"], **kw)
            axes[1].plot(d["wall_s"], d["accuracy"], **kw)
            trained = d[d["epoch"] > 0]
            axes[2].plot(trained["epoch"], trained["train_img_s"], **kw)
        axes[0].set(xlabel="fine-tuning epoch", ylabel="test accuracy (%)", title="accuracy vs epoch")
        axes[1].set(xlabel="wall-clock training time (s)", ylabel="test accuracy (%)", title="accuracy vs time")
        axes[2].set(xlabel="fine-tuning epoch", ylabel="training throughput (img/s)", title="throughput per epoch")
        axes[0].legend(fontsize="x-small")
        if panels == 4:
            t = throughput[~throughput["technique"].str.contains(r"\[", regex=True)]
            axes[3].bar(t["technique"], t["train_img_s"], color=__import__("seaborn").color_palette(plots.PALETTE)[0])
            axes[3].set(ylabel="training img/s", title="interleaved benchmark (F7)")
            axes[3].tick_params(axis="x", labelrotation=30, labelsize="x-small")
        fig.suptitle("Fine-tuning a decomposed model with freezing")
    return fig


class FreezingExplorer:
    """Widget: freezing mode and period → cached accuracy / throughput curves; a button adds a new short run.

    Drive it without a browser: set ``.mode.value`` / ``.period.value``, call ``.run_button.click()``,
    read ``.selected``, ``.status.value`` and ``.image.value``.
    """

    def __init__(self, lab: FreezingLab | None = None, mode: str = "sequential", period: int = 1,
                 run_epochs: int | None = None):
        import ipywidgets as W

        from .freezing import MODES

        self.lab = lab or FreezingLab()
        self.run_epochs = run_epochs
        self.mode = W.ToggleButtons(options=list(MODES), value=mode, description="freezing")
        self.period = W.IntSlider(value=period, min=1, max=4, description="period N (epochs)",
                                  continuous_update=False, style={"description_width": "initial"})
        self.run_button = W.Button(description="run a new short run", icon="play", button_style="primary")
        self.status = W.HTML()
        self.image = W.Image(format="png")
        self.selected: list[str] = []
        self.render_seconds: list[float] = []
        for control, css in ((self.period, "lrd-period"), (self.image, "lrd-freezing-plot"),
                             (self.status, "lrd-freezing-status")):
            control.add_class(css)
        self.widget = W.VBox([W.HBox([self.mode, self.period]), W.HBox([self.run_button, self.status]), self.image])
        self.mode.observe(lambda _: self.update(), names="value")
        self.period.observe(lambda _: self.update(), names="value")
        self.run_button.on_click(self._run)
        self.update()

    def update(self) -> None:
        start = time.perf_counter()
        self.selected = self.lab.find(self.mode.value, self.period.value)
        cached = ", ".join(self.selected) if self.selected else "none cached — press run"
        self.status.value = f"selected: <b>{self.mode.value}</b>, N={self.period.value} · runs: {cached}"
        fig = freezing_figure(self.lab.runs(), self.selected, self.lab.throughput())
        self.image.value = plots.to_png(fig)
        self.render_seconds.append(time.perf_counter() - start)

    def _run(self, _button=None) -> None:
        self.run_button.disabled = True
        try:
            self.lab.run_short(self.mode.value, self.period.value, self.run_epochs,
                               progress=lambda text: setattr(self.status, "value", f"⏳ {text}"))
        finally:
            self.run_button.disabled = False
        self.update()

    def _ipython_display_(self) -> None:
        from IPython.display import display

        display(self.widget)


def build_reference_freezing(study: str | Path, path: Path = REFERENCE_FREEZING) -> Path:
    """Ship a :func:`lrdlab.train.run_freezing_study` result (its JSON file) as the explorer's reference.

    Produce the study with e.g. ``python -c "from lrdlab.train import run_freezing_study as r;
    r(model='resnet20', data='mnist5k', epochs=4, finetune_epochs=3, out='study.json')"``.
    """
    data = json.loads(Path(study).read_text())
    data["source"] = f"lrdlab.train.run_freezing_study, copied from {Path(study).name}"
    path.write_text(json.dumps(data, indent=1, default=float) + "\n")
    return path
