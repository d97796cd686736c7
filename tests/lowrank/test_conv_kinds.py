"""Conv1d, Conv3d and timm's weight-standardised / TF-"same" convs: decomposed into factors of their own kind, exact
at full rank, planned, calibrated, saved and reloaded."""

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from lrdlab import FixedRank, Layers, Ratio, count_flops, decompose, load_decomposed, make_plan, save_decomposed
from lrdlab.lowrank import conv_kinds
from lrdlab.lowrank.calibration import calibrated_decompose
from lrdlab.lowrank.calibration_fit import Moments
from lrdlab.lowrank.data_aware import input_rows
from lrdlab.lowrank.layers import LowRankLayer, decompose_layer, describe, full_ranks
from lrdlab.lowrank.methods import Tucker2Options, get_method

timm_layers = pytest.importorskip("timm.layers")

CONVS = {1: nn.Conv1d, 3: nn.Conv3d}


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


@st.composite
def nd_conv_configs(draw):
    dims = draw(st.sampled_from([1, 3]))
    kernel = tuple(draw(st.integers(1, 3)) for _ in range(dims))
    stride = tuple(draw(st.integers(1, 2)) for _ in range(dims))
    dilation = tuple(draw(st.integers(1, 2)) for _ in range(dims))
    padding = draw(st.sampled_from(["tuple", "same", "valid"]))
    if padding == "same":
        stride = (1,) * dims
    else:
        padding = tuple(draw(st.integers(0, 2)) for _ in range(dims)) if padding == "tuple" else padding
    padding_mode = draw(st.sampled_from(["zeros", "reflect", "replicate", "circular"]))
    if padding_mode != "zeros" and padding == "same":
        padding_mode = "zeros"
    return dims, dict(in_channels=draw(st.integers(1, 7)), out_channels=draw(st.integers(1, 7)), kernel_size=kernel,
                      stride=stride, padding=padding, dilation=dilation, padding_mode=padding_mode,
                      bias=draw(st.booleans()))


def _input(conv: nn.Module, dims: int, seed: int) -> torch.Tensor:
    size = [max(k * d for k, d in zip(conv.kernel_size, conv.dilation)) + 3 + i for i in range(dims)]
    return torch.randn(2, conv.in_channels, *size, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cfg=nd_conv_configs(), seed=st.integers(0, 10_000))
def test_full_rank_conv1d_conv3d_reproduce_the_layer(cfg, seed):
    dims, kwargs = cfg
    torch.manual_seed(seed)
    conv = CONVS[dims](**kwargs).double()
    x = _input(conv, dims, seed)
    expected = conv(x)
    pointwise = all(k == 1 for k in conv.kernel_size)
    for method in ["tucker2", "channel_svd", "input_svd"] + (["svd"] if pointwise else []):
        layer = decompose_layer(conv, method, full_ranks(describe(conv), method))
        assert all(isinstance(f, CONVS[dims]) for f in layer)  # factors of the layer's own dimensionality
        assert rel_err(layer(x), expected) < 1e-10, method
        assert rel_err(layer.weight, conv.weight) < 1e-10, method
        assert layer.kernel_size == conv.kernel_size and layer.stride == conv.stride


@pytest.mark.parametrize("dims", [1, 3])
def test_truncated_tucker2_of_a_conv1d_conv3d_matches_its_reconstruction(dims):
    torch.manual_seed(0)
    conv = CONVS[dims](12, 10, 3, padding=1).double()
    x = _input(conv, dims, 1)
    layer = decompose_layer(conv, "tucker2", (4, 5))
    dense = CONVS[dims](12, 10, 3, padding=1).double()
    with torch.no_grad():
        dense.weight.copy_(layer.weight)
        dense.bias.copy_(conv.bias)
    assert [f.weight.shape[:2] for f in layer] == [(4, 12), (5, 4), (10, 5)]
    assert rel_err(layer(x), dense(x)) < 1e-10
    error = get_method("tucker2").errors(conv.weight, describe(conv))((4, 5))  # the HOSVD truncation's, from a table
    hosvd = decompose_layer(conv, "tucker2", (4, 5), Tucker2Options(init="hosvd"))
    assert 0 < error < 1 and abs(error - rel_err(hosvd.weight, conv.weight)) < 1e-10
    assert rel_err(layer.weight, conv.weight) <= error + 1e-12  # HOOI (the default) refines it


