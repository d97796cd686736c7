"""Two-sided (output-Fisher × input) whitened SVD: the pure maths of lrdlab.lowrank.output_weighted."""

from __future__ import annotations

import pytest
import torch

from lrdlab.lowrank.data_aware import add_ridge, reduced_rank_regression
from lrdlab.lowrank.output_weighted import weighted_error, weighted_svd


def _problem(seed: int, out: int = 12, inp: int = 9, rows: int = 200):
    gen = torch.Generator().manual_seed(seed)
    W = torch.randn(out, inp, generator=gen, dtype=torch.float64)
    scale = torch.linspace(0.1, 3, inp, dtype=torch.float64)[:, None]
    X = torch.randn(inp, rows, generator=gen, dtype=torch.float64) * scale
    cov = add_ridge(X @ X.T / rows)
    d = torch.rand(out, generator=gen, dtype=torch.float64) ** 3 + 1e-3  # very unequal channel weights
    A = torch.randn(out, 3 * out, generator=gen, dtype=torch.float64)
    G = A @ A.T / (3 * out) + 1e-3 * torch.eye(out, dtype=torch.float64)
    return W, cov, d, G


@pytest.mark.parametrize("which", ["plain", "diagonal", "full"])
def test_full_rank_is_exact_and_the_discarded_values_are_the_error(which):
    W, cov, d, G = _problem(0)
    g = {"plain": None, "diagonal": d, "full": G}[which]
    svd = weighted_svd(W, cov, g)
    first, last = svd.factors(len(svd.s))
    torch.testing.assert_close(last @ first, W, rtol=0, atol=1e-10)
    for rank in (1, 4, 8):
        first, last = svd.factors(rank)
        assert weighted_error(W, last @ first, cov, g) == pytest.approx(svd.loss(rank), rel=1e-9)


def test_plain_weighting_is_svd_llm():
    W, cov, _, _ = _problem(1)
    first, last = weighted_svd(W, cov).factors(5)
    ref_first, ref_last = reduced_rank_regression(W, cov, 5)
    torch.testing.assert_close(last @ first, ref_last @ ref_first, rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("which", ["diagonal", "full"])
def test_weighted_fit_is_never_worse_than_svd_llm_on_the_weighted_objective(seed, which):
    W, cov, d, G = _problem(seed)
    g = d if which == "diagonal" else G
    for rank in range(1, 9):
        first, last = weighted_svd(W, cov, g).factors(rank)
        ref_first, ref_last = reduced_rank_regression(W, cov, rank)
        ours = weighted_error(W, last @ first, cov, g)
        svd_llm = weighted_error(W, ref_last @ ref_first, cov, g)
        assert ours <= svd_llm * (1 + 1e-9)
    # with very unequal weights the gain is real somewhere, not only a tie
    first, last = weighted_svd(W, cov, g).factors(3)
    ref_first, ref_last = reduced_rank_regression(W, cov, 3)
    assert weighted_error(W, last @ first, cov, g) < 0.99 * weighted_error(W, ref_last @ ref_first, cov, g)


def test_uniform_output_weights_change_nothing_but_the_scale():
    W, cov, _, _ = _problem(2)
    plain, scaled = weighted_svd(W, cov), weighted_svd(W, cov, torch.full((W.shape[0],), 4.0, dtype=torch.float64))
    torch.testing.assert_close(scaled.s, 2 * plain.s)
    f1, l1 = plain.factors(4)
    f2, l2 = scaled.factors(4)
    torch.testing.assert_close(l2 @ f2, l1 @ f1)


def test_bad_weights_and_ranks_are_refused():
    W, cov, d, _ = _problem(3)
    with pytest.raises(ValueError, match="positive"):
        weighted_svd(W, cov, -d)
    with pytest.raises(ValueError, match="one per output channel"):
        weighted_svd(W, cov, d[:-1])
    with pytest.raises(ValueError, match=r"\[12, 12\]"):
        weighted_svd(W, cov, torch.eye(5, dtype=torch.float64))
    with pytest.raises(ValueError, match="rank must be"):
        weighted_svd(W, cov, d).factors(0)
