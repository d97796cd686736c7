"""Eager-mode quantization fusion of decomposed layers: ``fuse_model()`` of torchvision's quantizable models.

torchvision's quantizable models (``torchvision.models.quantization.resnet18(quantize=False)`` …) fuse by module
name, ``fuse_modules(model, [["conv1", "bn1", "relu"], …])``, and torch looks the fuser up by the modules' types.
In a decomposed model ``conv1`` is a :class:`~lrdlab.lowrank.layers.LowRankLayer`, which torch does not know. Its
output is its last factor's output, so fusing it with the BatchNorm / ReLU that follow is fusing its *last factor*
(a plain conv or Linear, which carries the bias) with them: :func:`fuse_low_rank` does that with torch's own fuser
for the last factor's type (``Conv2d + BatchNorm2d + ReLU`` → ``ConvReLU2d`` with the BatchNorm folded in eval mode,
``ConvBnReLU2d`` for QAT) and leaves the other factors as plain convs for quantization to convert.

Importing :mod:`lrdlab.lowrank` registers :func:`fuse_low_rank` for every ``(LowRankLayer, BatchNorm, [ReLU])`` and
``(LowRankLayer, ReLU)`` list in torch's eager fuser table, so ``model.fuse_model()`` and
``torch.ao.quantization.fuse_modules`` work unchanged; :data:`FUSER_METHODS` is the same table for
``fuse_modules(..., fuse_custom_config_dict={"additional_fuser_method_mapping": FUSER_METHODS})``.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn
from torch.ao.quantization import fuser_method_mappings as fusers

from lrdlab.lowrank.layers import LowRankLayer


def fuse_low_rank(is_qat: bool, layer: nn.Module, *after: nn.Module) -> nn.Module:
    """``layer`` (a LowRankLayer) with its last factor fused with ``after`` (BatchNorm [, ReLU] or ReLU) by torch's
    fuser for that factor's type; ``fuse_modules`` puts ``nn.Identity`` in place of ``after``."""
    if not isinstance(layer, LowRankLayer):
        raise ValueError(f"fuse_low_rank takes a LowRankLayer, got a {type(layer).__name__}")
    last_name, last = list(layer.named_children())[-1]
    types = (type(last), *(type(m) for m in after))
    try:
        fuser = fusers.get_fuser_method(types)
    except AssertionError as err:  # torch says "did not find fuser method" by assertion
        raise ValueError(f"cannot fuse a LowRankLayer ({layer.method}) whose last factor is a {type(last).__name__} "
                         f"with {[type(m).__name__ for m in after]}: torch has no fuser for {types}; leave this "
                         f"layer out of the fuse list") from err
    setattr(layer, last_name, fuser(is_qat, last, *after))
    return layer


def _lists() -> list[tuple[type, ...]]:
    out: list[tuple[type, ...]] = []
    for bn in (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d):
        out += [(LowRankLayer, bn), (LowRankLayer, bn, nn.ReLU)]
    return [*out, (LowRankLayer, nn.ReLU)]


FUSER_METHODS: dict[tuple[type, ...], Callable[..., nn.Module]] = {types: fuse_low_rank for types in _lists()}


def register() -> None:
    """Add :data:`FUSER_METHODS` to torch's eager fuser table (torch offers no public registry; a torch without
    that table keeps its own message, and ``fuse_custom_config_dict`` still works)."""
    table = getattr(fusers, "_DEFAULT_OP_LIST_TO_FUSER_METHOD", None)
    if isinstance(table, dict):
        for types, fuser in FUSER_METHODS.items():
            table.setdefault(types, fuser)


register()
