"""The method registry: one object per low-rank form, looked up by name, used by plans, layers and freezing."""

import json
from collections import OrderedDict
from dataclasses import dataclass

import pytest
import torch
from torch import nn

import lrdlab
from lrdlab.cli import main
from lrdlab.finetune.freezing import Freezer
from lrdlab.lowrank import methods
from lrdlab.lowrank.decompose import decompose, load_decomposed, save_decomposed
from lrdlab.lowrank.layers import build, decompose_layer, describe
from lrdlab.lowrank.methods import TUCKER2, Method, MethodOptions, Tucker2Options, get_method, method_names
from lrdlab.lowrank.plan import Plan, Ratio, make_plan, params_of

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


@pytest.mark.parametrize("name", method_names())  # every registered form, a new one included
def test_full_rank_reproduces_weight_and_output_and_params_match_the_modules(name):
    torch.manual_seed(0)
    form = get_method(name)
    for module in layers_for(name):
        info = describe(module)
        full = form.full_ranks(info)
        layer = decompose_layer(module, name, full)
        assert layer.factor_names() == list(form.factor_names)
        x = torch.randn(2, *((12,) if isinstance(module, nn.Linear) else (6, 5, 5)))
        for got, want in ((layer.weight, module.weight), (layer(x), module(x))):
            assert float((got - want).norm() / want.norm()) < 1e-5, name
        assert sum(p.numel() for p in layer.parameters()) == params_of(info, name, full)


@pytest.mark.parametrize("name", methods.kxk_method_names())
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

    def factorize(self, weight, layer_ranks, options=None, branches=1):
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
        make_plan(nn.Sequential(CONV), Ratio(2), method="svd")
    plan = make_plan(nn.Sequential(nn.Conv2d(32, 32, 3)), Ratio(2), method="input_svd")
    assert plan["0"].method == "input_svd" and plan["0"].params_after <= plan["0"].params_before / 2


@dataclass(frozen=True)
class FlipOptions(MethodOptions):
    """The toy form's one option: negate both factors (the product, and so the layer, is unchanged)."""

    flip: bool = False

    def __post_init__(self):
        if not isinstance(self.flip, bool):
            raise ValueError(f"FlipOptions: flip must be True or False (got {self.flip!r})")


class SpatialMix(Method):
    """A toy k×k form: channel SVD, its factors named ``spatial`` and ``mix`` (no other form uses them)."""

    name = "toy_spatial_mix"
    description = "test-only"
    factor_names = ("spatial", "mix")
    rank_names = ("weight matrix",)
    regular_factor = "mix"
    sequential_order = ("spatial", "mix")
    options_type = FlipOptions
    inner = get_method("channel_svd")

    def full_ranks(self, info):
        return self.inner.full_ranks(info)

    def params(self, info, layer_ranks, branches=1):
        return self.inner.params(info, layer_ranks)

    def rank_for_ratio(self, info, ratio, beta=1.0, branches=1):
        return self.inner.rank_for_ratio(info, ratio)

    def unfoldings(self, weight):
        return self.inner.unfoldings(weight)

    def build(self, info, layer_ranks, branches=1):
        return OrderedDict(zip(self.factor_names, self.inner.build(info, layer_ranks).values()))

    def factorize(self, weight, layer_ranks, options=None, branches=1):
        sign = -1.0 if self.options(options).flip else 1.0
        return {n: sign * w for n, w in zip(self.factor_names, self.inner.factorize(weight, layer_ranks).values())}

    def reconstruct(self, factors, info):
        return self.inner.reconstruct({"first": factors["spatial"], "last": factors["mix"]}, info)


def _net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(6, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1)).eval()


