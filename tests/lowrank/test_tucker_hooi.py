"""lrdlab's HOOI (float32 iterations from the HOSVD start) against tensorly's partial_tucker."""

import pytest
import torch

from lrdlab.lowrank.factorize import reconstruct_tucker2, tucker2_factors


def _error(W: torch.Tensor, factors) -> float:
    return float((reconstruct_tucker2(*factors).double() - W.double()).norm() / W.double().norm())


@pytest.mark.parametrize("shape, ranks, seed", [((12, 10, 3, 3), (4, 5), 0), ((16, 8, 3, 3), (3, 6), 1),
                                                ((9, 14, 1, 3), (7, 2), 2)])
def test_hooi_matches_tensorly_and_beats_hosvd(shape, ranks, seed):
    import tensorly as tl
    from tensorly.decomposition import partial_tucker

    g = torch.Generator().manual_seed(seed)
    W = (torch.randn(shape, generator=g) * torch.linspace(2, 0.1, shape[0])[:, None, None, None]).float()
    r1, r2 = ranks
    with tl.backend_context("pytorch"):
        (core, (u_out, u_in)), _ = partial_tucker(W.double(), rank=[r2, r1], modes=[0, 1], init="svd",
                                                 n_iter_max=200, tol=1e-12)
    reference = _error(W, (u_in, core, u_out))
    ours = _error(W, tucker2_factors(W, r1, r2, "hooi", n_iter_max=100))
    assert ours <= reference + 1e-4
    one_sweep = _error(W, tucker2_factors(W, r1, r2, "hooi"))  # the default: one sweep from the HOSVD start
    assert ours <= one_sweep + 1e-7 and one_sweep <= _error(W, tucker2_factors(W, r1, r2, "hosvd")) + 1e-7
