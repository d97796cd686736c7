"""Rank allocation across layers by measured truncation loss at a global parameter budget (pure maths).

A layer ``W`` ``[S, D]`` whose inputs have second moment ``Σ = L Lᵀ`` (Cholesky) has, at rank ``r``, the mean
squared output error ``Σ_{i>r} σᵢ²`` after the data-aware (SVD-LLM) fit, ``σ`` the singular values of ``W L``
(:func:`lrdlab.lowrank.data_aware.reduced_rank_regression`): the whitened spectrum gives the layer's loss at every
rank. A rank-``r`` SVD costs ``r (S + D)`` parameters, so raising a layer's rank by one removes ``σ²_{r+1}`` of
loss for ``S + D`` parameters. Because ``σ²`` falls with ``r``, the marginal gains of each layer fall too, and the
greedy rule "take the largest loss decrease per parameter next" (as SVD-LLM V2, Dobi-SVD and ARS allocate
ranks) is optimal for the separable problem ``min Σ_l loss_l(r_l)`` s.t. ``Σ_l r_l (S_l + D_l) ≤ budget``
whenever every step costs the same, and optimal up to the last step (the fractional relaxation) otherwise.

Losses can be weighted per layer (``"relative"``: each layer's loss as a fraction of its output energy
``Σ σᵢ²``, which makes layers of different scales comparable) and the budget split per group (e.g. per layer
type: every ``q_proj`` shares the budget uniform compression gives the ``q_proj`` layers).
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

NORMALISATIONS = ("output", "relative")


@dataclass(frozen=True, eq=False)
class LayerSpectrum:
    """One layer's whitened singular values (descending, float64) and its shape ``[out_features, in_features]``."""

    singular_values: Tensor
    out_features: int
    in_features: int

    @property
    def cost_per_rank(self) -> int:
        """Parameters one more rank costs: ``S + D``."""
        return self.out_features + self.in_features

    @property
    def dense_params(self) -> int:
        return self.out_features * self.in_features

    @property
    def max_saving_rank(self) -> int:
        """The largest rank whose two factors hold fewer parameters than the dense weight."""
        limit = (self.dense_params - 1) // self.cost_per_rank
        return min(limit, len(self.singular_values))


def whitened_spectrum(weight: Tensor, cov: Tensor) -> Tensor:
    """Singular values (float64, descending) of ``W L``, ``L`` the Cholesky factor of ``cov`` (positive definite:
    add a ridge first). ``Σ_{i>r} σᵢ²`` is the output error ``tr((W − W_r) Σ (W − W_r)ᵀ)`` of the best rank-``r``
    fit ``W_r``."""
    L = torch.linalg.cholesky(cov.double())
    return torch.linalg.svdvals(weight.double().reshape(weight.shape[0], -1) @ L)


def truncation_loss(singular_values: Tensor, rank: int) -> float:
    """The loss at ``rank``: ``Σ_{i>rank} σᵢ²``."""
    return float((singular_values.double()[rank:] ** 2).sum())


