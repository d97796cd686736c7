"""Single-layer decompositions against the original layer and against the maths."""

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from lrdlab.lowrank import factorize
from lrdlab.lowrank.layers import LowRankLayer, decompose_layer, describe, full_ranks


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


@st.composite
def conv_configs(draw):
    C = draw(st.integers(1, 12))
    S = draw(st.integers(1, 12))
    kh, kw = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    stride = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    dilation = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    padding_kind = draw(st.sampled_from(["int", "tuple", "same", "valid"]))
    if padding_kind == "same":
        stride = (1, 1)
        padding = "same"
    elif padding_kind == "valid":
        padding = "valid"
    elif padding_kind == "int":
        padding = draw(st.integers(0, 2))
    else:
        padding = (draw(st.integers(0, 2)), draw(st.integers(0, 2)))
    padding_mode = draw(st.sampled_from(["zeros", "reflect", "replicate", "circular"]))
    if padding_mode != "zeros" and padding == "same":
        padding_mode = "zeros"
    bias = draw(st.booleans())
    return dict(in_channels=C, out_channels=S, kernel_size=(kh, kw), stride=stride, padding=padding,
                dilation=dilation, padding_mode=padding_mode, bias=bias)


def _conv_input(conv: nn.Conv2d, seed: int) -> torch.Tensor:
    kh, kw = conv.kernel_size
    dh, dw = conv.dilation
    size = max(kh * dh, kw * dw) + 5
    return torch.randn(2, conv.in_channels, size, size + 1, generator=torch.Generator().manual_seed(seed),
                       dtype=torch.float64)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cfg=conv_configs(), seed=st.integers(0, 10_000))
def test_full_rank_conv_reproduces_the_layer(cfg, seed):
    torch.manual_seed(seed)
    conv = nn.Conv2d(**cfg).double()
    x = _conv_input(conv, seed)
    expected = conv(x)
    methods = ["tucker2", "channel_svd"] + (["svd"] if conv.kernel_size == (1, 1) else [])
    for method in methods:
        layer = decompose_layer(conv, method, full_ranks(describe(conv), method))
        assert isinstance(layer, LowRankLayer)
        out = layer(x)
        assert out.shape == expected.shape
        assert rel_err(out, expected) < 1e-10, method


@settings(max_examples=30, deadline=None)
@given(C=st.integers(1, 40), S=st.integers(1, 40), bias=st.booleans(), seed=st.integers(0, 1000))
def test_full_rank_linear_reproduces_the_layer_in_float32(C, S, bias, seed):
    torch.manual_seed(seed)
    lin = nn.Linear(C, S, bias=bias)
    x = torch.randn(3, 5, C)  # leading dims pass through, as in a transformer MLP
    with torch.no_grad():
        prev = torch.get_float32_matmul_precision()
        torch.set_float32_matmul_precision("highest")
        try:
            layer = decompose_layer(lin, "svd", (min(C, S),))
            assert rel_err(layer(x), lin(x)) < 1e-5
        finally:
            torch.set_float32_matmul_precision(prev)
    assert (layer.last.bias is None) == (not bias)
    assert layer.first.bias is None


def test_stride_sits_on_the_first_svd_layer_and_the_tucker_core():
    conv1 = nn.Conv2d(8, 16, 1, stride=2)
    svd = decompose_layer(conv1, "svd", (4,))
    assert svd.first.stride == (2, 2) and svd.last.stride == (1, 1)
    conv3 = nn.Conv2d(8, 16, 3, stride=2, padding=1, dilation=1)
    tucker = decompose_layer(conv3, "tucker2", (4, 6))
    assert tucker.first.stride == (1, 1) and tucker.core.stride == (2, 2) and tucker.last.stride == (1, 1)
    assert tucker.core.padding == (1, 1) and tucker.first.padding == (0, 0)
    assert [type(m) for m in tucker] == [nn.Conv2d] * 3
    assert tucker.factor_names() == ["first", "core", "last"]


