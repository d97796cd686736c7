"""Decomposition methods: one object per low-rank form, looked up by name.

Each :class:`Method` knows everything lrdlab needs about its form: which layers it applies to, the
full ranks, the parameter count, the rank for a compression ratio (paper §1 / Eq. 7), the matrices
whose spectra decide each rank, how to build and fill the factor modules, how to reconstruct the dense
weight, and which factor trains under each freezing schedule. Plans store the method's *name*;
:func:`get_method` turns it back into the object. A new form is one new subclass plus :func:`register`.

A layer is described by :func:`lrdlab.lowrank.layers.describe` (``in_channels`` C, ``out_channels``
S, ``kernel_size``, …). Weights are ``[S, C, kh, kw]`` (convs) or ``[S, C]`` (Linear; a HuggingFace
``Conv1D`` is handed over transposed to this form, see :mod:`lrdlab.lowrank.hf`).
"""

from __future__ import annotations

import math
import numbers
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from lrdlab.lowrank import factorize, ranks
from lrdlab.lowrank.data_aware import reduced_rank_regression, whitened_tucker2

Info = Mapping[str, Any]


def _conv(cin: int, cout: int, kernel: int | Sequence[int], bias: bool, like: Info | None = None,
          groups: int = 1) -> nn.Conv2d:
    """A Conv2d; with ``like`` (a ``describe()`` dict) it copies stride, padding, dilation and padding mode."""
    size = kernel if isinstance(kernel, int) else (int(kernel[0]), int(kernel[1]))
    if like is None:
        return nn.Conv2d(cin, cout, size, bias=bias, groups=groups)
    padding = like["padding"] if isinstance(like["padding"], str) else tuple(like["padding"])
    return nn.Conv2d(cin, cout, size, bias=bias, groups=groups, stride=tuple(like["stride"]), padding=padding,
                     dilation=tuple(like["dilation"]), padding_mode=like["padding_mode"])


def linear_like(info: Info) -> bool:
    """A Linear, a Linear subclass (attention's ``out_proj``) or a HuggingFace ``Conv1D``: ``describe`` records a
    stride only for convs, so a layer without one computes ``x @ W.T + b``."""
    return info.get("type") == "Linear" or "stride" not in info


def _k2(info: Info) -> int:
    return math.prod(info["kernel_size"])


def _floor_rank(dense: int, per_rank: int, ratio: float) -> int:
    """Largest R with ``R · per_rank <= dense / ratio`` (a form whose params are linear in R)."""
    ranks.check_ratio(ratio)
    return math.floor(dense / (ratio * per_rank))