def uniform_budget(layers: Mapping[str, LayerSpectrum], ratio: float, step: int = 1) -> int:
    """Parameters of the layers at ``Ratio(ratio)``: each at rank ``⌊S D / (ratio (S + D))⌋`` rounded down to
    ``step`` (what a uniform plan over the same layers holds)."""
    total = 0
    for spec in layers.values():
        rank = math.floor(spec.dense_params / (ratio * spec.cost_per_rank))
        total += (rank // step) * step * spec.cost_per_rank
    return total


def _weights(layers: Mapping[str, LayerSpectrum], normalise: str) -> dict[str, float]:
    if normalise not in NORMALISATIONS:
        raise ValueError(f"normalise must be one of {NORMALISATIONS} (got {normalise!r})")
    if normalise == "output":
        return {name: 1.0 for name in layers}
    out = {}
    for name, spec in layers.items():
        energy = float((spec.singular_values.double() ** 2).sum())
        out[name] = 1.0 / energy if energy > 0 else 0.0
    return out


def uniform_ranks(layers: Mapping[str, LayerSpectrum], ratio: float, step: int = 1) -> dict[str, int]:
    """Each layer's rank at ``Ratio(ratio)`` rounded down to ``step`` (see :func:`uniform_budget`)."""
    return {name: (math.floor(spec.dense_params / (ratio * spec.cost_per_rank)) // step) * step
            for name, spec in layers.items()}


def allocate(layers: Mapping[str, LayerSpectrum], budget: int, *, step: int = 1,
             min_rank: int | Mapping[str, int] | None = None, normalise: str = "output") -> dict[str, int]:
    """Ranks (multiples of ``step``) minimising the summed (weighted) truncation loss with
    ``Σ rank · (S + D) ≤ budget``: every layer starts at ``min_rank`` (default ``step``; a dict gives each
    layer its own), then the chunk of ``step`` singular values with the largest loss decrease per parameter is
    added next, while it fits the budget and the layer stays below its break-even rank. A ValueError when the
    budget cannot hold every layer at ``min_rank``."""
    if step < 1:
        raise ValueError(f"step must be a positive int (got {step})")
    floors = min_rank if isinstance(min_rank, Mapping) else {n: step if min_rank is None else min_rank for n in layers}
    floor = max(floors.values(), default=0)
    weights = _weights(layers, normalise)
    ranks: dict[str, int] = {}
    spent = 0
    for name, spec in layers.items():
        ranks[name] = min(floors[name], spec.max_saving_rank)
        spent += ranks[name] * spec.cost_per_rank
    if spent > budget:
        raise ValueError(f"a budget of {budget:,} parameters cannot hold every layer at its least rank (up to {floor}: "
                         f"{spent:,}); "
                         f"compress less (a smaller ratio) or plan fewer layers")

    def gain(name: str) -> float | None:
        spec, r = layers[name], ranks[name]
        if r + step > spec.max_saving_rank:
            return None
        chunk = spec.singular_values.double()[r:r + step]
        return weights[name] * float((chunk ** 2).sum()) / (step * spec.cost_per_rank)

    heap: list[tuple[float, str]] = []
    for name in layers:
        g = gain(name)
        if g is not None:
            heapq.heappush(heap, (-g, name))
    while heap:
        _, name = heapq.heappop(heap)
        cost = step * layers[name].cost_per_rank
        if spent + cost > budget:
            continue  # this layer's next chunk no longer fits; a cheaper layer's may
        ranks[name] += step
        spent += cost
        g = gain(name)
        if g is not None:
            heapq.heappush(heap, (-g, name))
    return ranks


def floors(layers: Mapping[str, LayerSpectrum], ratio: float, fraction: float, step: int = 1) -> dict[str, int]:
    """Least ranks: ``fraction`` of each layer's uniform rank at ``ratio``, rounded down to ``step`` (at least
    ``step``), so that no layer is cut far below what uniform compression gives it."""
    return {n: max(step, int(fraction * r) // step * step) for n, r in uniform_ranks(layers, ratio, step).items()}


def allocate_groups(layers: Mapping[str, LayerSpectrum], ratio: float, groups: Mapping[str, Sequence[str]], *,
                    step: int = 1, normalise: str = "output", floor: float = 0.0) -> dict[str, int]:
    """:func:`allocate` within each group of layer names, each group at its own uniform budget (``ratio``)."""
    out: dict[str, int] = {}
    for names in groups.values():
        part = {n: layers[n] for n in names}
        out.update(allocate(part, uniform_budget(part, ratio, step), step=step, normalise=normalise,
                            min_rank=floors(part, ratio, floor, step)))
    return out


def total_loss(layers: Mapping[str, LayerSpectrum], ranks: Mapping[str, int], normalise: str = "output") -> float:
    """The summed (weighted) truncation loss of ``ranks``."""
    weights = _weights(layers, normalise)
    return sum(weights[n] * truncation_loss(spec.singular_values, ranks[n]) for n, spec in layers.items())


def params(layers: Mapping[str, LayerSpectrum], ranks: Mapping[str, int]) -> int:
    """The factors' parameters at ``ranks``."""
    return sum(ranks[n] * spec.cost_per_rank for n, spec in layers.items())


@dataclass(frozen=True, eq=False)
class LossSpectra:
    """Per-layer whitened spectra (:class:`~lrdlab.lowrank.allocation.LayerSpectrum`) and what measured them."""

    layers: Mapping[str, LayerSpectrum]
    tokens: int = 0
    ridge: float = 1e-3  # lrdlab.lowrank.data_aware.DEFAULT_RIDGE

    def __repr__(self) -> str:
        return f"LossSpectra({len(self.layers)} layers, {self.tokens} rows, ridge={self.ridge:g})"
