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

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache
from importlib.resources import files
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from matplotlib.figure import Figure
from torch import nn

from lrdlab.explore import plots
from lrdlab.lowrank import factorize
from lrdlab.lowrank.layers import build, describe, unsupported_reason
from lrdlab.lowrank.methods import TUCKER2, default_method, get_method
from lrdlab.lowrank.plan import make_plan
from lrdlab.measure import timing as measure
from lrdlab.measure.cache import TimeCache
from lrdlab.measure.counting import count_flops
from lrdlab.measure.shapes import layer_input_shapes
from lrdlab.zoo import models

REFERENCE_DIR = Path(str(files("lrdlab.explore") / "reference"))  # shipped inside the package (pyproject package-data)
REFERENCE_LAYER_TIMES = REFERENCE_DIR / "reference_layer_times.json"
REFERENCE_FREEZING = REFERENCE_DIR / "reference_freezing.json"
RATIOS = (1.5, 2.0, 2.5, 3.0, 4.0, 6.0, 8.0)
GRANULARITIES = (1, 2, 4, 8, 16, 32, 64)
DEFAULT_MODEL, DEFAULT_LAYER = "resnet50", "layer4.1.conv2"


# --- timing and its cache -----------------------------------------------------------------------


def _key(model: str, layer: str, input_shape: tuple[int, ...]) -> str:
    """The explorer's key in the one :class:`~lrdlab.measure.cache.TimeCache`; labels are ranks or ``orig``."""
    return f"{model}|{layer}|{'x'.join(map(str, input_shape))}"


def _label(ranks: tuple[int, ...] | None) -> str:
    return "orig" if ranks is None else "x".join(map(str, ranks))


def default_time_cache() -> TimeCache:
    """This machine's layer times (:func:`~lrdlab.measure.cache.default_cache_dir`) over the shipped reference."""
    return TimeCache(reference=REFERENCE_LAYER_TIMES)


def layer_times(cache: TimeCache, model: str, layer: str, input_shape: tuple[int, ...]) -> pd.DataFrame:
    """All cached times of one layer: columns ``rank`` (first rank; 0 = original), ``time_ms``, ``source``."""
    rows = [(0 if label == "orig" else int(label.split("x")[0]), 1e3 * s, source)
            for label, (s, source) in cache.labels(_key(model, layer, input_shape)).items()]
    return pd.DataFrame(sorted(rows), columns=["rank", "time_ms", "source"])


def _ms(hit: tuple[float, str] | None) -> tuple[float | None, str | None]:
    return (1e3 * hit[0], hit[1]) if hit else (None, None)


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


@lru_cache(maxsize=256)
def _input_shape(name: str, layer: str) -> tuple[int, ...]:
    """Input shape (batch 1) of one layer of a registered model (:func:`lrdlab.measure.shapes.layer_input_shapes`)."""
    return layer_input_shapes(_model(name), [layer], (1, *models.input_size(name)))[layer]


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
        self.cache = cache if cache is not None else default_time_cache()
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
            method = plan[name].method or default_method(info).name
            W = module.weight.detach()
            if get_method(method) is TUCKER2:
                spectra = [plots.layer_spectrum(module, "input"), plots.layer_spectrum(module, "output")]
                table = tucker2_kept_energy(W)
            else:
                spectra, table = [s.numpy() for s in get_method(method).spectra(W)], None
            self._layers[key] = LayerData(name, module, info, method, _input_shape(model, name), spectra, table)
        return self._layers[key]

    def timing_shape(self, data: LayerData) -> tuple[int, ...]:
        return (self.batch, *data.input_shape[1:])

    def state(self, model: str, name: str, ratio: float, granularity: int) -> dict[str, Any]:
        """Ranks, params, FLOPs, reconstruction error and cached times of one layer at one setting."""
        data = self.layer(model, name)
        form = data.method if get_method(data.method).kxk else "auto"  # one form at every ratio
        row = make_plan(_model(model), ratio=ratio, granularity=granularity, include=[name], method=form)[name]
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
        orig = self.cache.lookup(_key(model, name, shape), "orig")
        new = self.cache.lookup(_key(model, name, shape), _label(out["ranks"])) if out["ranks"] else orig
        out["original_ms"], out["original_source"] = _ms(orig)
        out["time_ms"], out["time_source"] = _ms(new)
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
        if get_method(data.method) is TUCKER2:
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

        The variants are timed interleaved, A B A B …, ``rounds`` times (:func:`lrdlab.compare`,
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
            self.cache.put(_key(model, name, shape), _label(None if r is None else tuple(r)), per_round[str(r)])
        self.cache.save()
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
        times = layer_times(self.cache, state["model"], state["layer"], state["input_shape"])
        with plots.style():
            fig, (ax_s, ax_e, ax_t) = plots.new_figure(1, 3, width=12, height=3.6, layout=None)
            fig.subplots_adjust(left=0.06, right=0.99, bottom=0.14, top=0.84, wspace=0.28)
            idx = np.arange(1, len(sigma) + 1)
            energy = 100 * plots.cumulative_energy(sigma)
            ax_s.semilogy(idx, sigma / sigma[0])
            ax_e.plot(idx, energy)
            what = get_method(data.method).rank_names[0]
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
