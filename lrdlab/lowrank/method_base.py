"""The contract of a decomposition method: the :class:`Method` base class and its :class:`MethodOptions`.

A form subclasses :class:`Method` (its factor names, ranks, modules, factorization) and, when it has options,
declares a frozen :class:`MethodOptions` dataclass as its ``options_type`` (validated when made, recorded in
plans). The registered forms and the registry are in :mod:`lrdlab.lowrank.methods`.
"""

from __future__ import annotations

import math
import numbers
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any, ClassVar

from torch import Tensor, nn

from lrdlab.lowrank import factorize

Info = Mapping[str, Any]


def linear_like(info: Info) -> bool:
    """A Linear, a Linear subclass (attention's ``out_proj``) or a HuggingFace ``Conv1D``: ``describe`` records a
    stride only for convs, so a layer without one computes ``x @ W.T + b``."""
    return info.get("type") == "Linear" or "stride" not in info


@dataclass(frozen=True)
class MethodOptions:
    """The options of one form (none here); a form with options subclasses it and checks them in
    ``__post_init__``."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


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
    options_type: ClassVar[type[MethodOptions]] = MethodOptions  # this form's options (a frozen dataclass)
    spectral_error: ClassVar[bool] = False  # truncating its one spectrum is exactly its weight-only error

    @property
    def n_ranks(self) -> int:
        return len(self.rank_names)

    def options(self, given: MethodOptions | Mapping[str, Any] | None = None) -> MethodOptions:
        """This form's options: the defaults (``None``), ``given`` itself, or made from a dict (a plan's JSON)."""
        kind = self.options_type
        if given is None:
            return kind()
        if isinstance(given, Mapping):
            known = {f.name for f in fields(kind)}
            unknown = sorted(set(given) - known)
            if unknown:
                raise ValueError(f"{self.name!r} has no option {unknown[0]!r}; its options are {sorted(known)}")
            return kind(**given)
        if type(given) is not kind:
            raise ValueError(f"options of {self.name!r} must be a {kind.__name__}, got {type(given).__name__}; "
                             f"give {kind.__name__}(...) or None for the defaults")
        return given

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
        """The matrices whose singular values decide each rank, one per rank (energy and VBMF ranks need them)."""
        raise ValueError(f"method {self.name!r} has no unfoldings, so energy and VBMF cannot choose its ranks; "
                         f"plan it with Ratio(...) or FixedRank(...)")

    def spectra(self, weight: Tensor) -> list[Tensor]:
        """Singular values (float64, descending) that decide each rank."""
        return [factorize.singular_values(m) for m in self.unfoldings(weight.detach())]

    def errors(self, weight: Tensor, info: Info) -> Callable[[Sequence[int]], float]:
        """``ranks → ‖W − Ŵ‖/‖W‖``, the relative error of the weight-only decomposition of ``weight`` (with the
        default options): what can be computed once is, so asking many ranks is cheap."""
        w = weight.detach()
        if self.spectral_error:  # the truncated SVD of the one unfolding: the error is the dropped energy
            s2 = self.spectra(w)[0] ** 2
            kept = (s2.cumsum(0) / s2.sum()).tolist() if float(s2.sum()) > 0 else [1.0] * len(s2)
            return lambda layer_ranks: math.sqrt(max(0.0, 1.0 - kept[min(layer_ranks[0], len(kept)) - 1]))
        norm = float(w.double().norm())

        def error(layer_ranks: Sequence[int]) -> float:
            approx = self.reconstruct(self.factorize(w, layer_ranks), info)
            return float((approx.double() - w.double()).norm()) / norm if norm else 0.0

        return error

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

    def factorize(self, weight: Tensor, layer_ranks: Sequence[int], options: MethodOptions | None = None,
                  branches: int = 1) -> dict[str, Tensor]:
        """The factor weights (shaped as the built modules' weights) approximating ``weight``; ``options``: this
        form's :attr:`options_type` (None: the defaults)."""
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
