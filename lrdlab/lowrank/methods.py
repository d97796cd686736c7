"""Decomposition methods: one object per low-rank form, looked up by name.

Each :class:`Method` knows everything lrdlab needs about its form: which layers it applies to, the
full ranks, the parameter count, the rank for a compression ratio (paper §1 / Eq. 7), the matrices
whose spectra decide each rank, how to build and fill the factor modules, how to reconstruct the dense
weight, its weight-only error, and which factor trains under each freezing schedule. A form's options are
one frozen dataclass (:class:`~lrdlab.lowrank.method_base.MethodOptions`; Tucker-2's :class:`Tucker2Options`),
reached as ``method.options_type``. Plans store the method's *name* and its options; :func:`get_method` turns
the name back into the object. A new form is one subclass of :class:`~lrdlab.lowrank.method_base.Method`
plus :func:`register`.

A layer is described by :func:`lrdlab.lowrank.layers.describe` (``in_channels`` C, ``out_channels``
S, ``kernel_size``, …). Weights are ``[S, C, *kernel]`` (1-D, 2-D and 3-D convs, each factored into convs of its
own dimensionality) or ``[S, C]`` (Linear; a HuggingFace
``Conv1D`` is handed over transposed to this form, see :mod:`lrdlab.lowrank.hf`).
"""

from __future__ import annotations

import math
import numbers
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from lrdlab.lowrank import factorize, ranks
from lrdlab.lowrank.data_aware import reduced_rank_regression, whitened_tucker2
from lrdlab.lowrank.method_base import (  # noqa: F401  (Info, linear_like, Method, MethodOptions re-exported)
    Info,
    Method,
    MethodOptions,
    linear_like,
)

_CONVS: dict[int, Callable[..., nn.Conv1d | nn.Conv2d | nn.Conv3d]] = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}


def _conv(info: Info, cin: int, cout: int, kernel: int | Sequence[int], bias: bool, like: bool = False,
          groups: int = 1) -> nn.Conv1d | nn.Conv2d | nn.Conv3d:
    """A conv of the layer ``info``'s dimensionality (1-, 2- or 3-D, from its ``kernel_size``); ``kernel`` 1 is a
    pointwise one. With ``like`` it copies the layer's stride, padding, dilation and padding mode."""
    dims = len(info["kernel_size"])
    size = (kernel,) * dims if isinstance(kernel, int) else tuple(int(k) for k in kernel)
    kind = _CONVS[dims]
    if not like:
        return kind(cin, cout, size, bias=bias, groups=groups)
    padding = info["padding"] if isinstance(info["padding"], str) else tuple(info["padding"])
    return kind(cin, cout, size, bias=bias, groups=groups, stride=tuple(info["stride"]), padding=padding,
                dilation=tuple(info["dilation"]), padding_mode=info["padding_mode"])


def _pointwise(info: Info) -> bool:
    """A Linear-like layer or a conv whose kernel is 1 in every dimension."""
    return linear_like(info) or all(k == 1 for k in info["kernel_size"])


def _spatial(weight: Tensor) -> tuple[int, ...]:
    """Trailing singleton dimensions that make a ``[S, C]`` matrix a pointwise conv weight like ``weight``."""
    return (1,) * (weight.dim() - 2)


def _k2(info: Info) -> int:
    return math.prod(info["kernel_size"])


def _floor_rank(dense: int, per_rank: int, ratio: float) -> int:
    """Largest R with ``R · per_rank <= dense / ratio`` (a form whose params are linear in R)."""
    ranks.check_ratio(ratio)
    return math.floor(dense / (ratio * per_rank))


