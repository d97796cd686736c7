"""The Gram-based truncated SVD: Eckart–Young optimal on big float32 layers (its fast path), exact at full rank."""

import pytest
import torch

from lrdlab.lowrank import factorize


@pytest.mark.parametrize("shape", [(300, 700), (700, 300)])
def test_fast_path_is_eckart_young_optimal(shape):
    torch.manual_seed(0)
    W = torch.randn(*shape) * torch.logspace(0, -2, shape[1])  # a decaying spectrum, float32
    r = min(shape) // 2
    first, last = factorize.svd_factors(W, r)
    assert first.shape == (r, shape[1]) and last.shape == (shape[0], r) and first.dtype == torch.float32
    s = torch.linalg.svdvals(W.double())
    err = torch.linalg.matrix_norm(W.double() - last.double() @ first.double())
    assert err == pytest.approx(s[r:].square().sum().sqrt().item(), rel=1e-6)
    # √Σ split evenly: both factors carry the square roots of the kept singular values
    assert torch.allclose(torch.linalg.svdvals(first.double()), s[:r].sqrt(), rtol=1e-4)
    assert torch.allclose(torch.linalg.svdvals(last.double()), s[:r].sqrt(), rtol=1e-4)


def test_full_rank_of_a_big_float32_layer_is_exact():
    torch.manual_seed(1)
    W = torch.randn(300, 500)
    first, last = factorize.svd_factors(W, 300)
    rel = torch.linalg.matrix_norm(W.double() - last.double() @ first.double()) / torch.linalg.matrix_norm(W.double())
    assert rel < 1e-6


def test_rank_deficient_weights_do_not_blow_up():
    torch.manual_seed(2)
    W = (torch.randn(40, 3) @ torch.randn(3, 60)).double()  # rank 3
    first, last = factorize.svd_factors(W, 10)
    assert torch.isfinite(first).all() and torch.isfinite(last).all()
    assert torch.allclose(last @ first, W, atol=1e-8)


def test_factorization_runs_on_one_thread_and_restores_the_setting():
    before = torch.get_num_threads()
    seen = []
    with factorize.one_thread():
        seen.append(torch.get_num_threads())
    assert seen == [1] and torch.get_num_threads() == before


def test_an_all_zero_weight_gives_zero_factors_not_nan():
    """A zero-initialised classifier (torchvision's ViT head) decomposes to zeros, not 0/0."""
    from lrdlab.lowrank.factorize import svd_factors

    for shape in ((3, 16), (16, 3)):
        first, last = svd_factors(torch.zeros(shape), 2)
        assert torch.isfinite(first).all() and torch.isfinite(last).all()
        assert torch.count_nonzero(last @ first) == 0


def test_decompose_on_two_threads_gives_the_same_model_and_restores_the_threads():
    from torchvision.models import resnet18

    from lrdlab import Layers, Ratio, decompose, make_plan

    torch.manual_seed(0)
    model = resnet18().eval()
    plan = make_plan(model, Ratio(2), Layers(exclude=["conv1"]))
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = decompose(model, plan, progress=False)
        torch.set_num_threads(2)  # factorizations run two at a time, each on one thread
        two = decompose(model, plan, progress=False)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
    a, b = one.state_dict(), two.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert not any(p.grad_fn is not None for p in two.parameters())
