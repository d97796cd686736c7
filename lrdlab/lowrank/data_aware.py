"""The per-layer maths of data-aware decomposition: output-error-optimal factors from input statistics.

Each layer's output error on its calibration inputs ``X`` (patches for a conv), ``‖W X − W' X‖²``, needs
only the input second-moment matrix ``Σ = X Xᵀ / n`` (see :mod:`lrdlab.lowrank.calibration` for the
methods cited and the network walk). Pure functions of tensors, float64 inside.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lrdlab.lowrank import conv_kinds
from lrdlab.lowrank.hf import is_conv1d

DEFAULT_RIDGE = 1e-3


def ridge_value(cov: Tensor, ridge: float = DEFAULT_RIDGE) -> float:
    """``ridge · trace / d`` (``ridge`` where the trace is not positive): the ``λ`` :func:`add_ridge` adds."""
    scale = float(cov.diagonal().mean()) if cov.shape[0] else 0.0
    return ridge * (scale if scale > 0 else 1.0)


def add_ridge(cov: Tensor, ridge: float = DEFAULT_RIDGE) -> Tensor:
    """``cov + ridge · (trace / d) · I``: a relative ridge that makes a second-moment matrix positive definite."""
    out = cov.clone()
    out.diagonal().add_(ridge_value(cov, ridge))
    return out


def reduced_rank_regression(weight: Tensor, cov: Tensor, rank: int) -> tuple[Tensor, Tensor]:
    """Rank-``rank`` ``last @ first`` minimising ``tr((W − last·first) Σ (W − last·first)ᵀ)`` (SVD-LLM).

    ``weight`` ``[S, D]``, ``cov`` ``[D, D]`` positive definite (add a ridge first). With ``L`` the
    Cholesky factor of ``Σ`` and ``W L = U S Vᵀ``: ``first = √S_r V_rᵀ L⁻¹``, ``last = U_r √S_r``.
    Returns float64 ``first`` ``[R, D]`` and ``last`` ``[S, R]``.
    """
    W, cov = weight.double(), cov.double()
    L = torch.linalg.cholesky(cov)
    U, s, Vh = torch.linalg.svd(W @ L, full_matrices=False)
    root = s[:rank].sqrt()
    first = torch.linalg.solve_triangular(L, root[:, None] * Vh[:rank], upper=False, left=False)
    return first, U[:, :rank] * root


def output_error(weight: Tensor, approx: Tensor, cov: Tensor) -> float:
    """Mean squared output error ``tr((W − W') Σ (W − W')ᵀ)`` of ``W'`` for inputs with second moment ``Σ``."""
    D = (weight - approx).double()
    return float(torch.einsum("sd,de,se->", D, cov.double(), D))


def channel_covariance(patch_cov: Tensor, channels: int) -> Tensor:
    """Input-channel covariance ``[C, C]``: the mean of a ``[C·k², C·k²]`` patch covariance's per-tap blocks."""
    taps = patch_cov.shape[0] // channels
    blocks = patch_cov.reshape(channels, taps, channels, taps)
    return blocks.diagonal(dim1=1, dim2=3).mean(-1)


def whitened_tucker2(weight: Tensor, patch_cov: Tensor, r1: int, r2: int) -> tuple[Tensor, Tensor, Tensor]:
    """Data-aware Tucker-2 of a conv weight ``[S, C, *kernel]`` from its input patch covariance ``[C·k², C·k²]``
    (``k²``: the kernel's taps, 1-D, 2-D or 3-D).

    Input factor: leading left singular vectors of ``Lᵀ W₍₁₎`` mapped back by ``L⁻ᵀ`` (``L``: Cholesky
    factor of the channel covariance). Core and output factor: reduced-rank regression of ``W X`` on the
    projected patches. Returns float64 ``first`` ``[R1, C]``, ``core`` ``[R2, R1, *kernel]``, ``last`` ``[S, R2]``.
    """
    W, cov = weight.double(), patch_cov.double()
    S, C, kernel = W.shape[0], W.shape[1], tuple(W.shape[2:])
    taps = math.prod(kernel)
    Lc = torch.linalg.cholesky(channel_covariance(cov, C))
    unfolding = W.transpose(0, 1).reshape(C, -1)
    U = torch.linalg.svd(Lc.T @ unfolding, full_matrices=False)[0][:, :r1]
    first = torch.linalg.solve_triangular(Lc.T, U, upper=True).T  # Uᵀ L⁻¹: rows span the kept input space
    cov4 = cov.reshape(C, taps, C, taps)
    cov_z = torch.einsum("ac,ctdu,bd->atbu", first, cov4, first).reshape(r1 * taps, r1 * taps)
    cross = torch.einsum("sct,ctdu,bd->sbu", W.reshape(S, C, taps), cov4, first).reshape(S, r1 * taps)
    cov_z = (cov_z + cov_z.T) / 2
    regression = torch.linalg.solve(cov_z, cross.T).T  # best unconstrained core·last given ``first``
    core, last = reduced_rank_regression(regression, cov_z, r2)
    return first, core.reshape(r2, r1, *kernel), last