def test_cp_refuses_a_3d_conv_with_a_reason():
    assert "2-D convs" in get_method("cp").unsupported(describe(nn.Conv3d(4, 4, 3)))
    assert get_method("cp").unsupported(describe(nn.Conv2d(4, 4, 3))) is None
    model = nn.Sequential(nn.Conv3d(4, 8, 3), nn.ReLU(), nn.Conv3d(8, 8, 1))
    plan = make_plan(model, Ratio(2, min_rank=1), Layers(input_shape=(1, 4, 5, 5, 5)), method="cp")
    assert not plan["0"].decomposed and "'cp' is for 2-D convs" in plan["0"].reason
    assert plan["2"].decomposed and plan["2"].method == "svd"  # pointwise: SVD whatever the k×k method


@pytest.mark.parametrize("conv", [nn.Conv1d(3, 5, 3, stride=2, dilation=2, padding=2, padding_mode="reflect"),
                                  nn.Conv1d(3, 5, 4, padding="same"),
                                  nn.Conv3d(2, 4, (3, 2, 3), stride=(1, 2, 2), padding=(1, 0, 1)),
                                  nn.Conv3d(2, 4, 3, dilation=(2, 1, 1), padding="same", padding_mode="circular")])
def test_input_rows_of_1d_and_3d_convs_are_what_the_weight_multiplies(conv):
    conv = conv.double()
    dims = len(conv.kernel_size)
    x = _input(conv, dims, 0)
    rows = input_rows(conv, x)  # [C·k…, N]
    out = conv.weight.reshape(conv.out_channels, -1) @ rows + conv.bias[:, None]
    expected = conv(x)
    assert torch.allclose(out, expected.movedim(1, 0).reshape(conv.out_channels, -1), atol=1e-10)


# --- timm's weight-standardised and TF-"same" convs -------------------------------------------------------------


def _timm_convs():
    t = timm_layers
    scaled = t.ScaledStdConv2d(4, 6, 3, padding=1)
    return [t.StdConv2d(4, 6, 3, stride=2), t.StdConv2d(4, 6, 1), scaled, t.ScaledStdConv2d(4, 6, 1),
            t.Conv2dSame(4, 6, 3, stride=2), t.Conv2dSame(4, 6, 4), t.StdConv2dSame(4, 6, 3, stride=2),
            t.ScaledStdConv2dSame(4, 6, 5, stride=2)]


@pytest.mark.parametrize("index", range(8))
def test_timm_convs_decompose_exactly_at_full_rank(index):
    torch.manual_seed(index)
    conv = _timm_convs()[index].double()
    if hasattr(conv, "gain"):
        nn.init.uniform_(conv.gain, 0.5, 2.0)  # a trained gain, not the all-ones start
    assert conv_kinds.kind_of(conv) is not None
    for size in (9, 10):  # odd and even sizes: TF "same" pads differently
        x = torch.randn(2, 4, size, size + 1, dtype=torch.float64)
        expected = conv(x)
        pointwise = conv.kernel_size == (1, 1)
        for method in ["svd"] if pointwise else ["tucker2", "channel_svd", "input_svd"]:
            layer = decompose_layer(conv, method, full_ranks(describe(conv), method))
            assert layer(x).shape == expected.shape
            assert rel_err(layer(x), expected) < 1e-10, (type(conv).__name__, method, size)
            # the raw weight is not the one convolved with (standardised) unless the conv is a plain same-padded one
            assert (rel_err(layer.weight, conv.weight) < 1e-10) == (type(conv).__name__ == "Conv2dSame")


def test_a_subclass_of_a_timm_conv_is_not_taken_for_it():
    class Mine(timm_layers.StdConv2d):
        def forward(self, x):
            return super().forward(x) * 2

    assert conv_kinds.kind_of(Mine(4, 4, 3)) is None
    plan = make_plan(nn.Sequential(Mine(4, 4, 3)), FixedRank("full", allow_larger=True),
                     Layers(input_shape=(1, 4, 8, 8)))
    assert not plan["0"].decomposed and "overrides" in plan["0"].reason


def test_standardised_factors_train_when_the_weight_does_and_keep_the_bias():
    conv = timm_layers.ScaledStdConv2d(4, 6, 3)
    low = decompose_layer(conv, "tucker2", (2, 3))
    assert all(f.weight.requires_grad for f in low) and low.last.bias.requires_grad
    assert torch.equal(low.bias, conv.bias)
    conv.weight.requires_grad_(False)
    assert not any(f.weight.requires_grad for f in decompose_layer(conv, "tucker2", (2, 3)))


def _timm_net():
    t = timm_layers
    return nn.Sequential(t.StdConv2d(3, 16, 3), nn.ReLU(), t.Conv2dSame(16, 24, 3, stride=2), nn.ReLU(),
                         t.ScaledStdConv2d(24, 16, 1))


