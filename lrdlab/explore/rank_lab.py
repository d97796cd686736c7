"""The rank explorer's maths, without widgets: layer data, ranks at (α, g, rounding), times and their sources.

- layer times from the one :class:`~lrdlab.measure.cache.TimeCache`: measured here over the shipped reference
  file (each time keeps its source).
- :class:`RankLab`: ``state(model, layer, ratio, granularity, rounding)`` → ranks, params, FLOPs, weight
  error and times of the rounded setting and, under ``"unrounded"``, of g = 1 at the same α;
  ``ensure_times`` measures here whatever is missing or would mix sources.
- :func:`readout_text`: the side-by-side HTML readout; a speed-up only between times from one source.

Models: every shipped trained model (ResNet-20 on MNIST-5k, the default; a ViT when its weights ship) and
the zoo's random-init models, labelled untrained (:mod:`lrdlab.explore.lab_models`). Layers are the plan's
rows: a ViT's attention projections appear as ``…self_attention.q_proj/k_proj/v_proj/out_proj``
(:func:`lrdlab.lowrank.plan.candidate_layers`). Widgets: :mod:`lrdlab.explore.widgets`; figures:
:mod:`lrdlab.explore.figures`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from importlib.resources import files
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from lrdlab.explore import plots
from lrdlab.explore.lab_models import DEFAULT_MODEL, arch, is_trained, lab_model, load, model_label
from lrdlab.lowrank.layers import build, describe, unsupported_reason, weight_of
from lrdlab.lowrank.methods import default_method, get_method
from lrdlab.lowrank.plan import Layers, Ratio, candidate_layers, make_plan
from lrdlab.measure import stats
from lrdlab.measure.cache import TimeCache
from lrdlab.measure.compare import compare, round_times
from lrdlab.measure.counting import count_flops
from lrdlab.measure.shapes import layer_input_shapes
from lrdlab.measure.timing_config import TimingConfig

REFERENCE_DIR = Path(str(files("lrdlab.explore") / "reference"))  # shipped inside the package (pyproject package-data)
REFERENCE_LAYER_TIMES = REFERENCE_DIR / "reference_layer_times.json"
REFERENCE_FREEZING = REFERENCE_DIR / "reference_freezing.json"
RATIOS = (1.5, 2.0, 2.5, 3.0, 4.0, 6.0, 8.0)
GRANULARITIES = (1, 2, 4, 8, 16, 32, 64)
DEFAULT_LAYER = "layer3.2.conv2"
ROUNDINGS = ("down", "up", "nearest")
__all__ = ["DEFAULT_LAYER", "DEFAULT_MODEL", "LayerData", "RankLab", "arch", "is_trained", "model_label",
           "readout_text"]


# --- timing and its cache -----------------------------------------------------------------------


def _key(model: str, layer: str, ranks: tuple[int, ...] | None, input_shape: tuple[int, ...]) -> tuple[str, str]:
    """(key, label) of one layer variant in the one :class:`~lrdlab.measure.cache.TimeCache`."""
    return f"{model}|{layer}|{'x'.join(map(str, input_shape))}", "orig" if ranks is None else "x".join(map(str, ranks))


def cached_ms(cache: TimeCache, key: tuple[str, str]) -> tuple[float, str] | None:
    """``(ms, source)`` of a cached variant — source ``"here"`` or ``"reference"`` — or None."""
    hit = cache.lookup(*key)
    return (1e3 * hit[0], hit[1]) if hit else None


def default_time_cache() -> TimeCache:
    """This machine's layer times (:func:`~lrdlab.measure.cache.default_cache_dir`) over the shipped reference."""
    return TimeCache(reference=REFERENCE_LAYER_TIMES)


def layer_times(cache: TimeCache, model: str, layer: str, input_shape: tuple[int, ...]) -> pd.DataFrame:
    """All cached times of one layer: columns ``rank`` (first rank; 0 = original), ``time_ms``, ``source``."""
    rows = [(0 if label == "orig" else int(label.split("x")[0]), 1e3 * sec, source)
            for label, (sec, source) in cache.labels(_key(model, layer, None, input_shape)[0]).items()]
    return pd.DataFrame(sorted(rows), columns=["rank", "time_ms", "source"])


