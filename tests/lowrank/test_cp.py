"""CP decomposition of k×k convs, added as one class: it reconstructs, and plans, decomposition, save/load and
freezing take it through the registry by name."""

import pytest
import torch
from torch import nn

from lrdlab.finetune.freezing import Freezer
from lrdlab.lowrank.decompose import decompose, load_decomposed, save_decomposed
from lrdlab.lowrank.layers import decompose_layer, describe
from lrdlab.lowrank.methods import get_method, kxk_method_names
from lrdlab.lowrank.plan import Layers, Ratio, make_plan, params_of

CP = get_method("cp")


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


@torch.no_grad()
def test_full_rank_reconstructs_and_error_falls_with_rank():
    torch.manual_seed(0)
    conv = nn.Conv2d(5, 4, 3, stride=2, padding=1, dilation=1, bias=True)
    x = torch.randn(2, 5, 9, 9)
    full = CP.full_ranks({"in_channels": 5, "out_channels": 4, "kernel_size": [3, 3]})[0]
    exact = decompose_layer(conv, "cp", (full,))
    assert [n for n, _ in exact.named_children()] == list(CP.factor_names)
    assert rel(exact.weight, conv.weight) < 1e-6 and rel(exact(x), conv(x)) < 1e-6  # stride and padding kept
    errors = [rel(decompose_layer(conv, "cp", (r,)).weight, conv.weight) for r in (2, 8, full)]
    assert errors[0] > errors[1] > errors[2]


@torch.no_grad()
@pytest.mark.parametrize("shape", [(4, 5, 3, 3), (3, 2, 5, 1), (2, 3, 1, 7), (6, 6, 3, 3)])
def test_full_rank_is_exact_in_float64_whichever_mode_is_largest(shape):
    torch.manual_seed(0)
    conv = nn.Conv2d(shape[1], shape[0], shape[2:], padding="same").double()
    info = {"in_channels": shape[1], "out_channels": shape[0], "kernel_size": list(shape[2:])}
    full = CP.full_ranks(info)[0]
    x = torch.randn(2, shape[1], 8, 8, dtype=torch.float64)
    layer = decompose_layer(conv, "cp", (full,))
    assert rel(layer.weight, conv.weight) < 1e-12 and rel(layer(x), conv(x)) < 1e-12


@torch.no_grad()
def test_a_rank_one_kernel_is_found_exactly_at_rank_one():
    a, b, v, h = torch.randn(6), torch.randn(3), torch.randn(3), torch.randn(5)
    conv = nn.Conv2d(3, 6, (3, 5), padding=(1, 2), bias=False)
    conv.weight.copy_(torch.einsum("s,c,i,j->scij", a, b, v, h))
    layer = decompose_layer(conv, "cp", (1,))
    x = torch.randn(1, 3, 7, 7)
    assert rel(layer(x), conv(x)) < 1e-5


def test_params_rank_for_ratio_and_what_it_refuses():
    info = {"in_channels": 64, "out_channels": 32, "kernel_size": [3, 3], "type": "Conv2d", "stride": [1, 1]}
    (r,) = CP.rank_for_ratio(info, 4.0)
    assert CP.params(info, (r,)) <= 64 * 32 * 9 / 4 < CP.params(info, (r + 1,))
    assert "cp" in kxk_method_names()
    assert "svd" in CP.unsupported({"type": "Linear", "in_channels": 3, "out_channels": 2, "kernel_size": [1, 1]})
    assert "1×1" in CP.unsupported({**info, "kernel_size": [1, 1]})


def net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4)).eval()


def test_plan_decompose_save_load_and_freezing_through_the_registry(tmp_path):
    model = net()
    plan = make_plan(model, Ratio(2), Layers(exclude=["0"]), method="cp")
    row = plan["2"]
    assert row.method == "cp" and row.params_after == params_of(describe(model[2]), "cp", row.ranks)
    assert row.params_after - 8 <= (row.params_before - 8) / 2  # weights halved; the bias is kept
    low = decompose(model, plan)
    x = torch.randn(2, 3, 8, 8)
    save_decomposed(low, plan, tmp_path)
    again = load_decomposed(tmp_path, net())
    assert torch.allclose(again(x), low(x), atol=1e-6)
    layer = low[2]
    Freezer(low, "regular")
    assert [n for n, m in layer.named_children() if m.weight.requires_grad] == [CP.regular_factor]
    freezer = Freezer(low, "sequential", period=1, unit="iteration")
    seen = []
    for step in range(4):
        freezer.update(step)
        seen += [n for n, m in layer.named_children() if m.weight.requires_grad]
    assert seen == list(CP.sequential_order) and set(seen) == {"first", "vertical", "horizontal", "last"}


@pytest.mark.parametrize("padding", ["same", (0, 1)])
@torch.no_grad()
def test_padding_forms_keep_the_output_shape(padding):
    conv = nn.Conv2d(4, 4, 3, padding=padding)
    x = torch.randn(1, 4, 6, 6)
    assert decompose_layer(conv, "cp", (36,))(x).shape == conv(x).shape
