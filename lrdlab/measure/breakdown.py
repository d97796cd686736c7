"""Where the time goes: every decomposed layer timed in place inside the whole network, and the rest.

A whole-network speed-up is bounded by the part LRD leaves alone (stem, pooling, BatchNorm,
activations, residual adds, excluded layers) — Amdahl's law. :func:`time_breakdown` times the
original and the decomposed model interleaved (A B, then B A), one forward pass per model per
round, with forward hooks that clock each decomposed layer where it runs; layer times, the rest
(total − layers) and the total come from the same passes, so their speed-ups are paired per round
and get 95% bootstrap intervals. :func:`amdahl_speedup` and :func:`needed_layer_speedup` are the
pure arithmetic of the bound.
"""

from __future__ import annotations

import copy
import math
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from lrdlab.lowrank.plan import Plan
from lrdlab.measure import timing as measure
from lrdlab.measure.compute import load_average
from lrdlab.measure.counting import count_flops
from lrdlab.measure.interleave import interleave
from lrdlab.measure.shapes import layer_input_shapes
from lrdlab.measure.stats import SpeedUp
from lrdlab.measure.sweeps import shaped_model

REST = "rest (not decomposed)"
WHOLE = "whole network"


@dataclass(frozen=True)
class Breakdown:
    """:func:`time_breakdown`'s result: ``parts``, one row per layer, then the rest and the whole network
    (``part``, ``original_ms``, ``decomposed_ms``, ``share_pct``, ``speedup_pct``, ``ci_low``, ``ci_high``,
    ``rounds``), and ``summary``, the recorded (JSON) form of the totals that :func:`breakdown_text` and
    :func:`lrdlab.explore.plots.plot_time_breakdown` read. ``str(b)`` is the breakdown in three lines."""

    parts: Any  # a pandas DataFrame
    summary: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        """``{"summary", "parts"}``, JSON-ready."""
        return {"summary": self.summary, "parts": self.parts.to_dict(orient="records")}

    def __str__(self) -> str:
        return breakdown_text(self.summary)

    def _repr_pretty_(self, p: Any, _cycle: bool) -> None:  # IPython / Jupyter: the text, not the fields
        p.text(str(self))


def needed_layer_speedup(original_layers_s: float, original_total_s: float, rest_s: float, target: float) -> float:
    """How much faster the decomposed layers must run for the whole network to be ``target`` × faster.

    ``original_layers_s`` / ``original_total_s``: the layers' and the whole original's time;
    ``rest_s``: the decomposed model's time outside those layers. ``inf`` when the rest alone already
    takes longer than the target allows (no rank can get there).
    """
    if target <= 0 or min(original_layers_s, original_total_s, rest_s) < 0:
        raise ValueError("times must be >= 0 and target > 0")
    budget = original_total_s / target - rest_s
    return math.inf if budget <= 0 else original_layers_s / budget


def _layer_names(layers: Plan | Sequence[str], models: dict[str, nn.Module]) -> list[str]:
    names = [r.name for r in layers.decomposed_layers] if isinstance(layers, Plan) else list(layers)
    if not names:
        raise ValueError("time_breakdown needs at least one layer name (e.g. the plan's decomposed layers)")
    for label, m in models.items():
        have = dict(m.named_modules())
        missing = [n for n in names if n not in have]
        if missing:
            raise ValueError(f"layer {missing[0]!r} is not a submodule of the {label} model; pass names present "
                             "in both models (a plan's decomposed layers)")
    for a in names:
        for b in names:
            if a != b and b.startswith(a + "."):
                raise ValueError(f"layer {b!r} lies inside {a!r}: it would be counted twice; pass only one of them")
    return names