class Method:
    """One low-rank form. Subclasses set the class attributes and the shape-specific methods."""

    name: ClassVar[str]
    description: ClassVar[str]
    factor_names: ClassVar[tuple[str, ...]]  # the LowRankLayer's children, in forward order
    rank_names: ClassVar[tuple[str, ...]]  # what each rank is the rank of (for tables and plots)
    regular_factor: ClassVar[str]  # the factor that trains under regular freezing (P1)
    sequential_order: ClassVar[tuple[str, ...]]  # default rotation of sequential freezing (P2)
    kxk: ClassVar[bool] = True  # a form for k×k convs that make_plan(method=...) may choose
    branchable: ClassVar[bool] = False  # supports branched (grouped-core) factors

    @property
    def n_ranks(self) -> int:
        return len(self.rank_names)

    # --- what it applies to ---------------------------------------------------------------------
    def unsupported(self, info: Info) -> str | None:
        """Why this form cannot decompose the layer ``info``, or None when it can."""
        if linear_like(info):
            return f"a {info['type']} layer is decomposed by 'svd', not {self.name!r}"
        return None

    # --- ranks and parameters -------------------------------------------------------------------
    def full_ranks(self, info: Info) -> list[int]:
        """The largest ranks: decomposing at these reproduces the layer exactly."""
        raise NotImplementedError

    def params(self, info: Info, layer_ranks: Sequence[int], branches: int = 1) -> int:
        """Weights of the factors (the bias, kept unchanged, is not counted)."""
        raise NotImplementedError

    def rank_for_ratio(self, info: Info, ratio: float, beta: float = 1.0, branches: int = 1) -> list[int]:
        """Ranks that compress the layer's weights ``ratio``-fold (floored)."""
        raise NotImplementedError

    def unfoldings(self, weight: Tensor) -> list[Tensor]:
        """The matrices whose singular values decide each rank, one per rank."""
        raise NotImplementedError

    def spectra(self, weight: Tensor) -> list[Tensor]:
        """Singular values (float64, descending) that decide each rank."""
        return [factorize.singular_values(m) for m in self.unfoldings(weight.detach())]

    def check_ranks(self, info: Info, layer_ranks: Sequence[int], where: str = "this layer") -> None:
        """Raise ``ValueError`` unless ``layer_ranks`` are possible for the layer ``info``."""
        limit = self.full_ranks(info)
        if isinstance(layer_ranks, (str, bytes)) or not isinstance(layer_ranks, Sequence):
            raise ValueError(f"{where}: ranks must be a sequence of {len(limit)} int(s) like {tuple(limit)}, "
                             f"got {layer_ranks!r}")
        if (len(layer_ranks) != len(limit)
                or any(isinstance(r, bool) or not isinstance(r, numbers.Integral) or not 1 <= r <= t
                       for r, t in zip(layer_ranks, limit))):
            raise ValueError(f"{where}: ranks {tuple(layer_ranks)} are impossible for {self.name} of a "
                             f"{info['in_channels']}→{info['out_channels']} {info['type']}; "
                             f"give {len(limit)} int(s), each in 1..{tuple(limit)}")

    def reduced(self, info: Info, target: Sequence[int], branches: int = 1) -> tuple[Method, int] | None:
        """When ``target`` puts one factor at full rank (a useless square 1×1), the form without it and the
        index of the rank that form keeps; None otherwise."""
        return None

    # --- modules --------------------------------------------------------------------------------
    def build(self, info: Info, layer_ranks: Sequence[int], branches: int = 1) -> OrderedDict[str, nn.Module]:
        """Uninitialised factor modules of the right shapes, named as :attr:`factor_names`."""
        raise NotImplementedError

    def factorize(self, weight: Tensor, layer_ranks: Sequence[int], tucker: str = "hosvd",
                  branches: int = 1) -> dict[str, Tensor]:
        """The factor weights (shaped as the built modules' weights) approximating ``weight``."""
        raise NotImplementedError

    def reconstruct(self, factors: Mapping[str, Tensor], info: Info) -> Tensor:
        """The dense weight (the original's shape) that the factor weights multiply to."""
        raise NotImplementedError

    def data_aware(self, weight: Tensor, cov: Tensor, layer_ranks: Sequence[int],
                   branches: int = 1) -> dict[str, Tensor] | None:
        """Factor weights (by child name) minimising the output error on inputs of second moment ``cov``.

        ``None``: this form has no data-aware fit (decomposition stays weight-only).
        """
        return None

    def __repr__(self) -> str:
        return f"<method {self.name}: {self.description}>"


