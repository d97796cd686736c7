"""The memory layout of Linear weights for one-token decode, where every Linear is a GEMV.

An ``nn.Linear`` stores its weight ``[out, in]`` row-major: at one token each output is the dot product of a
weight row with the input. For a Linear that *widens* (``out > in``: every ``last`` factor of an SVD
decomposition, an ``lm_head``) the BLAS GEMV can be much faster with the same values stored ``[in, out]``
row-major, each input element scaling one long contiguous row (measured on MKL and an AMD EPYC in
data/lm_decode_smollm2_cpu*.json). :func:`gemv_layout` stores them so: the weight stays the same ``nn.Parameter``
of shape ``[out, in]`` (a transposed view of its new storage), so the model keeps its plain ``nn.Linear``
modules, its values, ``requires_grad`` and hooks; the outputs agree up to the BLAS's summation order.
:func:`row_major_layout` puts every weight back.
"""

from __future__ import annotations

import torch
from torch import nn

from lrdlab.lowrank.layers import LowRankLayer

SCOPES = ("factors", "all")


def _linears(model: nn.Module, scope: str) -> list[tuple[str, nn.Linear]]:
    if scope not in SCOPES:
        raise ValueError(f"gemv_layout: scope must be one of {', '.join(SCOPES)} (got {scope!r}): 'factors' for the "
                         "factors of decomposed layers, 'all' for every nn.Linear")
    inside = {id(m) for layer in model.modules() if isinstance(layer, LowRankLayer) for m in layer.children()}
    return [(name, m) for name, m in model.named_modules()
            if type(m) is nn.Linear and (scope == "all" or id(m) in inside)]


def _restride(linear: nn.Linear, to_output_major: bool) -> bool:
    weight, now = linear.weight, output_major(linear)
    if now == to_output_major or min(weight.shape) == 1 or not (weight.is_contiguous() or now):
        return False
    with torch.no_grad():
        weight.data = weight.data.t().contiguous().t() if to_output_major else weight.data.contiguous()
    return True


def gemv_layout(model: nn.Module, scope: str = "factors") -> list[str]:
    """Store each widening ``nn.Linear``'s weight ``[in, out]`` row-major, in place; the names of those changed.

    ``scope``: ``"factors"`` (default) the Linear factors of the model's ``LowRankLayer`` s, ``"all"`` every plain
    ``nn.Linear`` (e.g. a dense model, for a like-for-like comparison). A weight shared by two modules (a tied
    ``lm_head``) is stored once, so the embedding that shares it sees the same layout.
    """
    seen: set[int] = set()
    changed = []
    for name, linear in _linears(model, scope):
        if linear.out_features > linear.in_features and id(linear.weight) not in seen:
            seen.add(id(linear.weight))
            if _restride(linear, True):
                changed.append(name)
    return changed


def row_major_layout(model: nn.Module) -> list[str]:
    """Undo :func:`gemv_layout`: every ``nn.Linear`` weight stored ``[out, in]`` row-major again, in place."""
    seen: set[int] = set()
    changed = []
    for name, linear in _linears(model, "all"):
        if id(linear.weight) not in seen:
            seen.add(id(linear.weight))
            if _restride(linear, False):
                changed.append(name)
    return changed


def output_major(linear: nn.Linear) -> bool:
    """Whether ``linear``'s weight is stored ``[in, out]`` row-major (as :func:`gemv_layout` leaves it)."""
    weight = linear.weight
    return weight.dim() == 2 and weight.t().is_contiguous() and not weight.is_contiguous()
