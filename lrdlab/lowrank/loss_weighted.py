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
from typing import Any

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from lrdlab.lowrank.allocation import LayerSpectrum, LossSpectra
from lrdlab.lowrank.apply import check_plan, set_module
from lrdlab.lowrank.calibration_blocks import (
    Captured,
    Stack,
    capture_stack,
    find_stack,
    planned_only,
    shared_copy,
    stack_moments,
)
from lrdlab.lowrank.calibration_fit import Moments
from lrdlab.lowrank.data_aware import DEFAULT_RIDGE, add_ridge
from lrdlab.lowrank.fisher import OutputFisher, output_fisher
from lrdlab.lowrank.layers import LowRankLayer, build, dense_weight, describe
from lrdlab.lowrank.output_weighted import WeightedSVD, weighted_svd
from lrdlab.lowrank.plan import LayerPlan, Plan

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
    _require_ran(names, moments, fisher)
    return LossWeights(moments, fisher, max(m.rows for m in moments.values()))


def _require_ran(names: Iterable[str], moments: Mapping[str, Moments], fisher: Mapping[str, OutputFisher]) -> None:
    """Raise ``ValueError`` naming the first layer that never ran, or whose output never reached the loss (the
    moments of the layers in ``moments`` are checked too)."""
    for n in names:
        if fisher[n].sq is None or (n in moments and moments[n].gram is None):
            raise _never_ran(n)


def _never_ran(name: str) -> ValueError:
    return ValueError(f"layer {name!r} never ran (or never reached the loss) on the calibration batches; leave it "
                      f"out of the plan, e.g. Layers(exclude={name!r})")


def _layer_svd(module: nn.Module, m: Moments, f: OutputFisher, weighting: str, ridge: float) -> WeightedSVD:
    """One layer's weighted SVD from its input moments ``m`` and output-gradient sums ``f`` (float64)."""
    assert m.gram is not None
    g = None if weighting == "plain" else f.diagonal(ridge) if weighting == "diagonal" else f.full(ridge)
    return weighted_svd(dense_weight(module).detach(), add_ridge(m.gram / m.rows, ridge), g)


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
        svd = _layer_svd(model.get_submodule(name), m, stats.fisher[name], weighting, ridge)
        out[name] = WeightedSVD(svd.left.to(dtype), svd.s, svd.right.to(dtype))
    return out


def spectra_of(svds: Mapping[str, WeightedSVD], tokens: int = 0, ridge: float = DEFAULT_RIDGE) -> LossSpectra:
    """The weighted singular values as :class:`LossSpectra` (allocate with ``LossAware(..., normalise="output")``:
    with output weights, each layer's discarded ``σ²`` estimates its loss increase, in one unit for all)."""
    return LossSpectra({n: LayerSpectrum(s.s, s.left.shape[0], s.right.shape[1]) for n, s in svds.items()},
                       tokens, ridge)


def _weighted_layer(module: nn.Module, svd: WeightedSVD, rank: int) -> LowRankLayer:
    """The rank-``rank`` SVD ``LowRankLayer`` of ``svd`` in ``module``'s place (bias, dtype, device and
    ``requires_grad`` kept)."""
    weight = dense_weight(module)
    layer: LowRankLayer = build(describe(module), "svd", (rank,))
    layer = layer.to(device=weight.device, dtype=weight.dtype)
    first, last = svd.factors(rank)
    for child, value in (("first", first), ("last", last)):
        target: Tensor = getattr(layer, child).weight
        target.copy_(value.reshape(target.shape))
    last_factor: Any = layer[-1]
    bias, new_bias = getattr(module, "bias", None), last_factor.bias
    if bias is not None and new_bias is not None:
        new_bias.copy_(bias)
    for p in layer.parameters():
        p.requires_grad_(weight.requires_grad)
    return layer


@torch.no_grad()
def build_decomposed(model: nn.Module, svds: Mapping[str, WeightedSVD], ranks: Mapping[str, int]) -> nn.Module:
    """A copy of ``model`` with each layer of ``ranks`` replaced by its rank-``r`` weighted fit (an SVD
    ``LowRankLayer``, bias kept); layers not in ``ranks`` stay as they are."""
    work = copy.deepcopy(model)
    for name, rank in ranks.items():
        set_module(work, name, _weighted_layer(work.get_submodule(name), svds[name], rank))
    return work