class SVD(Method):
    """Linear / 1×1 conv C→S as C→R→S (paper §1)."""

    name = "svd"
    description = "truncated SVD: C→R→S (Linear and 1×1 conv)"
    factor_names = ("first", "last")
    rank_names = ("weight matrix",)
    regular_factor = "last"
    sequential_order = ("last", "first")
    kxk = False

    def unsupported(self, info: Info) -> str | None:
        if not linear_like(info) and tuple(info["kernel_size"]) != (1, 1):
            return (f"'svd' needs a Linear or 1×1 conv (kernel {tuple(info['kernel_size'])}); "
                    f"use 'channel_svd' or 'tucker2'")
        return None

    def full_ranks(self, info: Info) -> list[int]:
        return [min(info["in_channels"], info["out_channels"])]

    def params(self, info: Info, layer_ranks: Sequence[int], branches: int = 1) -> int:
        return ranks.svd_params(info["in_channels"], info["out_channels"], layer_ranks[0])

    def rank_for_ratio(self, info: Info, ratio: float, beta: float = 1.0, branches: int = 1) -> list[int]:
        return [ranks.svd_rank_for_ratio(info["in_channels"], info["out_channels"], ratio)]

    def unfoldings(self, weight: Tensor) -> list[Tensor]:
        return [weight.reshape(weight.shape[0], -1)]

    def build(self, info: Info, layer_ranks: Sequence[int], branches: int = 1) -> OrderedDict[str, nn.Module]:
        C, S, bias, (r,) = info["in_channels"], info["out_channels"], info["bias"], layer_ranks
        if linear_like(info):  # Linear, its subclasses and HF Conv1D become two nn.Linear
            return OrderedDict(first=nn.Linear(C, r, bias=False), last=nn.Linear(r, S, bias=bias))
        return OrderedDict(first=_conv(C, r, 1, False, like=info), last=_conv(r, S, 1, bias))

    def factorize(self, weight: Tensor, layer_ranks: Sequence[int], tucker: str = "hosvd",
                  branches: int = 1) -> dict[str, Tensor]:
        S, C = weight.shape[:2]
        first, last = factorize.svd_factors(weight.reshape(S, -1), layer_ranks[0])
        extra = (1,) * (weight.dim() - 2)
        return {"first": first.reshape(first.shape[0], -1, *extra), "last": last.reshape(S, -1, *extra)}

    def reconstruct(self, factors: Mapping[str, Tensor], info: Info) -> Tensor:
        first, last = factors["first"], factors["last"]
        dense = last.reshape(last.shape[0], -1) @ first.reshape(first.shape[0], -1)
        return dense if linear_like(info) else dense[:, :, None, None]


    def data_aware(self, weight: Tensor, cov: Tensor, layer_ranks: Sequence[int],
                   branches: int = 1) -> dict[str, Tensor] | None:
        first, last = reduced_rank_regression(weight.reshape(weight.shape[0], -1), cov, layer_ranks[0])
        return {"first": first, "last": last}


class ChannelSVD(Method):
    """k×k conv C→S as a k×k conv C→R, then a 1×1 conv R→S (Tucker-1 on the output channels)."""

    name = "channel_svd"
    description = "channel SVD: k×k conv C→R, 1×1 conv R→S"
    factor_names = ("first", "last")
    rank_names = ("weight matrix",)
    regular_factor = "last"
    sequential_order = ("last", "first")

    def full_ranks(self, info: Info) -> list[int]:
        return [min(info["in_channels"] * _k2(info), info["out_channels"])]

    def params(self, info: Info, layer_ranks: Sequence[int], branches: int = 1) -> int:
        return ranks.channel_svd_params(info["in_channels"], info["out_channels"], info["kernel_size"], layer_ranks[0])

    def rank_for_ratio(self, info: Info, ratio: float, beta: float = 1.0, branches: int = 1) -> list[int]:
        C, S = info["in_channels"], info["out_channels"]
        return [ranks.channel_svd_rank_for_ratio(C, S, info["kernel_size"], ratio)]

    def unfoldings(self, weight: Tensor) -> list[Tensor]:
        return [factorize.mode_unfolding(weight, 0)]

    def build(self, info: Info, layer_ranks: Sequence[int], branches: int = 1) -> OrderedDict[str, nn.Module]:
        C, S, (r,) = info["in_channels"], info["out_channels"], layer_ranks
        return OrderedDict(first=_conv(C, r, info["kernel_size"], False, like=info),
                           last=_conv(r, S, 1, info["bias"]))

    def factorize(self, weight: Tensor, layer_ranks: Sequence[int], tucker: str = "hosvd",
                  branches: int = 1) -> dict[str, Tensor]:
        S, C, kh, kw = weight.shape
        first, last = factorize.svd_factors(weight.reshape(S, -1), layer_ranks[0])
        return {"first": first.reshape(-1, C, kh, kw), "last": last[:, :, None, None]}

    def reconstruct(self, factors: Mapping[str, Tensor], info: Info) -> Tensor:
        return torch.einsum("sr,rcij->scij", factors["last"][:, :, 0, 0], factors["first"])


    data_aware = SVD.data_aware  # the same regression on the flattened [S, C·k²] weight