@pytest.mark.parametrize("rank", [1, 3, 7, 12])
def test_truncated_svd_error_is_eckart_young(rank):
    torch.manual_seed(rank)
    lin = nn.Linear(20, 16).double()
    W = lin.weight.detach()
    s = torch.linalg.svdvals(W)
    layer = decompose_layer(lin, "svd", (rank,))
    approx = layer.last.weight @ layer.first.weight
    err = torch.linalg.matrix_norm(W - approx)
    assert torch.isclose(err, s[rank:].square().sum().sqrt(), rtol=1e-10)
    # spectral norm error equals the next singular value
    assert torch.isclose(torch.linalg.matrix_norm(W - approx, ord=2), s[rank], rtol=1e-8)
    # and the singular values are split evenly: both factors carry sqrt(s)
    assert torch.allclose(torch.linalg.svdvals(layer.first.weight), s[:rank].sqrt(), rtol=1e-8)
    assert torch.allclose(torch.linalg.svdvals(layer.last.weight), s[:rank].sqrt(), rtol=1e-8)


def test_hooi_is_at_least_as_good_as_hosvd():
    torch.manual_seed(0)
    W = torch.randn(24, 20, 3, 3, dtype=torch.float64)
    errors = {}
    for method in ("hosvd", "hooi"):
        u_in, core, u_out = factorize.tucker2_factors(W, 8, 10, method=method)
        errors[method] = rel_err(factorize.reconstruct_tucker2(u_in, core, u_out), W)
        assert torch.allclose(u_in.T @ u_in, torch.eye(8, dtype=W.dtype), atol=1e-8)
    assert errors["hooi"] <= errors["hosvd"] + 1e-9
    assert errors["hosvd"] < 1  # a real approximation, not garbage


def test_tucker_keeps_dtype_and_device():
    conv = nn.Conv2d(6, 6, 3)
    layer = decompose_layer(conv, "tucker2", (3, 3))
    assert all(p.dtype == torch.float32 for p in layer.parameters())


def test_unsupported_layers_raise_with_reason():
    with pytest.raises(ValueError, match="depthwise"):
        decompose_layer(nn.Conv2d(8, 8, 3, groups=8), "tucker2", (4, 4))
    with pytest.raises(ValueError, match="transposed"):
        decompose_layer(nn.ConvTranspose2d(8, 8, 3), "tucker2", (4, 4))
    with pytest.raises(ValueError, match="svd"):
        decompose_layer(nn.Conv2d(8, 8, 3), "svd", (4,))


def _svd_layer():
    from lrdlab import FixedRank, decompose, make_plan

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(24, 16), torch.nn.ReLU(), torch.nn.Linear(16, 12)).double()
    dec = decompose(model, make_plan(model, FixedRank("full", allow_larger=True)), progress=False)
    return model, dec


def test_low_rank_linear_applies_unhooked_factors_directly_and_exactly(monkeypatch):
    model, dec = _svd_layer()
    x = torch.randn(5, 24, dtype=torch.float64)
    torch.testing.assert_close(dec(x), model(x), rtol=0, atol=1e-12)  # full rank, float64
    forwards = []
    plain = torch.nn.Linear.forward
    monkeypatch.setattr(torch.nn.Linear, "forward", lambda self, t: forwards.append(self) or plain(self, t))
    fast = dec(x)
    assert forwards == []  # no factor went through a module call
    monkeypatch.undo()
    calls = []
    handle = dec[0].first.register_forward_hook(lambda m, i, o: calls.append("first"))
    try:
        watched = dec(x)  # a hooked factor is called as a module: its hook runs, the numbers are the same
    finally:
        handle.remove()
    assert calls == ["first"]
    torch.testing.assert_close(watched, fast, rtol=0, atol=0)
    seen = []
    handle = torch.nn.modules.module.register_module_forward_hook(lambda m, i, o: seen.append(type(m).__name__))
    try:
        dec(x)
    finally:
        handle.remove()
    assert seen.count("Linear") == 4  # a global hook sees every factor of both layers
    fast.sum().backward()
    assert all(p.grad is not None for p in dec.parameters())  # the direct path trains every factor
