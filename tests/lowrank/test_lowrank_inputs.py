"""Issue 13: what real users' models and hands send to lowrank — clear answers, nothing half-changed."""

import copy

import numpy as np
import pytest
import torch
from torch import nn

from lrdlab import (
    VBMF,
    Energy,
    FixedRank,
    Layers,
    Ratio,
    decompose,
    get_model,
    load_decomposed,
    make_plan,
    merge_bottlenecks,
    save_decomposed,
)
from lrdlab.lowrank import ranks
from lrdlab.lowrank.decompose import check_plan
from lrdlab.lowrank.layers import LowRankLayer, decompose_layer
from lrdlab.lowrank.methods import MethodOptions, Tucker2Options
from lrdlab.lowrank.plan import Plan
from lrdlab.zoo.cifar_models import bottleneck_net


def state_equal(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.fixture(scope="module")
def resnet20():
    torch.manual_seed(0)
    return get_model("resnet20").eval()


# --- 2. save_decomposed validates -------------------------------------------------------------------


def test_save_refuses_an_undecomposed_model(resnet20, tmp_path):
    plan = make_plan(resnet20, Ratio(2))
    with pytest.raises(ValueError, match=r"layer '.*' is a plain Conv2d, but the plan decomposes it.*decompose\("):
        save_decomposed(resnet20, plan, tmp_path / "out")
    assert not (tmp_path / "out" / "plan.json").exists()


def test_save_refuses_a_plan_with_other_ranks(resnet20, tmp_path):
    two = decompose(resnet20, make_plan(resnet20, Ratio(2, min_rank=1)))
    with pytest.raises(ValueError, match=r"by channel_svd ranks \[5\], but the plan says channel_svd ranks \[3\]"):
        save_decomposed(two, make_plan(resnet20, Ratio(3, min_rank=1)), tmp_path)
    assert not (tmp_path / "plan.json").exists()


def test_load_refuses_a_state_dict_that_does_not_fit_and_leaves_the_model_whole(resnet20, tmp_path):
    plan = make_plan(resnet20, Ratio(2))
    save_decomposed(decompose(resnet20, plan), plan, tmp_path)
    make_plan(resnet20, Ratio(3)).save(tmp_path / "plan.json")  # a hand-edited folder
    fresh = get_model("resnet20")
    before = copy.deepcopy(fresh)
    with pytest.raises(ValueError, match="state_dict.pt does not fit plan.json"):
        load_decomposed(tmp_path, fresh)
    assert state_equal(fresh, before)


@pytest.mark.parametrize("bn", ["fresh", "fold"])
def test_merged_models_save_and_reload(tmp_path, bn):
    torch.manual_seed(0)
    model = bottleneck_net(num_classes=10).eval()
    plan = make_plan(model, Ratio(2))
    merged = merge_bottlenecks(model, plan, bn=bn).eval()
    save_decomposed(merged, plan, tmp_path)
    saved = Plan.load(tmp_path / "plan.json")
    assert saved.settings["merge"]["bn"] == bn and saved.settings["merge"]["blocks"]
    assert "merge" not in plan.settings  # the user's plan is not changed
    torch.manual_seed(1)
    again = load_decomposed(tmp_path, bottleneck_net(num_classes=10)).eval()
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(again(x), merged(x))
    assert state_equal(again, merged)


# --- 3. partial plans and the registry name ----------------------------------------------------------


def test_a_plan_for_a_smaller_model_is_refused_and_names_the_registered_model(resnet20):
    plan = make_plan(resnet20, Ratio(2))
    assert plan.model == "resnet20"
    with pytest.raises(ValueError, match=r"no row for \d+ layer\(s\).*made for 'resnet20'"):
        decompose(get_model("resnet32"), plan)


# --- 4. capped Tucker modes ------------------------------------------------------------------------


def test_a_capped_tucker_mode_is_resolved_as_tucker1():
    model = get_model("resnet50")
    row = make_plan(model, Ratio(2))["conv1"]  # 3→64, 7×7: Tucker-2 would give [3, 9], 4.9×
    assert row.method == "channel_svd" and 1.9 < row.params_before / row.params_after <= 2.1
    assert "reaches its size 3" in row.reason
    stem = decompose_layer(model.conv1, row.method, row.ranks)
    assert stem.factor_names() == ["first", "last"]  # no 3→3 full-rank factor


def test_an_output_capped_tucker_mode_drops_the_last_factor():
    model = nn.Sequential(nn.Conv2d(64, 3, 3, padding=1))
    row = make_plan(model, Ratio(2))["0"]
    assert row.method == "input_svd" and 1.9 < row.params_before / row.params_after <= 2.2  # floor of a small R


def test_one_fixed_rank_caps_the_3_channel_stem_instead_of_refusing_the_model(resnet20):
    plan = make_plan(resnet20, FixedRank(8))
    stem = plan["conv1"]
    assert stem.method == "channel_svd" and stem.ranks == [8] and "channel_svd" in stem.reason
    assert plan["layer1.0.conv1"].ranks == [8, 8]
    big = make_plan(resnet20, FixedRank(64))  # above every full rank: capped, then kept as not saving
    assert all(not r.decomposed or "capped" in r.reason for r in big.layers)


# --- 7. a replaced layer answers what the original did ------------------------------------------


def test_low_rank_layers_expose_the_original_attributes_and_a_weight_reconstruction():
    torch.manual_seed(0)
    lin = nn.Linear(12, 6)
    low = decompose_layer(lin, "svd", (6,))
    assert (low.in_features, low.out_features) == (12, 6)
    assert low.weight.dtype == torch.float32 and torch.allclose(low.weight, lin.weight, atol=1e-5)
    assert low.bias is low.last.bias
    assert not hasattr(low, "in_channels")
    conv = nn.Conv2d(4, 8, 3, stride=2, padding=1, dilation=1)
    low = decompose_layer(conv, "tucker2", (4, 4), branches=2)
    assert (low.in_channels, low.out_channels, low.kernel_size, low.stride, low.padding) == (4, 8, (3, 3), (2, 2),
                                                                                          (1, 1))
    x = torch.randn(1, 4, 7, 7)
    assert torch.allclose(low(x), nn.functional.conv2d(x, low.weight, low.bias, 2, 1), atol=1e-5)
    assert not hasattr(low, "in_features")
    torch.jit.script(nn.Sequential(low))  # the properties do not break TorchScript


def test_decompose_keeps_the_users_frozen_weights_frozen():
    conv = nn.Conv2d(4, 8, 3)
    conv.weight.requires_grad_(False)
    low = decompose_layer(conv, "tucker2", (2, 2))
    assert not any(low.get_submodule(f).weight.requires_grad for f in ("first", "core", "last"))
    assert low.last.bias.requires_grad


# --- 8. VBMF ---------------------------------------------------------------------------------------


def test_vbmf_noise_bound_matches_nakajimas_reference():
    rng = np.random.default_rng(93)  # a matrix on which the old bound, min(ceil(L/(1+α)), H) − 1, gave rank 3
    L, M, k = int(rng.integers(3, 12)), int(rng.integers(11, 30)), int(rng.integers(1, 11))
    assert (L, M, k) == (11, 29, 7)
    Y = rng.normal(size=(L, k)) @ rng.normal(size=(k, M)) * rng.uniform(0.2, 2) + rng.normal(size=(L, M))
    assert ranks.vbmf_rank(Y) == 5


# --- bad inputs ------------------------------------------------------------------------------------


def test_one_string_is_one_pattern(resnet20):
    plan = make_plan(resnet20, Ratio(2), Layers(exclude="conv1"))
    assert plan["conv1"].reason == "excluded by 'conv1'" and plan["layer1.0.conv1"].decomposed
    only = make_plan(resnet20, Ratio(2), Layers(include="layer3.*"))
    assert [r.name for r in only.decomposed_layers] == [r.name for r in only.layers if r.name.startswith("layer3.")]
    with pytest.raises(ValueError, match="glob pattern or a list"):
        make_plan(resnet20, Ratio(2), Layers(exclude=["conv1", 3]))


def test_numpy_scalars_are_numbers(resnet20):
    plan = make_plan(resnet20, Ratio(np.float32(2), granularity=np.int64(8), beta=np.float64(1), branches=np.int8(1)))
    assert plan.settings["granularity"] == 8 and isinstance(plan.settings["granularity"], int)
    assert plan.to_json()  # still JSON-able
    assert all(r % 8 == 0 for row in plan.decomposed_layers for r in row.ranks)
    assert make_plan(resnet20, FixedRank(np.int64(4)))["layer1.0.conv1"].ranks == [4, 4]


@pytest.mark.parametrize("make, match", [
    (lambda: Ratio(2, beta="1"), "Ratio: beta must be a finite real number"),
    (lambda: Ratio("2"), "Ratio: ratio must be a finite real number"),
    (lambda: Ratio(2, granularity=8.5), "Ratio: granularity must be a positive integer"),
    (lambda: FixedRank(2.5), "FixedRank: rank must be an int >= 1, 'full' or a dict"),
    (lambda: FixedRank(True), "FixedRank: rank must be an int >= 1"),
    (lambda: Energy("0.9"), "Energy: energy must be a finite real number"),
    (lambda: VBMF(allow_larger=1), "VBMF: allow_larger must be True or False"),
    (lambda: Layers(input_shape=(1, 0)), "Layers: input_shape must be positive ints"),
    (lambda: Layers(input_shape=(1, 8), example_input=torch.ones(1, 8)), "not both"),
])
def test_wrong_types_get_a_value_error_naming_the_field(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_ranks_functions_reject_a_string_beta():
    with pytest.raises(ValueError, match="beta must be a real number > 0"):
        ranks.tucker2_rank_for_ratio(16, 16, 3, 2, beta="1")


def test_decompose_layer_wants_a_sequence_of_ranks():
    with pytest.raises(ValueError, match=r"ranks must be a sequence of 2 int\(s\) like \(4, 8\), got 4"):
        decompose_layer(nn.Conv2d(4, 8, 3), "tucker2", ranks=4)
    with pytest.raises(ValueError, match="ranks must be a sequence of 1"):
        decompose_layer(nn.Linear(4, 8), "svd", ranks=4)
    with pytest.raises(ValueError, match=r"Tucker2Options: init must be one of \('hosvd', 'hooi'\)"):
        Tucker2Options(init="hosvd2")
    with pytest.raises(ValueError, match="Tucker2Options: sweeps must be a positive int"):
        Tucker2Options(init="hooi", sweeps=0)
    with pytest.raises(ValueError, match="options of 'tucker2' must be a Tucker2Options, got MethodOptions"):
        decompose_layer(nn.Conv2d(4, 8, 3), "tucker2", (2, 2), options=MethodOptions())


def test_make_plan_of_a_name_points_to_get_model():
    with pytest.raises(ValueError, match=r"make_plan\(get_model\('resnet20'\), \.\.\.\)"):
        make_plan("resnet20", Ratio(2))


def test_decompose_refuses_what_is_not_a_model(resnet20):
    plan = make_plan(resnet20, Ratio(2))
    with pytest.raises(ValueError, match="expected a model"):
        check_plan("resnet20", plan)
    with pytest.raises(ValueError, match="expected an lrdlab Plan"):
        decompose(resnet20, plan.to_dict())


def test_plan_files_missing_or_not_json(tmp_path):
    with pytest.raises(FileNotFoundError, match="no plan file .*lrdlab plan MODEL --out"):
        Plan.load(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("conv1: 8\n")
    with pytest.raises(ValueError, match="is not a JSON plan"):
        Plan.load(tmp_path / "bad.json")
    (tmp_path / "list.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="not an lrdlab plan"):
        Plan.load(tmp_path / "list.json")
    (tmp_path / "cp.json").write_text('{"model": "m", "layers": [{"name": "a", "type": "Linear", "in_channels": 2, '
                                      '"out_channels": 2, "kernel_size": [1, 1], "method": "tt", "ranks": [1], '
                                      '"params_before": 4, "params_after": 4, "reason": ""}]}')
    with pytest.raises(ValueError, match="plan row 'a': unknown decomposition method 'tt'"):
        Plan.load(tmp_path / "cp.json")


def test_save_decomposed_into_a_file_path_is_refused(resnet20, tmp_path):
    plan = make_plan(resnet20, Ratio(2), Layers(include="layer3.*"))
    net = decompose(resnet20, plan)
    (tmp_path / "taken").write_text("x")
    with pytest.raises(ValueError, match="is a file; save_decomposed needs a folder"):
        save_decomposed(net, plan, tmp_path / "taken")
    assert isinstance(net.get_submodule("layer3.0.conv1"), LowRankLayer)


def test_optimize_plan_without_the_batch_dimension_says_so(resnet20, tmp_cache):
    from lrdlab import SearchConfig, optimize_plan

    plan = make_plan(resnet20, Ratio(2), Layers(include="layer3.*"))
    with pytest.raises(ValueError, match=r"does it lack the batch dimension\? e.g. \(1, 3, 32, 32\)"):
        optimize_plan(resnet20, plan, (3, 32, 32), SearchConfig(cache=False, time_fn=lambda module, shape: 1.0))


def test_branched_tucker_keeps_a_full_rank_first_factor():
    model = nn.Sequential(nn.Conv2d(32, 64, 3, padding=1))  # Eq. 7 with N = 4 reaches R1 = C = 32
    assert make_plan(model, Ratio(2, branches=4))["0"].method == "tucker2"  # it mixes channels across branches
    assert make_plan(model, Ratio(2))["0"].method == "tucker2"  # N = 1: R1 = 29 < 32, no cap
