"""CP (canonical polyadic) decomposition of k×k convs: one class and its registration, nothing else.

A weight ``[S, C, kh, kw]`` is approximated by R rank-one terms ``Σ_r a_r ⊗ b_r ⊗ v_r ⊗ h_r``
(tensorly's ``parafac``, ALS from an SVD start) and run as four convs: a 1×1 conv C→R (``first``), a
depthwise kh×1 conv (``vertical``), a depthwise 1×kw conv (``horizontal``) and a 1×1 conv R→S
(``last``, with the bias), as in Lebedev et al. (2015) and tltorch's CP convolution. Strides,
dilations and padding are split between the two depthwise convs. Importing :mod:`lrdlab.lowrank`
registers it as ``"cp"``.
"""

from __future__ import annotations

import math
import warnings
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from lrdlab.lowrank import factorize, ranks
from lrdlab.lowrank.methods import Info, Method, MethodOptions, linear_like, register

N_ITER = 200  # ALS sweeps of parafac (it stops earlier once the fit changes by less than its tolerance)


def _axis(info: Info, key: str, axis: int, rest: int) -> Any:
    """The stride/padding/dilation of one spatial axis, as a pair for a kh×1 (axis 0) or 1×kw (axis 1) conv."""
    value = info[key]
    if isinstance(value, str):  # padding "same" / "valid" applies to each axis alike
        return value
    return (value[0], rest) if axis == 0 else (rest, value[1])


def _depthwise(rank: int, info: Info, axis: int) -> nn.Conv2d:
    kh, kw = info["kernel_size"]
    return nn.Conv2d(rank, rank, (kh, 1) if axis == 0 else (1, kw), groups=rank, bias=False,
                     stride=_axis(info, "stride", axis, 1), padding=_axis(info, "padding", axis, 0),
                     dilation=_axis(info, "dilation", axis, 1), padding_mode=info["padding_mode"])


def _als_terms(w: np.ndarray, r: int) -> tuple[np.ndarray, list[np.ndarray]]:
    """Rank-r CP of ``w`` by tensorly's ``parafac`` (ALS from an SVD start, deterministic)."""
    import tensorly as tl
    from tensorly.decomposition import parafac

    with warnings.catch_warnings():  # an SVD start wider than a mode is filled at random: expected here
        warnings.simplefilter("ignore", UserWarning)
        lam, factors = parafac(tl.tensor(w), rank=r, init="svd", n_iter_max=N_ITER, tol=1e-10, random_state=0)
    return lam, list(factors)


def _fiber_terms(w: np.ndarray, r: int) -> tuple[np.ndarray, list[np.ndarray]]:
    """An exact CP with one term per fiber along the largest mode (unit vectors on the other three modes):
    ``prod(shape) / max(shape)`` terms reproduce ``w``."""
    largest = int(np.argmax(w.shape))
    others = [axis for axis in range(w.ndim) if axis != largest]
    fibers = np.moveaxis(w, largest, 0).reshape(w.shape[largest], -1)
    n = fibers.shape[1]
    factors = [np.zeros((size, r)) for size in w.shape]  # r == n at full rank
    for index, axis in zip(np.indices([w.shape[a] for a in others]).reshape(len(others), -1), others):
        factors[axis][index, np.arange(n)] = 1.0
    factors[largest][:, :n] = fibers
    return np.ones(r), factors