class _Clock:
    """Forward hooks that add up each named layer's time during one forward pass."""

    def __init__(self, model: nn.Module, names: Sequence[str], dev: torch.device):
        self.dev = dev
        self.start: dict[str, float] = {}
        self.spent = dict.fromkeys(names, 0.0)
        mods = dict(model.named_modules())
        self.handles = []
        for n in names:
            self.handles.append(mods[n].register_forward_pre_hook(lambda _m, _i, n=n: self._begin(n)))
            self.handles.append(mods[n].register_forward_hook(lambda _m, _i, _o, n=n: self._end(n)))

    def _begin(self, name: str) -> None:
        measure.sync(self.dev)
        self.start[name] = time.perf_counter()

    def _end(self, name: str) -> None:
        measure.sync(self.dev)
        self.spent[name] += time.perf_counter() - self.start[name]

    def reset(self) -> None:
        self.spent = dict.fromkeys(self.spent, 0.0)

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


def time_breakdown(
    original: nn.Module, decomposed: nn.Module, input_shape: Sequence[int], layers: Plan | Sequence[str], *,
    rounds: int = 15, warmup: int = 2, device: str = "cpu", progress: bool = True,
) -> Breakdown:
    """Per-layer and rest-of-network times of ``original`` vs ``decomposed`` (inference, eval mode).

    ``layers``: a Plan (its decomposed layers) or module names present in both models. Each round
    runs one forward pass of each model (order alternating), on private copies: the caller's models
    are not changed. Returns a :class:`Breakdown`: its ``parts``, one row per layer, then the rest and the whole
    network: ``part``, ``original_ms``, ``decomposed_ms`` (medians over rounds), ``share_pct`` (of the
    original's total time), ``speedup_pct`` with ``ci_low``/``ci_high`` (95% bootstrap of per-round
    ratios) and ``rounds``; its ``summary``: the decomposed layers together (``layers``), the
    rest, the whole network (each a percent interval), ``layers_share_pct``, ``ceiling_pct`` (the
    whole-network speed-up if the decomposed layers took no time at all), ``original_ms``,
    ``original_layers_ms``, ``decomposed_layers_ms``, ``decomposed_rest_ms`` (medians), ``threads`` and
    ``load_average``; ``layers_flop_ratio`` (the layers' FLOPs, original / decomposed) and
    ``at_flop_ideal_pct`` (the whole network's speed-up if the layers ran exactly that much faster
    and the rest took what it took).
    """
    import pandas as pd

    if not isinstance(rounds, int) or rounds < 2:
        raise ValueError(f"rounds must be an int >= 2 for an interval (got {rounds!r})")
    measure.check_counts(warmup, 1)
    dev = measure.check_device(device)
    shape = measure.check_shape(input_shape)
    nets = {"original": copy.deepcopy(original).to(dev).eval(),
            "decomposed": copy.deepcopy(decomposed).to(dev).eval()}
    names = _layer_names(layers, nets)
    x = torch.randn(shape, device=dev)
    clocks = {k: _Clock(m, names, dev) for k, m in nets.items()}
    per: dict[str, dict[str, list[float]]] = {k: {n: [] for n in (*names, REST, WHOLE)} for k in nets}

    def one_pass(k: str) -> float:
        clocks[k].reset()
        measure.sync(dev)
        t0 = time.perf_counter()
        nets[k](x)
        measure.sync(dev)
        total = time.perf_counter() - t0
        for n, s in clocks[k].spent.items():
            per[k][n].append(s)
        per[k][REST].append(total - sum(clocks[k].spent.values()))
        per[k][WHOLE].append(total)
        return total

    try:
        with torch.inference_mode():
            for net in nets.values():
                for _ in range(warmup):
                    net(x)
            bar = tqdm(total=rounds, desc="breakdown", disable=not progress, leave=False)
            interleave({k: partial(one_pass, k) for k in nets}, rounds, order="alternate",
                       on_round=lambda _done: bar.update())
            bar.close()
    finally:
        for c in clocks.values():
            c.remove()

    o, d = per["original"], per["decomposed"]
    idle = [n for n in names if not all(o[n]) or not all(d[n])]
    if idle:
        raise ValueError(f"layer {idle[0]!r} did not run in a forward pass of both models: pass only layers the "
                         "forward uses")
    o_total = statistics.median(o[WHOLE])
    rows = []
    for part in (*names, REST, WHOLE):
        up = SpeedUp.of(o[part], d[part])
        rows.append({"part": part, "original_ms": 1e3 * statistics.median(o[part]),
                     "decomposed_ms": 1e3 * statistics.median(d[part]),
                     "share_pct": 100 * statistics.median(o[part]) / o_total, "speedup_pct": up.pct,
                     "ci_low": up.pct_low, "ci_high": up.pct_high, "rounds": up.rounds})
    shapes = layer_input_shapes(nets["original"], names, shape)
    flops = {k: sum(count_flops(m.get_submodule(n), shapes[n]) for n in names) for k, m in nets.items()}
    flop_ratio = flops["original"] / flops["decomposed"] if flops["decomposed"] else math.nan
    o_layers = [sum(o[n][i] for n in names) for i in range(rounds)]
    d_layers = [sum(d[n][i] for n in names) for i in range(rounds)]
    summary = {
        "layers": SpeedUp.of(o_layers, d_layers).to_pct(),
        "rest": SpeedUp.of(o[REST], d[REST]).to_pct(),
        "whole": SpeedUp.of(o[WHOLE], d[WHOLE]).to_pct(),
        "layers_share_pct": 100 * statistics.median(a / t for a, t in zip(o_layers, o[WHOLE])),
        "ceiling_pct": 100 * (statistics.median(t / r for t, r in zip(o[WHOLE], d[REST])) - 1),
        "original_layers_ms": 1e3 * statistics.median(o_layers), "original_ms": 1e3 * o_total,
        "decomposed_layers_ms": 1e3 * statistics.median(d_layers),
        "decomposed_rest_ms": 1e3 * statistics.median(d[REST]),
        "layers_flop_ratio": flop_ratio,
        "at_flop_ideal_pct": 100 * (o_total / (statistics.median(d[REST]) + statistics.median(o_layers) / flop_ratio)
                                    - 1),
        "input_shape": list(shape), "device": str(dev), "threads": torch.get_num_threads(),
        "load_average": load_average(),
    }
    return Breakdown(pd.DataFrame(rows), summary)