def fits_by_svd(model: nn.Module, row: LayerPlan) -> bool:
    """Whether the loss-weighted fit applies to a plan row: a Linear (or GPT-2 ``Conv1D``) decomposed by SVD."""
    from lrdlab.lowrank.hf import is_conv1d

    try:
        module = model.get_submodule(row.name)
    except AttributeError:  # a row of 3-D expert weights names a parameter, not a module
        return False
    return row.method == "svd" and (isinstance(module, nn.Linear) or is_conv1d(module))


def resolved_mode(model: nn.Module, plan: Plan, mode: str) -> str:
    """The calibration mode ``mode`` stands for: ``"auto"`` is ``"loss-weighted"`` for a causal LM whose planned
    layers are all Linear layers decomposed by SVD, else ``"corrected"``; any other mode is itself."""
    from lrdlab.lowrank.token_batches import is_causal_lm

    if mode != "auto":
        return mode
    lm = is_causal_lm(model) and all(fits_by_svd(model, row) for row in plan.decomposed_layers)
    return "loss-weighted" if lm else "corrected"


def check_loss_weighted(model: nn.Module, plan: Plan) -> None:
    """Raise ``ValueError`` unless ``Calibration(mode="loss-weighted")`` applies: a causal LM (its next-token
    loss gives the weights) whose planned layers are all decomposed by SVD."""
    from lrdlab.lowrank.token_batches import is_causal_lm

    if not is_causal_lm(model):
        raise ValueError(f"Calibration mode 'loss-weighted' weights each layer by the next-token loss, and "
                         f"{type(model).__name__} is not a causal LM; use mode='corrected' (or set "
                         f"model.lrdlab_causal_lm = True if it predicts the next token)")
    for row in plan.decomposed_layers:
        if not fits_by_svd(model, row):
            raise ValueError(f"layer {row.name!r}: Calibration mode 'loss-weighted' fits Linear layers decomposed "
                             f"by 'svd' (its plan says {row.method!r} of a {row.type}); use "
                             f"mode='corrected' or exclude the layer")


@torch.no_grad()
def fit_plan(model: nn.Module, plan: Plan, batches: Iterable, ridge: float = DEFAULT_RIDGE, *,
             inplace: bool = False, progress: bool | None = None) -> nn.Module:
    """``decompose(model, plan, calibration=Calibration(batches, mode="loss-weighted"))``: every planned layer
    replaced by its output-Fisher weighted SVD (:func:`~lrdlab.lowrank.output_weighted.weighted_svd`, the
    ``"diagonal"`` weighting) at the plan's rank. One forward and backward pass per sequence of ``batches`` gives
    the output-gradient sums (vectors); the float64 input moments of the layers inside a stack of repeated blocks
    (decoder layers) come block by block from the original network's activations, captured once and carried
    forward (:func:`~lrdlab.lowrank.calibration_blocks.stack_moments`), each block's fitted and freed before
    the next, so the memory they take does not grow with depth; other layers' moments come from the backward
    pass's forward. Every new layer is computed before any is put in place, so on an error the model is as it
    was. Returns the model in eval mode."""
    from lrdlab.lowrank.calibration import check_batches

    check_plan(model, plan)
    check_loss_weighted(model, plan)
    xs = check_batches(model, batches, plan)
    rows = {row.name: row for row in plan.decomposed_layers}
    show = len(rows) >= 20 if progress is None else progress
    new: dict[str, LowRankLayer] = {}
    bar = tqdm(total=len(rows), desc="loss-weighted fits", leave=False, disable=not show)

    def fit(name: str, m: Moments | None, f: OutputFisher) -> None:
        if m is None or m.gram is None:
            raise _never_ran(name)
        module = model.get_submodule(name)
        new[name] = _weighted_layer(module, _layer_svd(module, m, f, "diagonal", ridge), int(rows[name].spec[1][0]))
        bar.update()

    was_training = model.training
    model.eval()
    try:
        stack, captured = _captured_stack(model, list(rows), xs)
        inside = [n for n in rows if stack is not None and stack.holds(n)]
        with torch.enable_grad():
            fisher, moments = output_fisher(model, xs, list(rows), moments=[n for n in rows if n not in inside],
                                            progress=show)
        _require_ran(rows, moments, fisher)
        for name in list(moments):
            fit(name, moments.pop(name), fisher.pop(name))
        if stack is not None and inside:
            assert captured is not None
            for path, block in stack_moments(model, stack, inside, captured):
                for name in [n for n in inside if n.startswith(f"{path}.")]:
                    fit(name, block.pop(name, None), fisher.pop(name))
                del block  # this block's moments go before the next block's are made
    finally:
        model.train(was_training)
        bar.close()
    # the copy shares the planned layers' own weights: they are replaced right away
    work = model if inplace else shared_copy(model, planned_only(model, list(rows)))
    for name, layer in new.items():
        set_module(work, name, layer)
    return work.eval()