class SVD(Method):
    """Linear / 1×1 conv C→S as C→R→S (paper §1)."""

    name = "svd"
    description = "truncated SVD: C→R→S (Linear and 1×1 conv)"
    factor_names = ("first", "last")
    rank_names = ("weight matrix",)
    regular_factor = "last"
    sequential_order = ("last", "first")
    kxk = False
    spectral_error = True

    def unsupported(self, info: Info) -> str | None:
        if not _pointwise(info):
            return (f"'svd' needs a Linear or pointwise conv (kernel {tuple(info['kernel_size'])}); "
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
        return OrderedDict(first=_conv(info, C, r, 1, False, like=True), last=_conv(info, r, S, 1, bias))

    def factorize(self, weight: Tensor, layer_ranks: Sequence[int], options: MethodOptions | None = None,
                  branches: int = 1) -> dict[str, Tensor]:
        S, C = weight.shape[:2]
        first, last = factorize.svd_factors(weight.reshape(S, -1), layer_ranks[0])
        extra = _spatial(weight)
        return {"first": first.reshape(first.shape[0], -1, *extra), "last": last.reshape(S, -1, *extra)}

    def reconstruct(self, factors: Mapping[str, Tensor], info: Info) -> Tensor:
        first, last = factors["first"], factors["last"]
        dense = last.reshape(last.shape[0], -1) @ first.reshape(first.shape[0], -1)
        return dense if linear_like(info) else dense.reshape(*dense.shape, *(1,) * len(info["kernel_size"]))


    def data_aware(self, weight: Tensor, cov: Tensor, layer_ranks: Sequence[int],
                   branches: int = 1) -> dict[str, Tensor] | None:
        first, last = reduced_rank_regression(weight.reshape(weight.shape[0], -1), cov, layer_ranks[0])
        return {"first": first, "last": last}


class ChannelSVD(Method):
    """k×k conv C→S as a k×k conv C→R, then a 1×1 conv R→S (Tucker-1 on the output channels); 1-D and 3-D convs
    alike."""

    name = "channel_svd"
    description = "channel SVD: k×k conv C→R, 1×1 conv R→S"
    factor_names = ("first", "last")
    rank_names = ("weight matrix",)
    regular_factor = "last"
    sequential_order = ("last", "first")
    spectral_error = True

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
        return OrderedDict(first=_conv(info, C, r, info["kernel_size"], False, like=True),
                           last=_conv(info, r, S, 1, info["bias"]))

    def factorize(self, weight: Tensor, layer_ranks: Sequence[int], options: MethodOptions | None = None,
                  branches: int = 1) -> dict[str, Tensor]:
        S = weight.shape[0]
        first, last = factorize.svd_factors(weight.reshape(S, -1), layer_ranks[0])
        return {"first": first.reshape(-1, *weight.shape[1:]), "last": last.reshape(S, -1, *_spatial(weight))}

    def reconstruct(self, factors: Mapping[str, Tensor], info: Info) -> Tensor:
        last = factors["last"]
        return torch.einsum("sr,rc...->sc...", last.reshape(last.shape[0], -1), factors["first"])

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
    spectral_error = True

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
        return OrderedDict(first=_conv(info, C, r, 1, False),
                           last=_conv(info, r, S, info["kernel_size"], info["bias"], like=True))

    def factorize(self, weight: Tensor, layer_ranks: Sequence[int], options: MethodOptions | None = None,
                  branches: int = 1) -> dict[str, Tensor]:
        S, kernel = weight.shape[0], weight.shape[2:]
        # W's input-channel unfolding [C, S·k…] ≈ Uᵀ-side × V-side; svd_factors takes [rows, cols] = its transpose
        first, last = factorize.svd_factors(factorize.mode_unfolding(weight, 1).T, layer_ranks[0])
        return {"first": first.reshape(*first.shape, *_spatial(weight)),
                "last": last.reshape(S, *kernel, -1).movedim(-1, 1)}

    def reconstruct(self, factors: Mapping[str, Tensor], info: Info) -> Tensor:
        first = factors["first"]
        return torch.einsum("sr...,rc->sc...", factors["last"], first.reshape(first.shape[0], -1))


@dataclass(frozen=True)
class Tucker2Options(MethodOptions):
    """Tucker-2's options: ``init`` ``"hosvd"`` (one SVD per channel mode) or ``"hooi"`` (then ``sweeps`` sweeps of
    higher-order orthogonal iteration, :func:`lrdlab.lowrank.factorize.hooi_factors`)."""

    init: str = factorize.TUCKER_INIT
    sweeps: int = factorize.TUCKER_SWEEPS

    def __post_init__(self) -> None:
        if self.init not in factorize.TUCKER_METHODS:
            raise ValueError(f"Tucker2Options: init must be one of {factorize.TUCKER_METHODS} (got {self.init!r}); "
                             f"e.g. Tucker2Options(init='hooi')")
        if isinstance(self.sweeps, bool) or not isinstance(self.sweeps, numbers.Integral) or self.sweeps < 1:
            raise ValueError(f"Tucker2Options: sweeps must be a positive int (got {self.sweeps!r}); the HOOI sweeps "
                             f"from the HOSVD start, e.g. 1")


class Tucker2(Method):
    """k×k conv C→S as 1×1 C→R1, k×k core R1→R2 (optionally ``branches`` groups), 1×1 R2→S (paper §1); a 1-D or
    3-D conv as the same three convs of its dimensionality."""

    name = "tucker2"
    description = "Tucker-2: 1×1 conv C→R1, k×k core R1→R2, 1×1 conv R2→S"
    factor_names = ("first", "core", "last")
    rank_names = ("input-channel unfolding (R1)", "output-channel unfolding (R2)")
    regular_factor = "core"
    sequential_order = ("core", "first", "last")
    branchable = True
    options_type = Tucker2Options

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
        return OrderedDict(first=_conv(info, C, r1, 1, False),
                           core=_conv(info, r1, r2, info["kernel_size"], False, like=True, groups=branches),
                           last=_conv(info, r2, S, 1, info["bias"]))

    def factorize(self, weight: Tensor, layer_ranks: Sequence[int], options: MethodOptions | None = None,
                  branches: int = 1) -> dict[str, Tensor]:
        opts = self.options(options)
        assert isinstance(opts, Tucker2Options)
        u_in, core, u_out = factorize.tucker2_factors(weight, layer_ranks[0], layer_ranks[1], opts.init, opts.sweeps)
        extra = _spatial(weight)
        return {"first": u_in.T.reshape(*u_in.T.shape, *extra), "core": factorize.block_diagonal_core(core, branches),
                "last": u_out.reshape(*u_out.shape, *extra)}

    def reconstruct(self, factors: Mapping[str, Tensor], info: Info) -> Tensor:
        first, core, last = factors["first"], factors["core"], factors["last"]
        r1 = first.shape[0]
        branches = r1 // core.shape[1]
        if branches > 1:  # grouped core: expand to the block-diagonal [R2, R1, *kernel]
            r2, b1 = core.shape[0], core.shape[1]
            full = core.new_zeros(r2, r1, *core.shape[2:])
            b2 = r2 // branches
            for g in range(branches):
                full[g * b2:(g + 1) * b2, g * b1:(g + 1) * b1] = core[g * b2:(g + 1) * b2]
            core = full
        return factorize.reconstruct_tucker2(first.reshape(r1, -1).T, core, last.reshape(last.shape[0], -1))

    def errors(self, weight: Tensor, info: Info) -> Callable[[Sequence[int]], float]:
        """The HOSVD truncation's error at every (R1, R2), from one table of kept energy."""
        table = factorize.tucker2_kept_energy(weight)

        def error(layer_ranks: Sequence[int]) -> float:
            r1, r2 = layer_ranks
            kept = table[min(r2, table.shape[0] - 1), min(r1, table.shape[1] - 1)] / table[-1, -1]
            return math.sqrt(max(0.0, 1.0 - float(kept)))

        return error

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
    """SVD for Linear and pointwise convs, Tucker-2 for k×k convs of any dimensionality (paper §1)."""
    return SVD_METHOD if SVD_METHOD.unsupported(info) is None else TUCKER2