def needed_pct(summary: dict[str, Any], target_pct: float) -> float:
    """The in-place layer speed-up (%) a whole-network speed-up of ``target_pct`` needs, from a
    :func:`time_breakdown` summary (``inf``: out of reach whatever the layers do)."""
    need = needed_layer_speedup(summary["original_layers_ms"], summary["original_ms"], summary["decomposed_rest_ms"],
                                1 + target_pct / 100)
    return 100 * (need - 1)


def plan_breakdown(model: nn.Module, plan: Plan, input_shape: Sequence[int], **kwargs: Any) -> Breakdown:
    """:func:`time_breakdown` of ``model`` against the plan's structure (random factors: timing only); ``kwargs``
    go to :func:`time_breakdown`."""
    return time_breakdown(model, shaped_model(model, plan), input_shape, plan, **kwargs)


def breakdown_text(summary: dict[str, Any], target_pct: float | None = None) -> str:
    """The breakdown in three lines: the layers, the rest, the whole network and its ceiling."""
    lines = [
        f"decomposed layers ({summary['layers_share_pct']:.0f}% of the original's time), in place: "
        f"{SpeedUp.from_pct(summary['layers']).text()}",
        f"rest of the network: {SpeedUp.from_pct(summary['rest']).text()}",
        f"whole network: {SpeedUp.from_pct(summary['whole']).text()}; ceiling if the layers took no time: "
        f"{summary['ceiling_pct']:+.0f}%" + ("" if math.isnan(summary["layers_flop_ratio"]) else
                                              f"; at the layers' FLOP ideal ({summary['layers_flop_ratio']:.2f}x): "
                                              f"{summary['at_flop_ideal_pct']:+.0f}%"),
    ]
    if target_pct is not None:
        need = needed_pct(summary, target_pct)
        need_text = "more than the whole budget (unreachable)" if math.isinf(need) else f"{need:+.0f}%"
        lines.append(f"to reach {target_pct:+.0f}% the layers would need {need_text}")
    return "\n".join(lines)
