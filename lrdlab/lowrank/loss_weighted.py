"""Loss-weighted decomposition of a language model's Linear layers: measure, factorise once, build at any ranks.

``stats = measure_loss_weights(model, batches)`` (one forward and backward pass per batch: every planned
Linear's input moments and output-gradient sums, :mod:`lrdlab.lowrank.fisher`); ``svds = weighted_svds(model,
stats)`` (each layer's :class:`~lrdlab.lowrank.output_weighted.WeightedSVD`, taken once); ``spectra_of(svds)``
gives the per-layer loss estimates the rank allocation reads (:class:`~lrdlab.lowrank.plan_config.LossAware`
with ``normalise="output"``), and ``build_decomposed(model, svds, ranks)`` a decomposed copy at any ranks
without another SVD.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import torch
from torch import nn
from tqdm.auto import tqdm

from lrdlab.lowrank.allocation import LayerSpectrum, LossSpectra
from lrdlab.lowrank.apply import set_module
from lrdlab.lowrank.calibration_fit import Moments
from lrdlab.lowrank.data_aware import DEFAULT_RIDGE, add_ridge
from lrdlab.lowrank.fisher import OutputFisher, output_fisher
from lrdlab.lowrank.layers import LowRankLayer, build, dense_weight, describe
from lrdlab.lowrank.output_weighted import WeightedSVD, weighted_svd

WEIGHTINGS = ("plain", "diagonal", "full")


@dataclass(frozen=True, eq=False)
class LossWeights:
    """What :func:`measure_loss_weights` measured: per layer, input moments and output-gradient sums."""

    moments: Mapping[str, Moments]
    fisher: Mapping[str, OutputFisher]
    tokens: int

    def __repr__(self) -> str:
        return f"LossWeights({len(self.moments)} layers, {self.tokens} tokens)"


def measure_loss_weights(model: nn.Module, batches: Iterable, layers=None, *, full: bool = False,
                         progress: bool = True) -> LossWeights:
    """Input moments and output-gradient sums of the Linear layers a plan over ``layers`` decomposes by SVD, from
    one forward and backward pass of the causal LM ``model`` per batch (``full``: keep the ``[S, S]`` output
    second moments too)."""
    from lrdlab.lowrank.calibration import check_batches
    from lrdlab.lowrank.loss_spectra import svd_layers

    names = svd_layers(model, layers)
    if not names:
        raise ValueError(f"{type(model).__name__} has no Linear layer to plan by SVD")
    xs = check_batches(model, batches)
    fisher, moments = output_fisher(model, xs, names, full=full, progress=progress)
    for n in names:
        if moments[n].gram is None or fisher[n].sq is None:
            raise ValueError(f"layer {n!r} never ran (or never reached the loss) on the calibration batches; leave "
                             f"it out of the plan, e.g. Layers(exclude={n!r})")
    return LossWeights(moments, fisher, max(m.rows for m in moments.values()))


def weighted_svds(model: nn.Module, stats: LossWeights, weighting: str = "diagonal", ridge: float = DEFAULT_RIDGE,
                  dtype: torch.dtype = torch.float64, progress: bool = True) -> dict[str, WeightedSVD]:
    """Each measured layer's :class:`WeightedSVD`: ``"plain"`` (SVD-LLM's input whitening only), ``"diagonal"``
    (output channels weighted by ``E[g²]``) or ``"full"`` (by ``E[g gᵀ]``); computed in float64, the factors
    kept in ``dtype`` (float32 halves the memory of a whole model's)."""
    if weighting not in WEIGHTINGS:
        raise ValueError(f"weighting must be one of {WEIGHTINGS} (got {weighting!r})")
    out = {}
    for name, m in tqdm(stats.moments.items(), desc=f"{weighting} weighted SVDs", leave=False,
                        disable=not progress):
        assert m.gram is not None
        cov = add_ridge(m.gram / m.rows, ridge)
        f = stats.fisher[name]
        g = None if weighting == "plain" else f.diagonal(ridge) if weighting == "diagonal" else f.full(ridge)
        svd = weighted_svd(dense_weight(model.get_submodule(name)).detach(), cov, g)
        out[name] = WeightedSVD(svd.left.to(dtype), svd.s, svd.right.to(dtype))
    return out


def spectra_of(svds: Mapping[str, WeightedSVD], tokens: int = 0, ridge: float = DEFAULT_RIDGE) -> LossSpectra:
    """The weighted singular values as :class:`LossSpectra` (allocate with ``LossAware(..., normalise="output")``:
    with output weights, each layer's discarded ``σ²`` estimates its loss increase, in one unit for all)."""
    return LossSpectra({n: LayerSpectrum(s.s, s.left.shape[0], s.right.shape[1]) for n, s in svds.items()},
                       tokens, ridge)


@torch.no_grad()
def build_decomposed(model: nn.Module, svds: Mapping[str, WeightedSVD], ranks: Mapping[str, int]) -> nn.Module:
    """A copy of ``model`` with each layer of ``ranks`` replaced by its rank-``r`` weighted fit (an SVD
    ``LowRankLayer``, bias kept); layers not in ``ranks`` stay as they are."""
    work = copy.deepcopy(model)
    for name, rank in ranks.items():
        module = work.get_submodule(name)
        weight = dense_weight(module)
        layer: LowRankLayer = build(describe(module), "svd", (rank,))
        layer = layer.to(device=weight.device, dtype=weight.dtype)
        first, last = svds[name].factors(rank)
        layer.first.weight.copy_(first.reshape(layer.first.weight.shape))
        layer.last.weight.copy_(last.reshape(layer.last.weight.shape))
        bias = getattr(module, "bias", None)
        if bias is not None and layer.last.bias is not None:
            layer.last.bias.copy_(bias)
        for p in layer.parameters():
            p.requires_grad_(weight.requires_grad)
        set_module(work, name, layer)
    return work
