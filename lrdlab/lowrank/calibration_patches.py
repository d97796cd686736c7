"""Patch second moments of a stride-1 conv without im2col: one product per kernel offset, not per tap pair.

A k×k conv's input patches hold k² shifted copies of the input, so ``Σ patches(x) patches(y)ᵀ`` has
(k²)² channel blocks but only (2k−1)² distinct shifts between them: the block of taps ``(a, b)`` and
``(a', b')`` sums ``x[c, r, s] · y[d, r + a' − a, s + b' − b]`` over the rows and columns tap ``(a, b)``
reads. Those sets differ only by a few rows (columns) at the borders, so each shift's sum is taken once per
band of rows × band of columns and the blocks are assembled from the bands. Exact (float64 round-off);
for a 3×3 conv 25 instead of 81 ``C × C`` products over the positions.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lrdlab.lowrank import conv_kinds


def shift_moment_applies(module: nn.Module, step: int) -> bool:
    """Whether :func:`patch_moment` gives this layer's patch moments: a dense, stride-1, undilated Conv2d
    with zero padding given as numbers, every output position kept (``step`` 1) and a kernel larger than 1×1."""
    return (isinstance(module, nn.Conv2d) and step == 1 and module.groups == 1 and module.stride == (1, 1)
            and module.dilation == (1, 1) and module.padding_mode == "zeros"
            and not isinstance(module.padding, str) and module.kernel_size != (1, 1)
            and not conv_kinds.dynamic_same(module))  # timm's Conv2dSame pads at run time, not by module.padding


def _bands(size: int, kernel: int, pad: int) -> tuple[list[tuple[int, int]], Tensor]:
    """Row bands of an input of ``size`` rows, and which bands each of the ``kernel`` taps reads ([kernel, bands])."""
    out = size + 2 * pad - kernel + 1
    reads = [(max(0, a - pad), min(size, a - pad + out)) for a in range(kernel)]
    cuts = sorted({0, size, *(lo for lo, _ in reads), *(hi for _, hi in reads)})
    bands = [(lo, hi) for lo, hi in zip(cuts, cuts[1:]) if hi > lo]
    mask = torch.tensor([[float(lo <= b0 and b1 <= hi) for b0, b1 in bands] for lo, hi in reads], dtype=torch.float64)
    return bands, mask


def patch_moment(module: nn.Conv2d, x: Tensor, y: Tensor) -> Tensor:
    """``Σ patches(x) patches(y)ᵀ`` (float64 ``[C·kh·kw, C·kh·kw]``, ordered as ``F.unfold``) for a layer where
    :func:`shift_moment_applies`; ``x`` and ``y`` are two inputs of the same shape ``[B, C, H, W]`` (``y is x``:
    the Gram matrix, from half the shifts)."""
    kh, kw = module.kernel_size
    assert not isinstance(module.padding, str)  # shift_moment_applies
    ph, pw = module.padding
    C, H, W = x.shape[1:]
    xc = x.detach().double().transpose(0, 1)  # [C, B, H, W]
    yc = F.pad(y.detach().double(), (kw - 1, kw - 1, kh - 1, kh - 1)).transpose(0, 1)
    rows, row_mask = _bands(H, kh, ph)
    cols, col_mask = _bands(W, kw, pw)
    same = y is x  # a Gram matrix: the shift −Δ gives the transposed blocks of Δ
    x_bands = [[xc[:, :, r0:r1, c0:c1].reshape(C, -1) for c0, c1 in cols] for r0, r1 in rows]
    out = torch.zeros(C, kh, kw, C, kh, kw, dtype=torch.float64, device=x.device)
    for dr in range(0 if same else -(kh - 1), kh):
        for ds in range(-(kw - 1), kw):
            if same and dr == 0 and ds < 0:
                continue
            sums = torch.stack([torch.stack([  # [row bands, col bands, C, C]
                x_bands[i][j] @ yc[:, :, r0 + dr + kh - 1:r1 + dr + kh - 1,
                                   c0 + ds + kw - 1:c1 + ds + kw - 1].reshape(C, -1).T
                for j, (c0, c1) in enumerate(cols)]) for i, (r0, r1) in enumerate(rows)])
            blocks = torch.einsum("ai,bj,ijcd->abcd", row_mask, col_mask, sums)
            for a in range(max(0, -dr), min(kh, kh - dr)):
                for b in range(max(0, -ds), min(kw, kw - ds)):
                    out[:, a, b, :, a + dr, b + ds] = blocks[a, b]
                    if same:
                        out[:, a + dr, b + ds, :, a, b] = blocks[a, b].T
    out = out.reshape(C * kh * kw, C * kh * kw)
    return symmetric(out) if same else out


def symmetric(gram: Tensor) -> Tensor:
    """``(G + Gᵀ) / 2``: exactly symmetric on every BLAS path (a product ``X Xᵀ`` need not be, bit for bit)."""
    return (gram + gram.T) / 2