def _captured_stack(model: nn.Module, names: list[str], xs: list) -> tuple[Stack | None, list[Captured] | None]:
    """The stack of repeated blocks holding the planned layers ``names`` and its inputs for each batch (one pass
    of the network up to its last block), or ``(None, None)`` where there is none or it does not run as a
    chain."""
    stack = find_stack(model, names)
    captured = capture_stack(model, stack, xs) if stack is not None else None
    return (stack, captured) if captured is not None else (None, None)


@dataclass(frozen=True)
class LossWeighted:
    """Settings of :func:`decompose_loss_weighted`: ``ratio`` the parameter budget (that of ``Ratio(ratio)`` over
    the measured layers); ``allocate``: ranks by the loss estimate (greedy per parameter, no layer below ``floor``
    of its uniform rank) rather than uniform; ``weighting``: ``"diagonal"`` (output channels weighted by
    ``E[g²]``), ``"full"`` (by ``E[g gᵀ]``) or ``"plain"`` (SVD-LLM); ``ridge``: as ``Calibration``'s."""

    ratio: float
    allocate: bool = True
    floor: float = 0.5
    weighting: str = "diagonal"
    ridge: float = DEFAULT_RIDGE

    def __post_init__(self) -> None:
        if isinstance(self.ratio, bool) or not isinstance(self.ratio, (int, float)) or not self.ratio > 1:
            raise ValueError(f"LossWeighted: ratio must be a number > 1 (got {self.ratio!r}); e.g. LossWeighted(1.25)")
        if not isinstance(self.allocate, bool):
            raise ValueError(f"LossWeighted: allocate must be True or False (got {self.allocate!r})")
        if isinstance(self.floor, bool) or not isinstance(self.floor, (int, float)) or not 0 <= self.floor <= 1:
            raise ValueError(f"LossWeighted: floor must be in [0, 1] (got {self.floor!r}); e.g. floor=0.5 keeps at "
                             f"least half of each layer's uniform rank")
        if self.weighting not in WEIGHTINGS:
            raise ValueError(f"LossWeighted: weighting must be one of {WEIGHTINGS} (got {self.weighting!r})")
        if isinstance(self.ridge, bool) or not isinstance(self.ridge, (int, float)) or not self.ridge >= 0:
            raise ValueError(f"LossWeighted: ridge must be a number >= 0 (got {self.ridge!r}); the default is "
                             f"{DEFAULT_RIDGE}")


def decompose_loss_weighted(model: nn.Module, batches: Iterable, config: LossWeighted, layers=None, *,
                            progress: bool = True) -> tuple[nn.Module, Plan]:
    """A decomposed copy of the causal LM ``model`` and its plan: each Linear fitted by the loss-weighted SVD on
    the calibration ``batches`` (token ids), its rank chosen as ``config`` says. ``layers``: a
    :class:`~lrdlab.lowrank.plan_config.Layers` (which layers to plan). The model is left as it was."""
    from lrdlab.lowrank.plan import make_plan
    from lrdlab.lowrank.plan_config import LossAware, Ratio

    stats = measure_loss_weights(model, batches, layers, full=config.weighting == "full", progress=progress)
    svds = weighted_svds(model, stats, config.weighting, config.ridge, progress=progress)
    policy = (LossAware(config.ratio, spectra_of(svds, stats.tokens, config.ridge), normalise="output",
                        floor=config.floor) if config.allocate else Ratio(config.ratio))
    plan = make_plan(model, policy, layers)
    ranks = {row.name: row.spec[1][0] for row in plan.decomposed_layers if row.name in svds}
    return build_decomposed(model, svds, ranks), plan
