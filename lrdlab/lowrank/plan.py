"""The Plan: one row per candidate layer, what to do with it and why; model-wide decomposition.

A Plan is what a user reads (a table), what a widget edits, what the measured search refines and
what is saved as JSON beside a ``state_dict`` so a decomposed model reloads exactly.
"""

from __future__ import annotations

import fnmatch
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lrdlab.lowrank import factorize, ranks
from lrdlab.lowrank.layers import (
    LowRankLayer,
    default_method,
    describe,
    full_ranks,
    unsupported_reason,
)

K_BY_K_METHODS = ("tucker2", "channel_svd")


@dataclass
class LayerPlan:
    """One layer's row: what it is, what happens to it, and why."""

    name: str
    type: str
    in_channels: int
    out_channels: int
    kernel_size: list[int]
    method: str | None
    ranks: list[int] | None
    params_before: int
    params_after: int
    reason: str
    target_ranks: list[int] | None = None
    branches: int = 1

    @property
    def decomposed(self) -> bool:
        return self.method is not None

    def keep(self, reason: str) -> None:
        """Mark this row as left unchanged, saying why."""
        self.method, self.ranks, self.params_after, self.reason = None, None, self.params_before, reason


@dataclass
class Plan:
    """What ``decompose`` will do to a model, row by row."""

    model: str
    layers: list[LayerPlan]
    settings: dict[str, Any] = field(default_factory=dict)

    # --- reading -------------------------------------------------------------------------------
    def __getitem__(self, name: str) -> LayerPlan:
        for row in self.layers:
            if row.name == name:
                return row
        raise KeyError(f"no layer named {name!r} in this plan")

    @property
    def decomposed_layers(self) -> list[LayerPlan]:
        return [row for row in self.layers if row.decomposed]

    def to_frame(self):
        import pandas as pd

        rows = [
            {
                "name": r.name,
                "type": r.type,
                "C": r.in_channels,
                "S": r.out_channels,
                "kernel": "×".join(map(str, r.kernel_size)),
                "method": r.method or "—",
                "ranks": ",".join(map(str, r.ranks)) if r.ranks else "—",
                "params_before": r.params_before,
                "params_after": r.params_after,
                "reason": r.reason,
            }
            for r in self.layers
        ]
        return pd.DataFrame(rows)

    def summary(self) -> str:
        before = sum(r.params_before for r in self.layers)
        after = sum(r.params_after for r in self.layers)
        removed = 100 * (1 - after / before) if before else 0.0
        return (
            f"Plan for {self.model}: {len(self.decomposed_layers)} of {len(self.layers)} layers decomposed; "
            f"planned layers' params {before:,} → {after:,} ({removed:.2f}% removed)"
        )

    def __str__(self) -> str:
        return self.summary() + "\n" + self.to_frame().to_string(index=False)

    def _repr_html_(self) -> str:
        return f"<p>{self.summary()}</p>" + self.to_frame().to_html(index=False)

    # --- JSON ----------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model, "settings": self.settings, "layers": [asdict(r) for r in self.layers]}

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Plan:
        try:
            layers = [LayerPlan(**row) for row in data["layers"]]
            return cls(model=data["model"], layers=layers, settings=data.get("settings", {}))
        except (KeyError, TypeError) as err:
            raise ValueError(f"not an lrdlab plan: {err}") from err

    def save(self, path: str | Path) -> None:
        Path(path).write_text(self.to_json())

    @classmethod
    def load(cls, path: str | Path) -> Plan:
        return cls.from_dict(json.loads(Path(path).read_text()))


# --- building a plan -------------------------------------------------------------------------------