# --- the rank explorer's maths ------------------------------------------------------------------


@dataclass
class LayerData:
    """What the explorer needs about one layer, computed once: shapes, spectra, error table."""

    name: str
    module: nn.Module
    info: dict[str, Any]
    method: str
    input_shape: tuple[int, ...]  # one sample, batch of 1
    spectra: list[np.ndarray]  # the method's spectra, one per rank (its ``rank_names``)
    error: Callable[[Sequence[int]], float] | None = field(default=None, repr=False)  # the method's ``errors``


def _model(name: str) -> nn.Module:
    """The explorer model behind a key, in eval mode (:func:`lrdlab.explore.lab_models.load`, cached)."""
    return load(name)


def _layers(model: nn.Module) -> dict[str, nn.Module]:
    """Decomposable Linear/Conv2d plan rows, in module order; attention q/k/v as ``nn.Linear`` views."""
    return {n: m for n, m in candidate_layers(model)
            if isinstance(m, (nn.Linear, nn.Conv2d)) and unsupported_reason(m) is None}


@lru_cache(maxsize=8)
def _layer_names(name: str, _model_id: int) -> tuple[str, ...]:
    """:func:`_layers` of a loaded model (a model switch reads its list, never walks the model again)."""
    return tuple(_layers(_model(name)))


@lru_cache(maxsize=8)
def _input_shapes(name: str) -> dict[str, tuple[int, ...]]:
    """Input shape (batch 1) of every layer row (:func:`lrdlab.measure.shapes.layer_input_shapes`); a language
    model's Linear layers see (1, tokens, in_features)."""
    model, spec = _model(name), lab_model(name)
    if spec.kind == "lm":
        return {n: (1, *spec.input_size, m.in_features) for n, m in _layers(model).items() if isinstance(m, nn.Linear)}
    return layer_input_shapes(model, list(_layers(model)), (1, *spec.input_size))