def test_a_timm_net_is_planned_decomposed_saved_reloaded_and_scripted(tmp_path):
    torch.manual_seed(0)
    model = _timm_net().double().eval()
    x = torch.randn(2, 3, 15, 16, dtype=torch.float64)
    full = make_plan(model, FixedRank("full", allow_larger=True), Layers(example_input=x))
    assert [r.decomposed for r in full.layers] == [True, True, True]
    assert "standardised weight" in full["0"].reason and "'same' padding" in full["2"].reason
    low = decompose(model, full)
    assert rel_err(low(x), model(x)) < 1e-10
    plan = make_plan(model, Ratio(2, min_rank=1), Layers(example_input=x))
    low = decompose(model, plan)
    assert count_flops(low, x[:1]) < count_flops(model, x[:1])
    low, x = low.float(), x.float()
    save_decomposed(low, plan, tmp_path)
    again = load_decomposed(tmp_path, _timm_net().eval())
    assert isinstance(again[2], LowRankLayer) and again[2].same_pad
    assert torch.equal(again(x), low(x))
    scripted = torch.jit.script(low)
    assert torch.allclose(scripted(x), low(x), atol=1e-6)


@pytest.mark.parametrize("conv", [timm_layers.Conv2dSame(3, 5, 4), timm_layers.Conv2dSame(3, 5, 3, stride=2),
                                  timm_layers.StdConv2dSame(3, 5, 3, stride=2)])
def test_input_rows_of_a_same_padded_conv_are_what_its_weight_multiplies(conv):
    conv = conv.double()
    x = torch.randn(2, 3, 9, 10, dtype=torch.float64)
    out = conv_kinds.effective_weight(conv, conv.weight).reshape(5, -1) @ input_rows(conv, x)
    if conv.bias is not None:
        out = out + conv.bias[:, None]
    assert torch.allclose(out, conv(x).movedim(1, 0).reshape(5, -1), atol=1e-10)


def test_calibration_moments_of_a_same_padded_stride_1_conv_are_those_of_its_padded_input():
    conv = timm_layers.Conv2dSame(3, 5, 4).double()  # stride 1, even kernel: padded 1 before, 2 after, at run time
    x, x_hat = torch.randn(2, 3, 9, 10, dtype=torch.float64), torch.randn(2, 3, 9, 10, dtype=torch.float64)
    moments = Moments()
    moments.add(conv, x_hat, x)
    rows, rows_hat = input_rows(conv, x), input_rows(conv, x_hat)
    assert moments.rows == rows.shape[1] == 2 * 9 * 10
    assert torch.allclose(moments.gram, rows_hat @ rows_hat.T) and torch.allclose(moments.cross, rows @ rows_hat.T)


# --- whole models: plans, FLOPs and calibration ------------------------------------------------------------------


def _audio():
    return nn.Sequential(nn.Conv1d(8, 32, 3, padding=1), nn.GELU(), nn.Conv1d(32, 32, 3, stride=2, padding=1),
                         nn.GELU(), nn.Conv1d(32, 16, 1)).eval()


def _video():
    return nn.Sequential(nn.Conv3d(3, 24, (3, 7, 7), stride=(1, 2, 2), padding=(1, 3, 3)), nn.ReLU(),
                         nn.Conv3d(24, 24, 3, padding=1), nn.ReLU(), nn.Conv3d(24, 32, 1, stride=2)).eval()


@pytest.mark.parametrize(("build", "shape"), [(_audio, (4, 8, 40)), (_video, (2, 3, 4, 16, 16))])
def test_conv1d_conv3d_models_are_planned_cut_in_flops_and_calibrated(build, shape):
    torch.manual_seed(0)
    model = build()
    plan = make_plan(model, Ratio(2, min_rank=1), Layers(input_shape=shape))
    assert all(r.decomposed for r in plan.layers), [r.reason for r in plan.layers if not r.decomposed]
    assert [len(r.kernel_size) for r in plan.layers] == [len(shape) - 2] * len(plan.layers)
    low = decompose(model, plan)
    assert count_flops(low, shape) < 0.75 * count_flops(model, shape)
    xs = [torch.randn(shape) for _ in range(4)]
    x = torch.cat(xs)
    for mode in ("corrected", "one-shot"):
        calibrated = calibrated_decompose(model, plan, xs, mode=mode)
        assert [type(m) for m in calibrated.modules()] == [type(m) for m in low.modules()]
        # fitted to these inputs' outputs: closer to the original on them than the weight-only factors
        assert rel_err(calibrated(x), model(x)) < rel_err(low(x), model(x)), mode
