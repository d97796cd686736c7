"""Rank maths: small pure functions, no torch modules.

Notation follows the paper: a layer maps C input channels to S output channels with a kh×kw
kernel (1×1 for Linear). "ratio" is the per-layer compression target α = params_before / params_after.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Sequence

import numpy as np

ROUNDING_MODES = ("down", "up", "nearest")


def _k2(kernel: int | Sequence[int]) -> int:
    if isinstance(kernel, int):
        return kernel * kernel
    return math.prod(kernel)


def dense_params(C: int, S: int, kernel: int | Sequence[int] = 1) -> int:
    """Weights of the original layer (bias excluded: it is kept unchanged)."""
    return C * S * _k2(kernel)


def svd_params(C: int, S: int, rank: int) -> int:
    """Weights of the 2-layer SVD form C→R→S (Linear or 1×1 conv)."""
    return rank * (C + S)


def channel_svd_params(C: int, S: int, kernel: int | Sequence[int], rank: int) -> int:
    """Weights of the 2-layer channel-SVD form: k×k conv C→R, then 1×1 R→S."""
    return rank * (C * _k2(kernel) + S)


def tucker2_params(
    C: int, S: int, kernel: int | Sequence[int], r1: int, r2: int, branches: int = 1
) -> int:
    """Weights of Tucker-2: 1×1 C→R1, k×k core R1→R2 (``branches`` groups), 1×1 R2→S."""
    return C * r1 + _k2(kernel) * r1 * r2 // branches + r2 * S


def check_ratio(ratio: float) -> None:
    if isinstance(ratio, bool) or not (isinstance(ratio, numbers.Real) and math.isfinite(ratio) and ratio > 1):
        raise ValueError(f"compression ratio must be a finite number > 1 (got {ratio!r}); 2 halves the weights")


def svd_rank_for_ratio(C: int, S: int, ratio: float) -> int:
    """Paper §1: ``R = floor(C·S / (α(C+S)))``."""
    check_ratio(ratio)
    return math.floor(C * S / (ratio * (C + S)))


def channel_svd_rank_for_ratio(C: int, S: int, kernel: int | Sequence[int], ratio: float) -> int:
    """Largest R with ``R(C·k² + S) <= C·S·k² / α``."""
    check_ratio(ratio)
    k2 = _k2(kernel)
    return math.floor(C * S * k2 / (ratio * (C * k2 + S)))


def tucker2_rank_for_ratio(
    C: int, S: int, kernel: int | Sequence[int], ratio: float, beta: float = 1.0, branches: int = 1
) -> tuple[int, int]:
    """Paper Eq. 7: positive root of ``C·R1 + β·k²·R1²/N + β·S·R1 = C·S·k²/α``, floored; R2 = floor(β·R1).

    ``branches`` (N) divides the core's weights (branched Tucker); N = 1 is the paper's formula.
    """
    check_ratio(ratio)
    if isinstance(beta, bool) or not isinstance(beta, numbers.Real) or not beta > 0:
        raise ValueError(f"beta must be a real number > 0 (got {beta!r}); R2 = β·R1, 1 makes both ranks equal")
    k2 = _k2(kernel)
    a = beta * k2 / branches
    b = C + beta * S
    c = C * S * k2 / ratio
    r1 = math.floor((-b + math.sqrt(b * b + 4 * a * c)) / (2 * a))
    return r1, math.floor(beta * r1)


def max_saving_rank(params_at: Callable[[int], int], params_before: int, upper: int) -> int:
    """Largest rank r <= ``upper`` with ``params_at(r) < params_before`` (0 if none).

    ``params_at`` must be non-decreasing in r.
    """
    lo, hi = 0, upper
    while lo < hi:  # binary search for the last r that still saves
        mid = (lo + hi + 1) // 2
        if params_at(mid) < params_before:
            lo = mid
        else:
            hi = mid - 1
    return lo


def energy_rank(singular_values: Sequence[float] | np.ndarray, energy: float) -> int:
    """Smallest rank whose leading singular values keep ``energy`` of Σσ²."""
    if isinstance(energy, bool) or not isinstance(energy, numbers.Real) or not 0 < energy <= 1:
        raise ValueError(f"energy must be in (0, 1] (got {energy}); e.g. 0.9 keeps 90% of Σσ²")
    s2 = np.asarray(singular_values, dtype=np.float64) ** 2
    total = s2.sum()
    if total == 0:
        return 1
    cumulative = np.cumsum(s2) / total
    return int(min(np.searchsorted(cumulative, energy - 1e-12) + 1, len(s2)))


def round_rank(rank: int, granularity: int, mode: str = "down", max_rank: int | None = None) -> int:
    """Round ``rank`` to a multiple of ``granularity``: never below it, never above ``max_rank``.

    ``max_rank`` is the largest usable rank (the full rank, or :func:`max_saving_rank`).
    Raises ``ValueError`` when no multiple of ``granularity`` fits.
    """
    if isinstance(granularity, bool) or not isinstance(granularity, numbers.Real) or granularity < 1 \
            or int(granularity) != granularity:
        raise ValueError(f"granularity must be a positive integer (got {granularity})")
    if mode not in ROUNDING_MODES:
        raise ValueError(f"rounding must be one of {ROUNDING_MODES} (got {mode!r})")
    if rank < 1:
        raise ValueError(f"rank must be >= 1 (got {rank})")
    g = int(granularity)
    if mode == "down":
        r = (rank // g) * g
    elif mode == "up":
        r = -(-rank // g) * g
    else:
        r = int(math.floor(rank / g + 0.5)) * g
    r = max(r, g)
    if max_rank is not None:
        ceiling = (max_rank // g) * g
        if ceiling < g:
            raise ValueError(f"no multiple of granularity {g} is <= {max_rank}, the largest usable rank")
        r = min(r, ceiling)
    return r


def _evb_objective(sigma2: float, L: int, M: int, s: np.ndarray, residual: float, xubar: float) -> float:
    H = len(s)
    alpha = L / M
    x = s**2 / (M * sigma2)
    z1 = x[x > xubar]
    z2 = x[x <= xubar]
    tau_z1 = 0.5 * (z1 - (1 + alpha) + np.sqrt((z1 - (1 + alpha)) ** 2 - 4 * alpha))
    return float(
        np.sum(z2 - np.log(z2))
        + np.sum(z1 - tau_z1)
        + np.sum(np.log((tau_z1 + 1) / z1))
        + alpha * np.sum(np.log(tau_z1 / alpha + 1))
        + residual / (M * sigma2)
        + (L - H) * np.log(sigma2)
    )


def singular_values(Y: np.ndarray) -> np.ndarray:
    """Singular values of a wide matrix ``Y`` (L <= M), descending: from the eigenvalues of the L×L Gram matrix
    ``Y Yᵀ`` (several times cheaper than an SVD of Y) when they are all accurate, i.e. the smallest is at least
    1e-8 of the largest; else (near-singular Y, e.g. an exactly low-rank matrix) from the SVD."""
    eig = np.linalg.eigvalsh(Y @ Y.T)[::-1]
    if eig[-1] >= 1e-8 * eig[0] > 0:
        return np.sqrt(eig)
    return np.linalg.svd(Y, compute_uv=False)


def vbmf_rank(matrix: np.ndarray, sigma2: float | None = None) -> int:
    """Rank chosen by empirical variational Bayes matrix factorization (Nakajima et al., 2013).

    The noise variance is estimated when ``sigma2`` is None, as the EVBMF papers and peer tools do.
    """
    from scipy.optimize import minimize_scalar

    Y = np.asarray(matrix, dtype=np.float64)
    if Y.ndim != 2:
        raise ValueError(f"VBMF needs a matrix (got shape {Y.shape})")
    if Y.shape[0] > Y.shape[1]:
        Y = Y.T
    L, M = Y.shape
    alpha = L / M
    tauubar = 2.5129 * math.sqrt(alpha)
    s = singular_values(Y)
    H = L
    residual = 0.0
    xubar = (1 + tauubar) * (1 + alpha / tauubar)
    if sigma2 is None:
        # Nakajima's reference: the largest rank kept while bounding σ² (one below ceil(L/(1+α)))
        eH_ub = int(min(math.ceil(L / (1 + alpha)) - 1, H)) - 1
        upper = (np.sum(s**2) + residual) / (L * M)
        tail = s[eH_ub + 1 :] if eH_ub + 1 < H else s[-1:]
        lower = max(tail[0] ** 2 / (M * xubar), np.mean(tail**2) / M)
        if not lower < upper:
            lower = upper * 1e-6
        sigma2 = minimize_scalar(
            _evb_objective, args=(L, M, s, residual, xubar), bounds=(lower, upper), method="bounded"
        ).x
    threshold = math.sqrt(M * sigma2 * (1 + tauubar) * (1 + alpha / tauubar))
    return int(np.sum(s > threshold))