def test_a_form_with_its_own_factor_names_and_options_runs_everywhere(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(methods, "_REGISTRY", dict(methods._REGISTRY))
    toy = methods.register(SpatialMix())
    model, x = _net(), torch.randn(2, 6, 8, 8)
    # plan: the form by object, its options recorded in the JSON and read back
    plan = Plan.from_dict(json.loads(make_plan(model, Ratio(2), method=toy, options=FlipOptions(flip=True)).to_json()))
    assert [r.method for r in plan.decomposed_layers] == [toy.name, toy.name]
    assert plan.settings["options"][toy.name] == {"flip": True} and plan.options_for(toy) == FlipOptions(flip=True)
    # decompose: the recorded option reaches the form's factorize
    out = decompose(model, plan)
    assert out[2].factor_names() == ["spatial", "mix"]
    plain = decompose_layer(model[2], "channel_svd", plan["2"].ranks)
    assert torch.equal(out[2].spatial.weight, -plain.first.weight)
    assert torch.equal(out[2].mix.weight, -plain.last.weight)
    assert torch.allclose(out(x), nn.Sequential(decompose_layer(model[0], "channel_svd", plan["0"].ranks), nn.ReLU(),
                                                plain)(x), atol=1e-6)
    assert toy.errors(model[2].weight, describe(model[2]))(plan["2"].ranks) == pytest.approx(
        get_method("channel_svd").errors(model[2].weight, describe(model[2]))(plan["2"].ranks), rel=1e-6)
    # freezing: names, regular factor and rotation from the form
    assert Freezer(out, "sequential").orders == {"0": ("spatial", "mix"), "2": ("spatial", "mix")}
    assert Freezer(out, "regular").trainable_factors() == {"0": ("mix",), "2": ("mix",)}
    assert not out[0].spatial.weight.requires_grad and out[0].mix.weight.requires_grad
    # save / load
    save_decomposed(out, plan, tmp_path / "toy")
    back = load_decomposed(tmp_path / "toy", _net())
    assert back[2].factor_names() == ["spatial", "mix"] and torch.equal(back(x), out(x))
    # the CLI: the form and its options by name, unknown ones refused with the registry's choices
    assert main(["plan", "resnet20", "--method", toy.name, "--option", f"{toy.name}.flip=true",
                 "--format", "json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["settings"]["options"][toy.name] == {"flip": True}
    assert {r["method"] for r in report["layers"] if r["kernel_size"] == [3, 3] and r["method"]} == {toy.name}
    assert main(["plan", "resnet20", "--option", f"{toy.name}.flip=maybe"]) == 2
    assert "not true or false" in capsys.readouterr().err
    assert main(["plan", "resnet20", "--method", "tt"]) == 2
    assert toy.name in capsys.readouterr().err


def test_tucker_options_live_in_the_method_and_old_plans_keep_theirs():
    model = nn.Sequential(nn.Conv2d(8, 12, 3))
    assert TUCKER2.options_type is Tucker2Options and TUCKER2.options() == Tucker2Options()
    plan = make_plan(model, Ratio(2, min_rank=1), options=Tucker2Options(init="hooi", sweeps=2))
    assert plan.settings["options"]["tucker2"] == {"init": "hooi", "sweeps": 2}
    hooi = decompose_layer(model[0], "tucker2", plan["0"].ranks, options=Tucker2Options(init="hooi", sweeps=2))
    assert torch.equal(decompose(model, plan)[0].core.weight, hooi.core.weight)
    old = plan.to_dict()
    old["settings"].pop("options")
    old["settings"]["tucker"] = "hooi"  # a plan file written before per-method options
    loaded = Plan.from_dict(old)
    assert loaded.options_for("tucker2") == Tucker2Options(init="hooi", sweeps=1) and "tucker" not in loaded.settings
    with pytest.raises(ValueError, match="'tucker2' has no option 'n_iter'"):
        Plan.from_dict({**old, "settings": {"options": {"tucker2": {"n_iter": 3}}}})
    with pytest.raises(ValueError, match="options must be one options object per method"):
        make_plan(model, Ratio(2), options=[MethodOptions()])
    assert lrdlab.make_plan(model, lrdlab.Ratio(2)).settings["options"]["tucker2"] == Tucker2Options().to_dict()


def test_a_form_without_unfoldings_says_which_policies_need_them(monkeypatch):
    monkeypatch.setattr(methods, "_REGISTRY", dict(methods._REGISTRY))
    methods.register(Mirror())
    with pytest.raises(ValueError, match=r"'mirror_svd' has no unfoldings.*Ratio\(...\) or FixedRank"):
        get_method("mirror_svd").spectra(LINEAR.weight)
