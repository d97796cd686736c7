"""The measured truncation loss of every planned Linear: whitened spectra from one calibration pass.

``spectra = loss_spectra(model, batches)`` runs the model once over the calibration batches (SVD-LLM's one-shot
statistics, :func:`~lrdlab.lowrank.calibration_fit.one_shot_moments`) and keeps, per layer, the singular values
of ``W L`` (``L``: Cholesky factor of the layer's ridged input second moment, as the data-aware fit uses it), which
give the layer's output error at every rank (:mod:`lrdlab.lowrank.allocation`). The Gram matrices are dropped
once each spectrum is taken. ``make_plan(model, LossAware(1.25, spectra))`` then allocates the ranks.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import torch
from torch import nn
from tqdm.auto import tqdm

from lrdlab.lowrank.allocation import LayerSpectrum, LossSpectra, whitened_spectrum
from lrdlab.lowrank.data_aware import DEFAULT_RIDGE, add_ridge
from lrdlab.lowrank.layers import dense_weight


def svd_layers(model: nn.Module, layers=None) -> list[str]:
    """The layers a plan over ``layers`` (:class:`~lrdlab.lowrank.plan_config.Layers`) decomposes by SVD."""
    from lrdlab.lowrank.plan import FixedRank, make_plan

    plan = make_plan(model, FixedRank(1), layers)
    return [row.name for row in plan.decomposed_layers if row.method == "svd"]


def spectra_from_moments(model: nn.Module, moments: Mapping, ridge: float = DEFAULT_RIDGE,
                         progress: bool = False) -> LossSpectra:
    """:class:`LossSpectra` from streamed input moments (``{name: Moments}``, as ``one_shot_moments`` gives)."""
    out: dict[str, LayerSpectrum] = {}
    rows = 0
    for name, m in tqdm(moments.items(), desc="whitened spectra", leave=False, disable=not progress):
        if m.gram is None or m.rows == 0:
            raise ValueError(f"layer {name!r} never ran on the calibration batches; leave it out of the plan, "
                             f"e.g. Layers(exclude={name!r})")
        weight = dense_weight(model.get_submodule(name)).detach()
        cov = add_ridge(m.gram / m.rows, ridge)
        out[name] = LayerSpectrum(whitened_spectrum(weight, cov), weight.shape[0], weight.shape[1])
        rows = max(rows, m.rows)
    return LossSpectra(out, rows, ridge)


@torch.no_grad()
def loss_spectra(model: nn.Module, batches: Iterable, layers=None, *, ridge: float = DEFAULT_RIDGE,
                 progress: bool = True) -> LossSpectra:
    """Whitened spectra of the Linear layers a plan over ``layers`` would decompose, from one pass of ``model``
    over ``batches`` (token-id tensors for a language model, input tensors otherwise, checked first).

    ``ridge``: the relative ridge of the data-aware fit (keep the default to match ``decompose``'s).
    """
    from lrdlab.lowrank.calibration import check_batches
    from lrdlab.lowrank.calibration_fit import one_shot_moments

    names = svd_layers(model, layers)
    if not names:
        raise ValueError(f"{type(model).__name__} has no Linear layer to plan by SVD; loss_spectra measures Linear "
                         f"layers (and 1×1 convs)")
    xs = check_batches(model, batches)
    was_training = model.training
    model.eval()
    try:
        moments = one_shot_moments(model, names, xs)
    finally:
        model.train(was_training)
    return spectra_from_moments(model, moments, ridge, progress)
