"""Tensor maths of the decompositions: pure functions on weight tensors.

All factors are computed in float64 and returned in the weight's dtype, so a full-rank
decomposition reproduces the layer to float32 round-off.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import Tensor

TUCKER_METHODS = ("hosvd", "hooi")
TUCKER_INIT = "hooi"  # Tucker-2's default (Tucker2Options.init), by measurement: data/tucker_default_resnet50_cpu.json
TUCKER_SWEEPS = 1  # HOOI sweeps from the HOSVD start when init is "hooi" (Tucker2Options.sweeps)
GRAM32_MIN = 256  # truncated float32 layers with both sides at least this big are factorized in float32


def singular_values(matrix: Tensor) -> Tensor:
    """Singular values (descending) of a 2-D tensor, in float64."""
    return torch.linalg.svdvals(matrix.detach().double())


def svd_factors(weight: Tensor, rank: int) -> tuple[Tensor, Tensor]:
    """Truncated SVD ``W ≈ last @ first`` with √Σ split evenly (paper §1).

    ``weight`` is ``[S, C]``; returns ``first`` ``[R, C]`` (= √Σ Vᵀ) and ``last`` ``[S, R]`` (= U √Σ).
    Computed from the eigenvectors of the smaller Gram matrix (W Wᵀ or Wᵀ W), on one thread: the
    leading singular subspace is the same, the product ``last @ first`` is the orthogonal projection
    of W onto it (exact at full rank, Eckart–Young optimal when truncated), and it costs one
    min(S, C)² eigendecomposition instead of a full SVD (~20× faster for 2048×512 on 2 cores).
    """
    W = weight.detach().double()
    # A big float32 layer cut to a lower rank is factorized in float32 (Gram matrix and eigh: ~4× faster;
    # their rounding, ~1e-6, is far below the truncation error); projections and full rank stay float64.
    fast = weight.dtype == torch.float32 and min(W.shape) >= GRAM32_MIN and rank < min(W.shape)
    M = weight.detach() if fast else W
    with one_thread():
        if W.shape[0] <= W.shape[1]:  # wide: left vectors from W Wᵀ, first = Σ^-½ Uᵀ W
            U, s = _leading_eig(M @ M.T, rank)
            first = (U.T @ W) / s[:, None].clamp_min(_tiny(s)).sqrt()
            last = U * s.sqrt()
        else:  # tall: right vectors from Wᵀ W, last = W V Σ^-½
            V, s = _leading_eig(M.T @ M, rank)
            first = s.sqrt()[:, None] * V.T
            last = (W @ V) / s.clamp_min(_tiny(s)).sqrt()
    return first.to(weight.dtype), last.to(weight.dtype)


def _leading_eig(gram: Tensor, rank: int) -> tuple[Tensor, Tensor]:
    """The ``rank`` leading eigenvectors (columns) and singular values √λ of a Gram matrix, descending."""
    values, vectors = torch.linalg.eigh(gram)
    values, vectors = values.flip(0)[:rank].double(), vectors.flip(-1)[:, :rank].double()
    return vectors, values.clamp_min(0).sqrt()


def _tiny(s: Tensor) -> float:
    """A floor for dividing by singular values: directions below it carry only round-off."""
    return max(float(s.max()) * 1e-12, 1e-300) if s.numel() else 1e-300  # an all-zero weight: factors of zeros


@contextmanager
def one_thread() -> Iterator[None]:
    """One torch (LAPACK/BLAS) thread for the many small factorizations: on a shared CPU, threads that
    wait for each other made them 2–7× slower, and a single one loses little even on a quiet one."""
    before = torch.get_num_threads()
    if before != 1:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        if before != 1:
            torch.set_num_threads(before)


def leading_left_vectors(matrix: Tensor, rank: int) -> Tensor:
    """The ``rank`` leading left singular vectors of a wide float64 matrix, via its Gram matrix."""
    if matrix.shape[0] > matrix.shape[1]:  # tall: the SVD itself is the cheaper route
        return torch.linalg.svd(matrix, full_matrices=False)[0][:, :rank]
    _, vectors = torch.linalg.eigh(matrix @ matrix.T)
    return vectors.flip(-1)[:, :rank]


def mode_unfolding(weight: Tensor, mode: int) -> Tensor:
    """Mode-``mode`` unfolding of a conv weight ``[S, C, *kernel]`` (0: output channels, 1: input)."""
    return weight.movedim(mode, 0).reshape(weight.shape[mode], -1)


def tucker2_factors(
    weight: Tensor, r1: int, r2: int, method: str = "hosvd", n_iter_max: int = 1
) -> tuple[Tensor, Tensor, Tensor]:
    """Tucker-2 over the two channel modes of ``[S, C, *kernel]`` (a 1-D, 2-D or 3-D kernel).

    Returns ``u_in`` ``[C, R1]``, ``core`` ``[R2, R1, *kernel]`` and ``u_out`` ``[S, R2]`` with
    ``W ≈ core ×₀ u_out ×₁ u_in``. ``hosvd`` takes one SVD per mode; ``hooi`` refines it by
    ``n_iter_max`` sweeps of higher-order orthogonal iteration (:func:`hooi_factors`; one sweep gets
    most of HOOI's gain at well under twice HOSVD's time, see docs/accuracy.md).
    """
    if method not in TUCKER_METHODS:
        raise ValueError(f"Tucker method must be one of {TUCKER_METHODS} (got {method!r})")
    W = weight.detach().double()
    with one_thread():
        u_out = leading_left_vectors(mode_unfolding(W, 0), r2)
        u_in = leading_left_vectors(mode_unfolding(W, 1), r1)
        if method == "hooi":
            u_in, u_out = hooi_factors(weight.detach(), u_in, u_out, n_iter_max)
        core = torch.einsum("sc...,sa,cb->ab...", W, u_out, u_in)
    return u_in.to(weight.dtype), core.to(weight.dtype), u_out.to(weight.dtype)


def hooi_factors(weight: Tensor, u_in: Tensor, u_out: Tensor, n_iter_max: int = 100,
                 tol: float = 1e-6) -> tuple[Tensor, Tensor]:
    """HOOI for the two channel modes from a start (HOSVD's): each mode's factor becomes the leading
    left singular vectors of the weight projected on the other mode's factor, until the captured
    energy ``‖core‖²`` stops growing (relative change below ``tol``). A float32 weight iterates in
    float32 (Gram matrices and ``eigh``); returns float64 ``(u_in, u_out)``."""
    dtype = torch.float32 if weight.dtype == torch.float32 else torch.float64
    W = weight.to(dtype)
    u_in, u_out = u_in.to(dtype), u_out.to(dtype)
    before = 0.0
    for _ in range(n_iter_max):
        u_out = leading_left_vectors(mode_unfolding(torch.einsum("sc...,cb->sb...", W, u_in), 0), u_out.shape[1])
        projected = torch.einsum("sc...,sa->ac...", W, u_out)
        u_in = leading_left_vectors(mode_unfolding(projected, 1), u_in.shape[1])
        energy = float(torch.einsum("ac...,cb->ab...", projected, u_in).double().pow(2).sum())
        if energy - before <= tol * energy:
            break
        before = energy
    return u_in.double(), u_out.double()


def block_diagonal_core(core: Tensor, branches: int) -> Tensor:
    """Grouped-conv weight ``[R2, R1/N, *kernel]`` holding the N diagonal blocks of a Tucker core.

    The off-diagonal blocks are dropped: exact for N = 1, an approximation otherwise.
    """
    r2, r1 = core.shape[:2]
    if r1 % branches or r2 % branches:
        raise ValueError(f"ranks ({r1}, {r2}) must be multiples of the branch count {branches}")
    b1, b2 = r1 // branches, r2 // branches
    blocks = [core[g * b2 : (g + 1) * b2, g * b1 : (g + 1) * b1] for g in range(branches)]
    return torch.cat(blocks, dim=0)


def reconstruct_tucker2(u_in: Tensor, core: Tensor, u_out: Tensor) -> Tensor:
    """``core ×₀ u_out ×₁ u_in``: the dense ``[S, C, *kernel]`` weight a Tucker-2 triple stands for."""
    return torch.einsum("ab...,sa,cb->sc...", core, u_out, u_in)


def tucker2_kept_energy(weight: Tensor) -> Tensor:
    """``E[r2, r1]``: energy ‖W‖² kept by the HOSVD Tucker-2 truncation at ranks (r2, r1) (index 0 = rank 0).

    With complete orthonormal channel bases the rotated core G has ‖G‖ = ‖W‖, and truncating to the
    leading (r2, r1) block is an orthogonal projection, so the relative error is
    ``sqrt(1 − E[r2, r1] / ‖W‖²)``: every (r2, r1) answered from one table.
    """
    W = weight.detach().double()
    with one_thread():
        u_out = leading_left_vectors(mode_unfolding(W, 0), W.shape[0])
        u_in = leading_left_vectors(mode_unfolding(W, 1), W.shape[1])
    core = torch.einsum("sc...,sa,cb->ab...", W, u_out, u_in)
    block = (core ** 2).reshape(core.shape[0], core.shape[1], -1).sum(dim=2)
    table = torch.zeros(block.shape[0] + 1, block.shape[1] + 1, dtype=torch.float64)
    table[1:, 1:] = block.cumsum(0).cumsum(1)
    return table