class InputSVD(Method):
    """k×k conv C→S as a 1×1 conv C→R, then a k×k conv R→S (Tucker-1 on the input channels).

    What Tucker-2 becomes when its output-channel rank reaches S: the full-rank ``last`` factor is dropped.
    """

    name = "input_svd"
    description = "input-channel SVD: 1×1 conv C→R, k×k conv R→S"
    factor_names = ("first", "last")
    rank_names = ("input-channel unfolding",)
    regular_factor = "last"
    sequential_order = ("last", "first")

    def full_ranks(self, info: Info) -> list[int]:
        return [min(info["in_channels"], info["out_channels"] * _k2(info))]

    def params(self, info: Info, layer_ranks: Sequence[int], branches: int = 1) -> int:
        return layer_ranks[0] * (info["in_channels"] + info["out_channels"] * _k2(info))

    def rank_for_ratio(self, info: Info, ratio: float, beta: float = 1.0, branches: int = 1) -> list[int]:
        C, S, k2 = info["in_channels"], info["out_channels"], _k2(info)
        return [_floor_rank(C * S * k2, C + S * k2, ratio)]

    def unfoldings(self, weight: Tensor) -> list[Tensor]:
        return [factorize.mode_unfolding(weight, 1)]

    def build(self, info: Info, layer_ranks: Sequence[int], branches: int = 1) -> OrderedDict[str, nn.Module]:
        C, S, (r,) = info["in_channels"], info["out_channels"], layer_ranks
        return OrderedDict(first=_conv(C, r, 1, False),
                           last=_conv(r, S, info["kernel_size"], info["bias"], like=info))

    def factorize(self, weight: Tensor, layer_ranks: Sequence[int], tucker: str = "hosvd",
                  branches: int = 1) -> dict[str, Tensor]:
        S, C, kh, kw = weight.shape
        # W's input-channel unfolding [C, S·kh·kw] ≈ Uᵀ-side × V-side; svd_factors takes [rows, cols] = its transpose
        first, last = factorize.svd_factors(factorize.mode_unfolding(weight, 1).T, layer_ranks[0])
        return {"first": first[:, :, None, None], "last": last.reshape(S, kh, kw, -1).permute(0, 3, 1, 2)}

    def reconstruct(self, factors: Mapping[str, Tensor], info: Info) -> Tensor:
        return torch.einsum("srij,rc->scij", factors["last"], factors["first"][:, :, 0, 0])