class RankLab:
    """The rank explorer without widgets: ``state(model, layer, ratio, granularity)`` → everything shown."""

    def __init__(self, cache: TimeCache | None = None, batch: int = 8, measure: bool = True):
        self.cache = cache if cache is not None else default_time_cache()
        self.batch = batch
        self.measure = measure
        self._layers: dict[tuple[str, str], LayerData] = {}
        self._flop_memo: dict[tuple, int] = {}
        self._row_memo: dict[tuple, Any] = {}  # (model, layer, α, g, rounding, form) → its plan row

    @staticmethod
    def layer_names(model: str) -> list[str]:
        """Decomposable Linear/Conv2d layers of an explorer model, in module order (a ViT's q/k/v/out too)."""
        return list(_layer_names(model, id(_model(model))))

    def layer(self, model: str, name: str) -> LayerData:
        key = (model, name)
        if key not in self._layers:
            layers = _layers(_model(model))
            if name not in layers:
                raise ValueError(f"{model!r} has no layer {name!r}; choose one of RankLab.layer_names({model!r})")
            module = layers[name]
            info = describe(module)
            # one layer: its form, never kept
            plan = make_plan(_model(model), Ratio(2, min_rank=1), Layers(include=[name]))
            method = plan[name].method or default_method(info).name
            W, form = weight_of(module).detach(), get_method(method)
            with plots.one_thread():
                spectra, error = [s.numpy() for s in form.spectra(W)], form.errors(W, info)
            self._layers[key] = LayerData(name, module, info, method, _input_shapes(model)[name], spectra, error)
        return self._layers[key]

    def timing_shape(self, data: LayerData) -> tuple[int, ...]:
        return (self.batch, *data.input_shape[1:])

    def state(self, model: str, name: str, ratio: float, granularity: int, rounding: str = "down",
              twin: bool = True) -> dict[str, Any]:
        """Ranks, params, FLOPs, reconstruction error and cached times of one layer at one setting.

        ``twin``: also the unrounded setting (g = 1) at the same α, under ``"unrounded"``.
        """
        data = self.layer(model, name)
        form = data.method if get_method(data.method).kxk else "auto"  # one form at every ratio
        # the ranks this α implies, even below the network's min_rank
        row = self._row(model, name, ratio, granularity, rounding, form)
        shape = self.timing_shape(data)
        out: dict[str, Any] = {
            "model": model, "layer": name, "ratio": ratio, "granularity": granularity, "rounding": rounding,
            "method": data.method, "trained": is_trained(model),
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
        key_model = arch(model)  # a layer's time does not depend on its weights
        orig = cached_ms(self.cache, _key(key_model, name, None, shape))
        new = cached_ms(self.cache, _key(key_model, name, out["ranks"], shape)) if out["ranks"] else orig
        out["original_ms"], out["original_source"] = orig if orig else (None, None)
        out["time_ms"], out["time_source"] = new if new else (None, None)
        out["original_samples"] = self.cache.samples(*_key(key_model, name, None, shape))
        out["time_samples"] = self.cache.samples(*_key(key_model, name, out["ranks"], shape)) \
            if out["ranks"] else out["original_samples"]
        if twin:
            out["unrounded"] = self.state(model, name, ratio, 1, "down", twin=False) if granularity > 1 else \
                {k: out[k] for k in ("ranks", "params_after", "flops_after", "rel_error", "time_ms", "time_source",
                                     "time_samples", "reason", "compression_ratio")}
        return out

    def _row(self, model: str, name: str, ratio: float, granularity: int, rounding: str, form: str) -> Any:
        """The layer's plan row at one setting, memoised: a state built anew (new times) never plans again."""
        key = (model, id(_model(model)), name, ratio, granularity, rounding, form)
        row = self._row_memo.get(key)
        if row is None:
            row = make_plan(_model(model), Ratio(ratio, granularity=granularity, rounding=rounding, min_rank=1),
                            Layers(include=[name]), method=form)[name]
            self._row_memo[key] = row
        return row

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
        """Relative Frobenius error ‖W − Ŵ‖/‖W‖ of the weight-only decomposition at these ranks (the method's
        :meth:`~lrdlab.lowrank.method_base.Method.errors`)."""
        if layer_ranks is None:
            return 0.0
        error = data.error or get_method(data.method).errors(weight_of(data.module), data.info)
        return error(layer_ranks)

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

        The variants are timed interleaved, A B then B A …, ``rounds`` times (:func:`lrdlab.compare`,
        one warm-up and three timed runs per round); each time is the median over rounds, and the
        per-round samples are cached, paired, for the speed-up's interval.
        """
        data = self.layer(model, name)
        shape = self.timing_shape(data)
        variants = {str(r): self._timing_module(data, r) for r in todo}
        timing = TimingConfig(rounds=rounds, max_rounds=rounds, warmup=1, repeats=3)
        per_round = round_times(compare(variants, shape, timing=timing,
                                        on_round=None if progress is None else lambda done: progress(done, rounds)))
        out = {}
        for r in todo:
            out[r] = 1000.0 * float(np.median(per_round[str(r)]))
            self.cache.put(*_key(arch(model), name, None if r is None else tuple(r), shape),
                           [sec for sec in per_round[str(r)]])
        self.cache.save()
        return out

    def ensure_times(self, state: dict[str, Any], progress: Callable[[int, int], None] | None = None) -> dict:
        """Measure what the state lacks, or everything here when its times come from different sources.

        The original, the chosen ranks and the unrounded ranks are then timed together, interleaved, so
        times shown side by side always come from one machine and one session.
        """
        twin = state.get("unrounded", {})
        needed = [(state["original_ms"], state["original_source"])]
        needed += [(state["time_ms"], state["time_source"])] if state["ranks"] else []
        needed += [(twin.get("time_ms"), twin.get("time_source"))] if twin.get("ranks") else []
        if all(ms is not None for ms, _ in needed) and len({src for _, src in needed}) == 1:
            return state
        todo: list[tuple[int, ...] | None] = [None]
        for ranks in (state["ranks"], twin.get("ranks")):
            if ranks and ranks not in todo:
                todo.append(ranks)
        self.measure_times(state["model"], state["layer"], todo, progress)
        return self.state(state["model"], state["layer"], state["ratio"], state["granularity"], state["rounding"])

    def times(self, model: str, name: str, input_shape: Any) -> pd.DataFrame:
        """The layer's times by rank and source (:func:`layer_times` over this lab's cache)."""
        return layer_times(self.cache, arch(model), name, input_shape)

    def figure(self, state: dict[str, Any]) -> Any:
        """Spectra, energy and layer times of a state (:func:`lrdlab.explore.figures.rank_figure`)."""
        from lrdlab.explore.figures import rank_figure

        return rank_figure(self, state, self.cache.reference_machine.get("cpu"))


def time_text(ms: float | None, source: str | None, reference_cpu: str | None = None) -> str:
    """A time with its source: ``"3.5 ms (reference file, AMD EPYC)"`` or ``"79 ms (measured here)"``."""
    if ms is None:
        return "not measured"
    where = "measured here" if source == "here" else f"reference file{', ' + reference_cpu if reference_cpu else ''}"
    return f"{ms:.3g} ms ({where})"


def speedup_text(state: dict[str, Any], d: dict[str, Any]) -> str:
    """Speed-up of ``d`` over the original layer: with its 95% interval when both were timed in the same
    interleaved rounds (equal sample counts, ≥ 3), else the ratio of medians, said to have no interval."""
    original, ms = state["original_ms"], d["time_ms"]
    if original is None or ms is None:
        return "—"
    if state["original_source"] != d["time_source"]:
        return "— (times from different machines are not compared)"
    base, other = state.get("original_samples") or [], d.get("time_samples") or []
    if len(base) == len(other) >= 3:
        return stats.SpeedUp.of(base, other).text(rounds=True)
    return f"{100 * (original / ms - 1):+.1f}% (no interval)"


def readout_text(state: dict[str, Any], reference_cpu: str | None = None) -> str:
    """HTML summary of a :meth:`RankLab.state`: unrounded vs rounded side by side, every time with its source."""
    head = (f"<b>{state['layer']}</b> ({state['C']}→{state['S']}, k={'×'.join(map(str, state['kernel']))}, "
            f"{state['method']}) at compression α={state['ratio']:g}, g={state['granularity']} ({state['rounding']})")
    if state["ranks"] is None:
        return (f"{head}: <b>kept</b> (not decomposed) — {state['reason']}. A kept layer costs the same as before; "
                f"its time is {time_text(state['original_ms'], state['original_source'], reference_cpu)}.")
    twin = state.get("unrounded", state)
    cols = [("unrounded (g=1)", twin), (f"rounded (g={state['granularity']}, {state['rounding']})", state)]

    def cell(d: dict[str, Any], what: str) -> str:
        if d.get("ranks") is None:
            return f"kept: {d.get('reason')}"
        if what == "ranks":
            return ",".join(map(str, d["ranks"]))
        if what == "params":
            return f"{d['params_after']:,} (×{d['compression_ratio']:.2f})"
        if what == "flops":
            return f"{d['flops_after'] / 1e6:.3g}M"
        if what == "error":
            return f"{d['rel_error']:.3f}"
        if what == "time":
            return time_text(d["time_ms"], d["time_source"], reference_cpu)
        return speedup_text(state, d)

    rows = [("ranks", "ranks"), ("params", "params"), ("FLOPs / image", "flops"), ("rel. weight error", "error"),
            (f"time, batch {state['input_shape'][0]}", "time"), ("speed-up vs original", "speedup")]
    body = "".join(f"<tr><td>{label}</td>" + "".join(f"<td>{cell(d, key)}</td>" for _, d in cols) + "</tr>"
                   for label, key in rows)
    original = (f"original: {state['params_before']:,} params, {state['flops_before'] / 1e6:.3g}M FLOPs, "
                f"{time_text(state['original_ms'], state['original_source'], reference_cpu)}")
    return (f"{head}<br>{original}<table class='lrd-table'><tr><th></th>"
            + "".join(f"<th>{c}</th>" for c, _ in cols) + f"</tr>{body}</table>")
