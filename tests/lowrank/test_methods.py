"""The method registry: one object per low-rank form, looked up by name, used by plans, layers and freezing."""

from collections import OrderedDict

import pytest
import torch
from torch import nn

from lrdlab.finetune.freezing import Freezer
from lrdlab.lowrank import methods
from lrdlab.lowrank.layers import build, decompose_layer, describe
from lrdlab.lowrank.methods import TUCKER2, Method, get_method, method_names
from lrdlab.lowrank.plan import make_plan, params_of

CONV = nn.Conv2d(6, 10, 3, padding=1, bias=True)
LINEAR = nn.Linear(12, 7)


def layers_for(name: str) -> list[nn.Module]:
    return [LINEAR, nn.Conv2d(6, 10, 1)] if name == "svd" else [CONV]


def test_lookup_by_name_and_unknown_names_list_the_choices():
    assert set(method_names()) == {"svd", "channel_svd", "input_svd", "tucker2", "cp"}
    assert get_method("tucker2") is TUCKER2 and get_method(TUCKER2) is TUCKER2
    with pytest.raises(ValueError, match="unknown decomposition method 'tt'.*tucker2"):
        get_method("tt")
    assert methods.kxk_method_names() == ("channel_svd", "input_svd", "tucker2", "cp")


@pytest.mark.parametrize("name", ["svd", "channel_svd", "input_svd", "tucker2"])
def test_full_rank_reproduces_weight_and_output_and_params_match_the_modules(name):
    torch.manual_seed(0)
    form = get_method(name)
    for module in layers_for(name):
        info = describe(module)
        full = form.full_ranks(info)
        layer = decompose_layer(module, name, full)
        assert layer.factor_names() == list(form.factor_names)
        assert torch.allclose(layer.weight, module.weight, atol=1e-5)
        x = torch.randn(2, *((12,) if isinstance(module, nn.Linear) else (6, 5, 5)))
        assert torch.allclose(layer(x), module(x), atol=1e-5)
        assert sum(p.numel() for p in layer.parameters()) == params_of(info, name, full)


@pytest.mark.parametrize("name", ["channel_svd", "input_svd", "tucker2"])
def test_rank_for_ratio_compresses_at_least_that_much(name):
    form = get_method(name)
    info = describe(nn.Conv2d(64, 128, 3))
    for ratio in (1.5, 2, 4):
        r = form.rank_for_ratio(info, ratio)
        assert form.params(info, r) <= info["in_channels"] * info["out_channels"] * 9 / ratio
        assert form.params(info, [x + 1 for x in r]) > info["in_channels"] * info["out_channels"] * 9 / ratio


def test_spectra_are_one_per_rank():
    w = CONV.weight
    assert [len(s) for s in TUCKER2.spectra(w)] == [6, 10]
    assert [len(s) for s in get_method("channel_svd").spectra(w)] == [10]
    assert [len(s) for s in get_method("input_svd").spectra(w)] == [6]


def test_freezing_reads_the_orders_from_the_registry():
    model = nn.Sequential(decompose_layer(CONV, "input_svd", (3,)))
    assert Freezer(model, "sequential").orders["0"] == get_method("input_svd").sequential_order
    Freezer(model, "regular")
    assert [p.requires_grad for p in model[0].first.parameters()] == [False]
    assert all(p.requires_grad for p in model[0].last.parameters())


class Mirror(Method):
    """A toy form for the test: SVD of a Linear, its factors under names no other form uses."""

    name = "mirror_svd"
    description = "test-only"
    factor_names = ("down", "up")
    rank_names = ("weight matrix",)
    regular_factor = "down"
    sequential_order = ("up", "down")
    kxk = False

    def unsupported(self, info):
        return None if info["type"] == "Linear" else "Linear only"

    def full_ranks(self, info):
        return [min(info["in_channels"], info["out_channels"])]

    def params(self, info, layer_ranks, branches=1):
        return layer_ranks[0] * (info["in_channels"] + info["out_channels"])

    def build(self, info, layer_ranks, branches=1):
        (r,) = layer_ranks
        return OrderedDict(down=nn.Linear(info["in_channels"], r, bias=False),
                           up=nn.Linear(r, info["out_channels"], bias=info["bias"]))

    def factorize(self, weight, layer_ranks, tucker="hosvd", branches=1):
        svd = get_method("svd").factorize(weight, layer_ranks)
        return {"down": svd["first"], "up": svd["last"]}

    def reconstruct(self, factors, info):
        return factors["up"] @ factors["down"]


def test_a_new_form_is_one_class_and_one_register_call(monkeypatch):
    monkeypatch.setattr(methods, "_REGISTRY", dict(methods._REGISTRY))
    methods.register(Mirror())
    with pytest.raises(ValueError, match="already registered"):
        methods.register(Mirror())
    layer = decompose_layer(LINEAR, "mirror_svd", (7,))
    x = torch.randn(3, 12)
    assert torch.allclose(layer(x), LINEAR(x), atol=1e-5)
    assert torch.allclose(layer.weight, LINEAR.weight, atol=1e-5)
    model = nn.Sequential(layer)
    Freezer(model, "regular")
    assert layer.down.weight.requires_grad and not layer.up.weight.requires_grad
    freezer = Freezer(model, "sequential", order=["down", "up"])
    assert freezer.orders["0"] == ("down", "up") and Freezer(model, "sequential").orders["0"] == ("up", "down")
    assert build(describe(LINEAR), "mirror_svd", (4,)).ranks == (4,)


def test_make_plan_lists_the_registered_kxk_forms():
    with pytest.raises(ValueError, match=r"'auto' or one of \('channel_svd', 'input_svd', 'tucker2', 'cp'\)"):
        make_plan(nn.Sequential(CONV), ratio=2, method="svd")
    plan = make_plan(nn.Sequential(nn.Conv2d(32, 32, 3)), ratio=2, method="input_svd")
    assert plan["0"].method == "input_svd" and plan["0"].params_after <= plan["0"].params_before / 2