class Tucker2(Method):
    """k×k conv C→S as 1×1 C→R1, k×k core R1→R2 (optionally ``branches`` groups), 1×1 R2→S (paper §1)."""

    name = "tucker2"
    description = "Tucker-2: 1×1 conv C→R1, k×k core R1→R2, 1×1 conv R2→S"
    factor_names = ("first", "core", "last")
    rank_names = ("input-channel unfolding (R1)", "output-channel unfolding (R2)")
    regular_factor = "core"
    sequential_order = ("core", "first", "last")
    branchable = True

    def full_ranks(self, info: Info) -> list[int]:
        C, S, k2 = info["in_channels"], info["out_channels"], _k2(info)
        return [min(C, S * k2), min(S, C * k2)]

    def params(self, info: Info, layer_ranks: Sequence[int], branches: int = 1) -> int:
        r1, r2 = layer_ranks
        return ranks.tucker2_params(info["in_channels"], info["out_channels"], info["kernel_size"], r1, r2, branches)

    def rank_for_ratio(self, info: Info, ratio: float, beta: float = 1.0, branches: int = 1) -> list[int]:
        C, S = info["in_channels"], info["out_channels"]
        return list(ranks.tucker2_rank_for_ratio(C, S, info["kernel_size"], ratio, beta, branches))

    def unfoldings(self, weight: Tensor) -> list[Tensor]:
        return [factorize.mode_unfolding(weight, 1), factorize.mode_unfolding(weight, 0)]

    def reduced(self, info: Info, target: Sequence[int], branches: int = 1) -> tuple[Method, int] | None:
        if branches > 1:  # a full-rank 1×1 still mixes channels across the grouped core's branches
            return None
        limit = self.full_ranks(info)
        in_full, out_full = target[0] >= limit[0], target[1] >= limit[1]
        if in_full == out_full:  # neither mode at its size, or both (then nothing saves)
            return None
        return (CHANNEL_SVD, 1) if in_full else (INPUT_SVD, 0)

    def build(self, info: Info, layer_ranks: Sequence[int], branches: int = 1) -> OrderedDict[str, nn.Module]:
        C, S, (r1, r2) = info["in_channels"], info["out_channels"], layer_ranks
        if (isinstance(branches, bool) or not isinstance(branches, numbers.Integral) or branches < 1
                or r1 % branches or r2 % branches):
            raise ValueError(f"branched Tucker: ranks ({r1}, {r2}) must be multiples of the branch count "
                             f"{branches!r} (a positive int); round them or choose another branch count")
        return OrderedDict(first=_conv(C, r1, 1, False),
                           core=_conv(r1, r2, info["kernel_size"], False, like=info, groups=branches),
                           last=_conv(r2, S, 1, info["bias"]))

    def factorize(self, weight: Tensor, layer_ranks: Sequence[int], tucker: str = "hosvd",
                  branches: int = 1) -> dict[str, Tensor]:
        u_in, core, u_out = factorize.tucker2_factors(weight, layer_ranks[0], layer_ranks[1], method=tucker)
        return {"first": u_in.T[:, :, None, None], "core": factorize.block_diagonal_core(core, branches),
                "last": u_out[:, :, None, None]}

    def reconstruct(self, factors: Mapping[str, Tensor], info: Info) -> Tensor:
        first, core, last = factors["first"], factors["core"], factors["last"]
        r1 = first.shape[0]
        branches = r1 // core.shape[1]
        if branches > 1:  # grouped core: expand to the block-diagonal [R2, R1, kh, kw]
            r2, b1 = core.shape[0], core.shape[1]
            full = core.new_zeros(r2, r1, *core.shape[2:])
            b2 = r2 // branches
            for g in range(branches):
                full[g * b2:(g + 1) * b2, g * b1:(g + 1) * b1] = core[g * b2:(g + 1) * b2]
            core = full
        return factorize.reconstruct_tucker2(first[:, :, 0, 0].T, core, last[:, :, 0, 0])

    def data_aware(self, weight: Tensor, cov: Tensor, layer_ranks: Sequence[int],
                   branches: int = 1) -> dict[str, Tensor] | None:
        if branches > 1:
            return None
        first, core, last = whitened_tucker2(weight, cov, layer_ranks[0], layer_ranks[1])
        return {"first": first, "core": core, "last": last}


_REGISTRY: dict[str, Method] = {}





def register(method: Method) -> Method:
    """Add ``method`` to the registry under its ``name`` (a new low-rank form is one class and this call)."""
    if method.name in _REGISTRY:
        raise ValueError(f"a method named {method.name!r} is already registered")
    _REGISTRY[method.name] = method
    return method


SVD_METHOD = register(SVD())
CHANNEL_SVD = register(ChannelSVD())
INPUT_SVD = register(InputSVD())
TUCKER2 = register(Tucker2())


def method_names() -> tuple[str, ...]:
    """Names of every registered method."""
    return tuple(_REGISTRY)


def kxk_method_names() -> tuple[str, ...]:
    """Names of the forms ``make_plan(method=...)`` may choose for k×k convs."""
    return tuple(name for name, m in _REGISTRY.items() if m.kxk)


def get_method(method: str | Method) -> Method:
    """The registered method called ``method`` (a Method passes through)."""
    if isinstance(method, Method):
        return method
    found = _REGISTRY.get(method) if isinstance(method, str) else None
    if found is None:
        raise ValueError(f"unknown decomposition method {method!r}; choose one of {method_names()}")
    return found


def default_method(info: Info) -> Method:
    """SVD for Linear and 1×1 convs, Tucker-2 for k×k convs (paper §1)."""
    return SVD_METHOD if SVD_METHOD.unsupported(info) is None else TUCKER2