def candidate_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Every Linear and Conv layer of ``model`` (supported or not), in module order."""
    return [
        (name, m)
        for name, m in model.named_modules()
        if isinstance(m, (nn.Linear, nn.modules.conv._ConvNd)) and not isinstance(m, LowRankLayer)
    ]


def _attention_projections(model: nn.Module) -> set[str]:
    """Linear layers that ``nn.MultiheadAttention`` uses by weight, not by calling them."""
    return {
        f"{name}.out_proj" if name else "out_proj"
        for name, m in model.named_modules()
        if isinstance(m, nn.MultiheadAttention)
    }


def _matches(name: str, patterns: list[str]) -> str | None:
    for p in patterns:
        if fnmatch.fnmatchcase(name, p):
            return p
    return None


def _check_patterns(names: list[str], patterns: list[str], what: str) -> None:
    for p in patterns:
        if not any(fnmatch.fnmatchcase(n, p) for n in names):
            raise ValueError(
                f"{what} pattern {p!r} matches no Linear/Conv layer of this model; "
                f"layer names look like {names[:3]} (glob patterns, e.g. 'layer1.*')"
            )


def params_of(info: dict[str, Any], method: str | None, layer_ranks: list[int] | None, branches: int = 1) -> int:
    """Parameters (weights + bias) of a layer described by ``describe()``, before or after."""
    C, S, kernel = info["in_channels"], info["out_channels"], info["kernel_size"]
    bias = S if info["bias"] else 0
    groups = info.get("groups", 1)
    if method is None:
        return ranks.dense_params(C, S, kernel) // groups + bias
    if method == "svd":
        return ranks.svd_params(C, S, layer_ranks[0]) + bias
    if method == "channel_svd":
        return ranks.channel_svd_params(C, S, kernel, layer_ranks[0]) + bias
    return ranks.tucker2_params(C, S, kernel, layer_ranks[0], layer_ranks[1], branches) + bias


def _spectra(module: nn.Module, method: str) -> list[torch.Tensor]:
    """Singular values that decide each rank: the matrix for SVD, the two channel unfoldings for Tucker."""
    W = module.weight.detach()
    if method == "tucker2":
        return [factorize.singular_values(factorize.mode_unfolding(W, 1)),
                factorize.singular_values(factorize.mode_unfolding(W, 0))]
    return [factorize.singular_values(W.reshape(W.shape[0], -1))]


def _policy_ranks(name, module, info, method, policy: dict[str, Any]) -> tuple[list[int], str]:
    """Target ranks of one layer under the chosen policy, and the words for the reason column."""
    C, S, kernel = info["in_channels"], info["out_channels"], info["kernel_size"]
    kind, value = policy["kind"], policy["value"]
    if kind == "ratio":
        if method == "svd":
            out = [ranks.svd_rank_for_ratio(C, S, value)]
        elif method == "channel_svd":
            out = [ranks.channel_svd_rank_for_ratio(C, S, kernel, value)]
        else:
            out = list(ranks.tucker2_rank_for_ratio(C, S, kernel, value, policy["beta"], policy["branches"]))
        return out, f"ratio {value:g}"
    if kind == "energy":
        return [ranks.energy_rank(s.numpy(), value) for s in _spectra(module, method)], f"energy {value:g}"
    if kind == "vbmf":
        W = module.weight.detach().double()
        if method == "tucker2":
            mats = [factorize.mode_unfolding(W, 1), factorize.mode_unfolding(W, 0)]
        else:
            mats = [W.reshape(W.shape[0], -1)]
        return [max(1, ranks.vbmf_rank(m.numpy())) for m in mats], "vbmf"
    # fixed ranks: an int, "full", or a dict by layer name
    chosen = value.get(name) if isinstance(value, dict) else value
    if chosen is None:
        return [], "not in the rank dict"
    if chosen == "full":
        return full_ranks(info, method), "full rank"
    chosen = [int(chosen)] if isinstance(chosen, (int, float)) else [int(r) for r in chosen]
    want = 2 if method == "tucker2" else 1
    if len(chosen) == 1 and want == 2:
        chosen = chosen * 2
    if len(chosen) != want:
        raise ValueError(f"layer {name!r}: method {method} takes {want} rank(s), got {chosen}")
    limit = full_ranks(info, method)
    for r, top in zip(chosen, limit):
        if r < 1 or r > top:
            raise ValueError(
                f"layer {name!r}: rank {r} is impossible for {method} of a {C}→{S} layer; "
                f"choose 1 <= rank <= {top}"
            )
    return chosen, "fixed rank"


def _round_and_check(row: LayerPlan, info, method, target, granularity, rounding, allow_larger, why) -> None:
    """Fill ``row`` with the rounded ranks, or keep the layer with the reason it cannot save."""
    branches = row.branches if method == "tucker2" else 1
    step = math.lcm(granularity, branches)
    limit = full_ranks(info, method)

    def saves(layer_ranks: list[int]) -> bool:
        return allow_larger or params_of(info, method, layer_ranks, branches) < row.params_before

    if any(r < 1 for r in target):
        row.keep(f"kept: {why} gives rank 0")
        return
    if not saves(list(target)):
        after = params_of(info, method, list(target), branches)
        row.keep(f"kept: {why} ranks {list(target)} do not save parameters ({after:,} >= {row.params_before:,})")
        return
    try:
        final = [ranks.round_rank(r, step, rounding, top) for r, top in zip(target, limit)]
        if not saves(final) and rounding != "down":  # rounding up went past the break-even: round down instead
            final = [ranks.round_rank(r, step, "down", top) for r, top in zip(target, limit)]
    except ValueError as err:
        row.keep(f"kept: {err}")
        return
    after = params_of(info, method, final, branches)
    if not saves(final):
        row.keep(f"kept: at granularity {step} ranks {final} do not save parameters "
                 f"({after:,} >= {row.params_before:,})")
        return
    row.method, row.ranks, row.target_ranks, row.params_after = method, final, list(target), after
    note = why
    if final != list(target):
        note += f", rounded {','.join(map(str, target))}→{','.join(map(str, final))} (g={step})"
    if after >= row.params_before:
        note += f", adds parameters ({after:,} >= {row.params_before:,}; allow_larger)"
    row.reason = note


def make_plan(
    model: nn.Module,
    *,
    ratio: float | None = None,
    energy: float | None = None,
    vbmf: bool = False,
    rank: int | str | dict[str, Any] | None = None,
    granularity: int = 1,
    rounding: str = "down",
    method: str = "auto",
    tucker: str = "hosvd",
    beta: float = 1.0,
    branches: int = 1,
    include: list[str] | None = None,
    exclude: list[str] | None = None,
    allow_larger: bool = False,
    model_name: str | None = None,
) -> Plan:
    """Plan the decomposition of every Linear/Conv layer of ``model``.

    Choose one rank policy: ``ratio`` (per-layer compression α, paper §1), ``energy`` (fraction of
    Σσ² kept), ``vbmf=True``, or ``rank`` (an int, ``"full"``, or a dict from layer name to rank).
    ``method`` picks the form of k×k convs: ``"auto"``/``"tucker2"`` (3 layers) or ``"channel_svd"``
    (2 layers); Linear and 1×1 convs always use SVD. ``include``/``exclude`` are glob patterns over
    layer names. A rank that would not save parameters keeps the layer (unless ``allow_larger``).
    """
    chosen = [k for k, v in dict(ratio=ratio, energy=energy, vbmf=vbmf or None, rank=rank).items() if v is not None]
    if len(chosen) != 1:
        raise ValueError(f"choose exactly one rank policy of ratio / energy / vbmf / rank (got {chosen or 'none'})")
    kind = chosen[0]
    value = {"ratio": ratio, "energy": energy, "vbmf": True, "rank": rank}[kind]
    if kind == "ratio":
        ranks._check_ratio(ratio)
    if kind == "energy" and not (isinstance(energy, (int, float)) and 0 < energy <= 1):
        raise ValueError(f"energy must be in (0, 1] (got {energy!r}); e.g. 0.9 keeps 90% of Σσ²")
    if kind == "rank" and not isinstance(rank, (int, str, dict)):
        raise ValueError(f"rank must be an int, 'full' or a dict {{layer name: rank}} (got {rank!r})")
    if isinstance(rank, str) and rank != "full":
        raise ValueError(f"rank must be an int, 'full' or a dict (got {rank!r})")
    if isinstance(rank, bool) or (isinstance(rank, int) and rank < 1):
        raise ValueError(f"rank must be >= 1 (got {rank!r})")
    if method not in ("auto", *K_BY_K_METHODS):
        raise ValueError(f"method must be 'auto', 'tucker2' or 'channel_svd' (got {method!r})")
    if tucker not in factorize.TUCKER_METHODS:
        raise ValueError(f"tucker must be one of {factorize.TUCKER_METHODS} (got {tucker!r})")
    if rounding not in ranks.ROUNDING_MODES:
        raise ValueError(f"rounding must be one of {ranks.ROUNDING_MODES} (got {rounding!r})")
    if not isinstance(granularity, int) or granularity < 1:
        raise ValueError(f"granularity must be a positive integer (got {granularity!r})")
    if not isinstance(branches, int) or branches < 1:
        raise ValueError(f"branches must be a positive integer (got {branches!r})")

    layers = candidate_layers(model)
    names = [n for n, _ in layers]
    if not layers:
        raise ValueError(f"{type(model).__name__} has no Linear or Conv layer to decompose")
    include, exclude = list(include or []), list(exclude or [])
    _check_patterns(names, include, "include")
    _check_patterns(names, exclude, "exclude")
    if isinstance(rank, dict):
        unknown = sorted(set(rank) - set(names))
        if unknown:
            raise ValueError(f"rank dict names layers that do not exist: {unknown}")
    attention = _attention_projections(model)
    policy = {"kind": kind, "value": value, "beta": beta, "branches": branches}

    rows = []
    for name, module in layers:
        info = describe(module)
        row = LayerPlan(
            name=name, type=info["type"], in_channels=info["in_channels"], out_channels=info["out_channels"],
            kernel_size=list(info["kernel_size"]), method=None, ranks=None,
            params_before=params_of(info, None, None), params_after=0, reason="",
        )
        row.params_after = row.params_before
        rows.append(row)
        skip = unsupported_reason(module)
        if skip is None and name in attention:
            skip = "skipped: nn.MultiheadAttention uses out_proj's weight directly"
        if skip is None and include and not _matches(name, include):
            skip = "excluded: not in include"
        if skip is None and (p := _matches(name, exclude)):
            skip = f"excluded by {p!r}"
        if skip:
            row.reason = skip
            continue
        layer_method = default_method(module)
        if layer_method == "tucker2" and method != "auto":
            layer_method = method
        row.branches = branches if layer_method == "tucker2" else 1
        target, why = _policy_ranks(name, module, info, layer_method, policy)
        if not target:
            row.reason = f"kept: {why}"
            continue
        _round_and_check(row, info, layer_method, target, granularity, rounding, allow_larger, why)

    settings = {
        "policy": kind, "value": value, "granularity": granularity, "rounding": rounding,
        "method": method, "tucker": tucker, "beta": beta, "branches": branches,
        "include": include, "exclude": exclude, "allow_larger": allow_larger,
    }
    return Plan(model=model_name or type(model).__name__, layers=rows, settings=settings)