class CP(Method):
    """k×k conv C→S as 1×1 C→R, depthwise kh×1, depthwise 1×kw, 1×1 R→S (rank-R CP of the weight)."""

    name = "cp"
    description = "CP: 1×1 conv C→R, depthwise kh×1 and 1×kw convs, 1×1 conv R→S"
    factor_names = ("first", "vertical", "horizontal", "last")
    rank_names = ("CP rank (R)",)
    regular_factor = "last"
    sequential_order = ("last", "first", "vertical", "horizontal")

    def unsupported(self, info: Info) -> str | None:
        if linear_like(info):
            return f"a {info['type']} layer is decomposed by 'svd', not 'cp'"
        if len(info["kernel_size"]) != 2:
            return (f"'cp' is for 2-D convs (a {info['type']} has a {len(info['kernel_size'])}-D kernel); "
                    f"use 'tucker2', 'channel_svd' or 'input_svd'")
        if tuple(info["kernel_size"]) == (1, 1):
            return "'cp' is for k×k convs; a 1×1 conv is decomposed by 'svd'"
        return None

    def full_ranks(self, info: Info) -> list[int]:
        """The largest CP rank any weight of this shape needs: the product of all its sizes but the largest."""
        dims = [info["out_channels"], info["in_channels"], *info["kernel_size"]]
        return [math.prod(dims) // max(dims)]

    def params(self, info: Info, layer_ranks: Sequence[int], branches: int = 1) -> int:
        kh, kw = info["kernel_size"]
        return int(layer_ranks[0]) * (info["in_channels"] + kh + kw + info["out_channels"])

    def rank_for_ratio(self, info: Info, ratio: float, beta: float = 1.0, branches: int = 1) -> list[int]:
        ranks.check_ratio(ratio)
        kh, kw = info["kernel_size"]
        dense = info["in_channels"] * info["out_channels"] * kh * kw
        return [math.floor(dense / (ratio * (info["in_channels"] + kh + kw + info["out_channels"])))]

    def unfoldings(self, weight: Tensor) -> list[Tensor]:
        """The output-channel unfolding: its spectrum bounds what any rank R can keep (the CP rank is at least
        each unfolding's rank)."""
        return [factorize.mode_unfolding(weight, 0)]

    def build(self, info: Info, layer_ranks: Sequence[int], branches: int = 1) -> OrderedDict[str, nn.Module]:
        (r,) = layer_ranks
        return OrderedDict(first=nn.Conv2d(info["in_channels"], r, 1, bias=False),
                           vertical=_depthwise(r, info, 0), horizontal=_depthwise(r, info, 1),
                           last=nn.Conv2d(r, info["out_channels"], 1, bias=info["bias"]))

    def factorize(self, weight: Tensor, layer_ranks: Sequence[int], options: MethodOptions | None = None,
                  branches: int = 1) -> dict[str, Tensor]:
        """Rank-R CP by alternating least squares (tensorly ``parafac``, SVD start, deterministic); at full rank
        the exact fiber construction instead."""
        (r,) = layer_ranks
        w = weight.detach().to("cpu", torch.float64).numpy()
        exact = r >= math.prod(w.shape) // max(w.shape)  # full rank: exact by construction, no iteration
        lam, (out_f, in_f, v_f, h_f) = _fiber_terms(w, int(r)) if exact else _als_terms(w, int(r))
        # spread each term's scale evenly over its four factors, so no factor is far larger than the others
        out_t, in_t, v_t, h_t = (torch.from_numpy(f.copy()) for f in (out_f, in_f, v_f, h_f))
        norms = [f.norm(dim=0).clamp_min(1e-300) for f in (out_t, in_t, v_t, h_t)]
        scale = (torch.from_numpy(lam.copy()) * math.prod(norms)).abs() ** 0.25
        sign = torch.sign(torch.from_numpy(lam.copy())) * 1.0
        out_t, in_t, v_t, h_t = (f / n * scale for f, n in zip((out_t, in_t, v_t, h_t), norms))
        like = {"dtype": weight.dtype, "device": weight.device}
        return {"first": in_t.T[:, :, None, None].to(**like), "vertical": v_t.T[:, None, :, None].to(**like),
                "horizontal": h_t.T[:, None, None, :].to(**like), "last": (out_t * sign)[:, :, None, None].to(**like)}

    def reconstruct(self, factors: Mapping[str, Tensor], info: Info) -> Tensor:
        return torch.einsum("sr,ri,rj,rc->scij", factors["last"][:, :, 0, 0], factors["vertical"][:, 0, :, 0],
                            factors["horizontal"][:, 0, 0, :], factors["first"][:, :, 0, 0])


CP_METHOD = register(CP())
