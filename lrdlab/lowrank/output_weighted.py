"""Two-sided whitened low-rank fit: output channels weighted by the loss's sensitivity (pure maths, float64).

SVD-LLM minimises a layer's output error on its inputs, ``‖(W − W') X‖²`` (``Σ = X Xᵀ / n = L Lᵀ``): every
output channel counts the same, so errors are in the units of that layer's activations and layers cannot be
compared. Weighting each output channel by the loss's curvature along it, ``d_c = E[(∂ℓ/∂y_c)²]`` (the
empirical Fisher of the layer's outputs, :mod:`lrdlab.lowrank.fisher`), the error

    ``tr(D (W − W') Σ (W − W')ᵀ) = ‖D^{1/2} (W − W') L‖²_F``

estimates, to second order, the loss increase the truncation causes (a Kronecker-factored Fisher with a
diagonal output factor, as K-FAC factors it), in one unit for every layer. It has a closed form: with
``D^{1/2} W L = U S Vᵀ``, the best rank-``r`` ``W'`` is ``D^{-1/2} U_r S_r V_rᵀ L⁻¹``, and the discarded
``Σ_{i>r} σᵢ²`` is its error (Eckart–Young in the weighted norm). ``D`` may also be a full positive-definite
output second moment ``G = E[g gᵀ]`` (then ``D^{1/2}`` is ``Rᵀ`` with ``G = R Rᵀ``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


def _left_factor(out_weight: Tensor | None, rows: int) -> Tensor | None:
    """``Rᵀ`` with ``Rᵀ R = G`` (a full ``[S, S]`` weight), the square roots of a diagonal ``[S]``, None for none."""
    if out_weight is None:
        return None
    g = out_weight.double()
    if g.ndim == 1:
        if g.shape[0] != rows or not bool((g > 0).all()):
            raise ValueError(f"output weights must be {rows} positive numbers, one per output channel (got shape "
                             f"{tuple(g.shape)}, min {float(g.min()) if g.numel() else 'n/a'}); add a ridge first")
        return g.sqrt()
    if g.shape != (rows, rows):
        raise ValueError(f"a full output weight must be [{rows}, {rows}] (got {tuple(g.shape)})")
    return torch.linalg.cholesky(g).T  # G = R Rᵀ with R lower: Rᵀ is the factor ‖Rᵀ Δ L‖² needs


@dataclass(frozen=True, eq=False)
class WeightedSVD:
    """The SVD of ``D^{1/2} W L`` mapped back: ``W ≈ left[:, :r] @ diag(s[:r]) @ right[:r]`` at every rank ``r``
    (``left = D^{-1/2} U``, ``right = Vᵀ L⁻¹``); ``s``: the weighted singular values, descending."""

    left: Tensor
    s: Tensor
    right: Tensor

    def factors(self, rank: int) -> tuple[Tensor, Tensor]:
        """``(first [r, D], last [S, r])`` of the rank-``rank`` fit, ``√σ`` on each side (as SVD-LLM splits it)."""
        if not 1 <= rank <= len(self.s):
            raise ValueError(f"rank must be in [1, {len(self.s)}] (got {rank})")
        root = self.s[:rank].sqrt()
        return root[:, None] * self.right[:rank], self.left[:, :rank] * root

    def loss(self, rank: int) -> float:
        """The weighted error at ``rank``: ``Σ_{i>rank} σᵢ²``."""
        return float((self.s[rank:] ** 2).sum())


def weighted_svd(weight: Tensor, cov: Tensor, out_weight: Tensor | None = None) -> WeightedSVD:
    """:class:`WeightedSVD` of ``weight`` ``[S, D]`` for inputs of second moment ``cov`` ``[D, D]`` (positive
    definite: add a ridge first) and output weights ``out_weight`` (``[S]`` positive, ``[S, S]`` positive
    definite, or None: plain SVD-LLM)."""
    W = weight.double().reshape(weight.shape[0], -1)
    L = torch.linalg.cholesky(cov.double())
    left = _left_factor(out_weight, W.shape[0])
    if left is None:
        A = W @ L
    elif left.ndim == 1:
        A = left[:, None] * W @ L
    else:
        A = left @ W @ L
    U, s, Vh = torch.linalg.svd(A, full_matrices=False)
    right = torch.linalg.solve_triangular(L, Vh, upper=False, left=False)  # Vᵀ L⁻¹
    if left is None:
        back = U
    elif left.ndim == 1:
        back = U / left[:, None]
    else:
        back = torch.linalg.solve_triangular(left, U, upper=True)  # (Rᵀ)⁻¹ U
    return WeightedSVD(back, s, right)


def weighted_error(weight: Tensor, approx: Tensor, cov: Tensor, out_weight: Tensor | None = None) -> float:
    """``tr(D (W − W') Σ (W − W')ᵀ)`` (``D``: diagonal ``[S]``, full ``[S, S]`` or None for the identity)."""
    delta = (weight - approx).double().reshape(weight.shape[0], -1)
    inner = delta @ cov.double() @ delta.T
    if out_weight is None:
        return float(inner.trace())
    g = out_weight.double()
    return float((g * inner.diagonal()).sum()) if g.ndim == 1 else float((g * inner).sum())