def _padded(module: nn.Module, x: Tensor) -> tuple[Tensor, tuple[int, ...]]:
    """``x`` with what the conv pads applied explicitly where unfolding cannot (TF "same", a string padding, a
    non-zero padding mode), and the zero padding left for the unfolding to add."""
    assert isinstance(module, nn.modules.conv._ConvNd)
    dims = len(module.kernel_size)
    if conv_kinds.dynamic_same(module):
        x = conv_kinds.pad_same(x, conv_kinds.same_pad_args(list(module.kernel_size), list(module.stride),
                                                            list(module.dilation)))
    padding = module.padding
    if isinstance(padding, str):  # "valid": none; "same": d·(k−1) in all, the odd one on the far side (as torch)
        totals = [0 if padding == "valid" else d * (k - 1) for k, d in zip(module.kernel_size, module.dilation)]
        pads = [p for t in reversed(totals) for p in (t // 2, t - t // 2)]
        return F.pad(x, pads, mode=module.padding_mode if module.padding_mode != "zeros" else "constant"), (0,) * dims
    if module.padding_mode != "zeros" or dims != 2:
        pads = [p for p in reversed(padding) for _ in range(2)]
        return F.pad(x, pads, mode=module.padding_mode if module.padding_mode != "zeros" else "constant"), (0,) * dims
    return x, tuple(padding)


def _patches(module: nn.Module, x: Tensor, step: int = 1) -> Tensor:
    """im2col patches ``[B, C·k…, L]`` of a 1-D, 2-D or 3-D conv's input (its padding and padding mode applied),
    rows ordered as the weight's ``[C, *kernel]`` flattening.

    ``step > 1`` keeps only every ``step``-th output position in each direction.
    """
    assert isinstance(module, nn.modules.conv._ConvNd)
    x, padding = _padded(module, x)
    stride = tuple(st * step for st in module.stride)
    if len(module.kernel_size) == 2:
        return F.unfold(x, module.kernel_size, dilation=module.dilation, padding=padding, stride=stride)
    dims = len(module.kernel_size)
    for axis, (k, d, st) in enumerate(zip(module.kernel_size, module.dilation, stride)):
        x = x.unfold(2 + axis, (k - 1) * d + 1, st)[..., ::d]  # windows of this axis go last
    positions = x.shape[2:2 + dims]
    order = [0, 1, *range(2 + dims, 2 + 2 * dims), *range(2, 2 + dims)]  # [B, C, *kernel, *positions]
    return x.permute(order).reshape(x.shape[0], -1, math.prod(positions))


def layer_inputs(module: nn.Module, x: Tensor) -> Tensor:
    """The rows a layer multiplies by its weight matrix: features (Linear) or im2col patches (a conv)."""
    if isinstance(module, nn.Linear):
        return x.reshape(-1, x.shape[-1])
    assert isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d)), f"a Linear or conv, not {type(module).__name__}"
    cols = _patches(module, x)
    return cols.transpose(1, 2).reshape(-1, cols.shape[1])


ROWS_PER_DIMENSION = 128  # conv input rows kept per covariance dimension before positions are subsampled


def position_step(rows: int, dim: int) -> int:
    """Grid step (1 or 2) over output positions: 2 keeps a quarter of the patches where ``rows`` are plenty."""
    return 2 if rows >= 4 * ROWS_PER_DIMENSION * dim else 1


def input_rows(module: nn.Module, x: Tensor, batches: int = 1) -> Tensor:
    """The layer's input rows for one batch as float64 columns ``[D, N]`` (patches for a conv).

    Where all ``batches`` (of this size) give ≥ 4 × 128 rows per covariance dimension (e.g. ResNet's
    first stage on 512 images), a conv keeps every second output position in each direction only: a
    4× cheaper estimate of the same second moments. Patches are cut in the input's dtype (an exact copy).
    """
    if isinstance(module, nn.Linear) or is_conv1d(module):  # HF's Conv1D multiplies the last dimension too
        return x.reshape(-1, x.shape[-1]).T.double()
    assert isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d)), f"a Linear or conv, not {type(module).__name__}"
    positions = math.prod(x.shape[2:]) // math.prod(module.stride)  # about the output size
    dim = module.in_channels * math.prod(module.kernel_size)
    cols = _patches(module, x, step=position_step(batches * x.shape[0] * positions, dim))
    return cols.transpose(0, 1).reshape(dim, -1).double()


def input_gram(module: nn.Module, x: Tensor, batches: int = 1) -> tuple[Tensor, int]:
    """``(Xᵀ X, rows)`` of the layer's input rows for one batch, computed in float64 (see :func:`input_rows`)."""
    cols = input_rows(module, x, batches)
    return cols @ cols.T, cols.shape[1]


def corrected_weight(weight: Tensor, gram: Tensor, cross: Tensor,
                     ridge: float = DEFAULT_RIDGE) -> tuple[Tensor, Tensor]:
    """The unconstrained best map of the decomposed network's inputs ``X̂`` onto the original output ``W X``.

    ``weight`` ``[S, D]``; ``gram`` ``= X̂ X̂ᵀ / n`` and ``cross`` ``= X X̂ᵀ / n`` (``X``: the original
    network's inputs to this layer, ``X̂``: the decomposed network's, row by row). Minimises
    ``‖W X − M X̂‖² / n + λ ‖M − W‖²`` (``λ``: :func:`add_ridge`'s, so ``M = W`` when ``X̂ = X``):
    ``M = W (cross + λ I) (gram + λ I)⁻¹``. Returns ``(M, gram + λ I)``; because
    ``‖W X − A B X̂‖² = const + tr((M − A B) (gram + λ I) (M − A B)ᵀ)``, any data-aware fit of ``M``
    under that second moment (:func:`reduced_rank_regression`, :func:`whitened_tucker2`) is the
    reduced-rank fit of the original output.
    """
    gram = gram.double()
    lam = ridge_value(gram, ridge)
    cov = add_ridge(gram, ridge)
    W = weight.double()
    target = (W @ cross.double()).add_(W, alpha=lam)  # W (cross + λ I), without a second D × D matrix
    factor, info = torch.linalg.cholesky_ex(cov)  # half the work of an LU solve; a ridged Gram is positive definite
    if int(info) == 0:
        return torch.cholesky_solve(target.T, factor).T, cov
    return torch.linalg.solve(cov, target.T).T, cov
