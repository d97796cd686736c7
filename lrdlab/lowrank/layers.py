"""The decomposed layer: a small ``nn.Sequential`` of plain ``nn.Linear`` / ``nn.Conv2d`` modules.

``LowRankLayer`` children are named ``first``, (``core``,) ``last`` — see docs/architecture.md.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from typing import Any

import torch
from torch import nn

from lrdlab.lowrank import factorize

METHODS = ("svd", "channel_svd", "tucker2")


class LowRankLayer(nn.Sequential):
    """A layer replaced by a product of factors; carries what it replaced in ``original``."""

    def __init__(
        self,
        factors: OrderedDict[str, nn.Module],
        method: str,
        ranks: tuple[int, ...],
        original: dict[str, Any],
        branches: int = 1,
    ) -> None:
        super().__init__(factors)
        self.method = method
        self.ranks = tuple(int(r) for r in ranks)
        self.original = dict(original)
        self.branches = int(branches)

    def factor_names(self) -> list[str]:
        return [name for name, _ in self.named_children()]

    def extra_repr(self) -> str:
        extra = f", branches={self.branches}" if self.branches > 1 else ""
        return f"method={self.method}, ranks={self.ranks}{extra}"


def describe(module: nn.Module) -> dict[str, Any]:
    """What a Linear/Conv layer is, as plain JSON-able values."""
    info: dict[str, Any] = {"type": type(module).__name__, "bias": getattr(module, "bias", None) is not None}
    if isinstance(module, nn.Linear):
        info.update(in_channels=module.in_features, out_channels=module.out_features, kernel_size=[1, 1])
    elif isinstance(module, nn.modules.conv._ConvNd):
        info.update(
            in_channels=module.in_channels,
            out_channels=module.out_channels,
            kernel_size=list(module.kernel_size),
            stride=list(module.stride),
            padding=module.padding if isinstance(module.padding, str) else list(module.padding),
            dilation=list(module.dilation),
            groups=module.groups,
            padding_mode=module.padding_mode,
        )
    return info


def unsupported_reason(module: nn.Module) -> str | None:
    """Why ``module`` cannot be decomposed, or None when it can."""
    if isinstance(module, nn.Linear):
        return None
    if isinstance(module, (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)):
        return "skipped: transposed conv not supported"
    if isinstance(module, nn.Conv2d):
        if module.groups > 1:
            kind = "depthwise" if module.groups == module.in_channels == module.out_channels else "grouped"
            return f"skipped: {kind} conv (groups={module.groups})"
        return None
    if isinstance(module, (nn.Conv1d, nn.Conv3d)):
        return f"skipped: {type(module).__name__} not supported"
    return f"skipped: {type(module).__name__} not supported"


def default_method(module: nn.Module) -> str:
    """SVD for Linear and 1×1 conv, Tucker-2 for k×k conv (paper §1)."""
    if isinstance(module, nn.Linear) or tuple(module.kernel_size) == (1, 1):
        return "svd"
    return "tucker2"


def full_ranks(original: dict[str, Any], method: str) -> list[int]:
    """The largest ranks of a layer (``describe()`` dict): decomposing at these reproduces it exactly."""
    C, S, k2 = original["in_channels"], original["out_channels"], math.prod(original["kernel_size"])
    if method == "svd":
        return [min(C, S)]
    if method == "channel_svd":
        return [min(C * k2, S)]
    return [min(C, S * k2), min(S, C * k2)]


def _conv(cin: int, cout: int, kernel, bias: bool, like: dict | None = None, groups: int = 1) -> nn.Conv2d:
    spatial = {}
    if like is not None:
        spatial = dict(
            stride=tuple(like["stride"]),
            padding=like["padding"] if isinstance(like["padding"], str) else tuple(like["padding"]),
            dilation=tuple(like["dilation"]),
            padding_mode=like["padding_mode"],
        )
    return nn.Conv2d(cin, cout, kernel, bias=bias, groups=groups, **spatial)


def build(original: dict[str, Any], method: str, ranks: tuple[int, ...], branches: int = 1) -> LowRankLayer:
    """An uninitialised ``LowRankLayer`` of the right shapes (used to reload a saved model)."""
    C, S, kernel, bias = original["in_channels"], original["out_channels"], original["kernel_size"], original["bias"]
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {METHODS}")
    if original["type"] == "Linear":
        if method != "svd":
            raise ValueError(f"a Linear layer is decomposed by 'svd', not {method!r}")
        (r,) = ranks
        factors = OrderedDict(first=nn.Linear(C, r, bias=False), last=nn.Linear(r, S, bias=bias))
    elif method == "svd":
        if tuple(kernel) != (1, 1):
            raise ValueError(f"'svd' needs a 1×1 conv (kernel {tuple(kernel)}); use 'channel_svd' or 'tucker2'")
        (r,) = ranks
        factors = OrderedDict(first=_conv(C, r, 1, False, like=original), last=_conv(r, S, 1, bias))
    elif method == "channel_svd":
        (r,) = ranks
        factors = OrderedDict(first=_conv(C, r, tuple(kernel), False, like=original), last=_conv(r, S, 1, bias))
    else:
        r1, r2 = ranks
        if not isinstance(branches, int) or branches < 1 or r1 % branches or r2 % branches:
            raise ValueError(f"branched Tucker: ranks ({r1}, {r2}) must be multiples of the branch count "
                             f"{branches!r} (a positive int); round them or choose another branch count")
        factors = OrderedDict(
            first=_conv(C, r1, 1, False),
            core=_conv(r1, r2, tuple(kernel), False, like=original, groups=branches),
            last=_conv(r2, S, 1, bias),
        )
    return LowRankLayer(factors, method, ranks, original, branches=branches if method == "tucker2" else 1)


@torch.no_grad()
def decompose_layer(
    module: nn.Module, method: str, ranks: tuple[int, ...], tucker: str = "hosvd", branches: int = 1
) -> LowRankLayer:
    """Decompose one ``nn.Linear`` / ``nn.Conv2d`` into a ``LowRankLayer`` with the given ranks."""
    reason = unsupported_reason(module)
    if reason:
        raise ValueError(reason)
    original = describe(module)
    weight = module.weight
    limit = full_ranks(original, method)
    if len(ranks) != len(limit) or any(not 1 <= r <= top for r, top in zip(ranks, limit)):
        raise ValueError(f"ranks {tuple(ranks)} are impossible for {method} of this {original['type']}; "
                         f"each must be in 1..{tuple(limit)}")
    with torch.device("meta"):  # no point initialising weights that are overwritten below
        layer = build(original, method, tuple(ranks), branches)
    layer = layer.to_empty(device=weight.device).to(weight.dtype)
    S, C = weight.shape[:2]
    if method in ("svd", "channel_svd"):
        first, last = factorize.svd_factors(weight.reshape(S, -1), ranks[0])
        layer.first.weight.copy_(first.reshape(layer.first.weight.shape))
        layer.last.weight.copy_(last.reshape(layer.last.weight.shape))
    else:
        u_in, core, u_out = factorize.tucker2_factors(weight, ranks[0], ranks[1], method=tucker)
        layer.first.weight.copy_(u_in.T[:, :, None, None])
        layer.core.weight.copy_(factorize.block_diagonal_core(core, branches))
        layer.last.weight.copy_(u_out[:, :, None, None])
    if module.bias is not None:
        layer.last.bias.copy_(module.bias)
    return layer
