"""Plans and whole-model decomposition: paper FLOP reductions, full-rank models, save/load, bad input."""

import copy
import json

import pytest
import torch
import torchvision
from torch import nn

import lrdlab
from lrdlab import (
    PAPER_EXCLUDE,
    VBMF,
    Energy,
    FixedRank,
    Layers,
    RankPolicy,
    Ratio,
    count_flops,
    count_params,
    decompose,
    make_plan,
)
from lrdlab.lowrank.decompose import load_decomposed, planned_structure, save_decomposed
from lrdlab.lowrank.layers import LowRankLayer
from lrdlab.lowrank.methods import Tucker2Options
from lrdlab.lowrank.plan import Plan


@pytest.fixture(autouse=True)
def highest_precision():
    prev = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")
    yield
    torch.set_float32_matmul_precision(prev)


def rel_err(a, b):
    return ((a - b).norm() / b.norm()).item()


@pytest.mark.parametrize("name,paper", [("resnet50", -43.26), ("resnet101", -46.53), ("resnet152", -47.69)])
def test_paper_flop_reductions_at_2x(name, paper):
    model = lrdlab.get_model(name)
    plan = make_plan(model, Ratio(2), Layers(exclude=PAPER_EXCLUDE), model_name=name)
    before = count_flops(model, (1, 3, 224, 224))
    after = count_flops(planned_structure(model, plan), (1, 3, 224, 224))
    change = 100 * (after - before) / before
    assert abs(change - paper) < 0.6, (name, change, paper)


def test_paper_table1_ranks_in_a_resnet152_plan():
    plan = make_plan(lrdlab.get_model("resnet152"), Ratio(2), Layers(exclude=PAPER_EXCLUDE))
    got = {n: plan[n].ranks for n in ["layer1.0.conv1", "layer1.0.conv2", "layer1.0.conv3", "layer4.2.conv1",
                                      "layer4.2.conv2", "layer4.2.conv3", "fc"]}
    assert got == {"layer1.0.conv1": [16], "layer1.0.conv2": [38, 38], "layer1.0.conv3": [25],
                   "layer4.2.conv1": [204], "layer4.2.conv2": [309, 309], "layer4.2.conv3": [204], "fc": [335]}
    assert plan["conv1"].method is None and "excluded" in plan["conv1"].reason
    assert plan["layer1.0.downsample.0"].method is None


MODELS_AT_FULL_RANK = [
    ("resnet18", (2, 3, 64, 64)),
    ("resnet50", (2, 3, 64, 64)),
    ("mobilenet_v2", (2, 3, 64, 64)),
    ("vit_b_16", (1, 3, 224, 224)),
]


@pytest.mark.slow
@pytest.mark.parametrize("name,shape", MODELS_AT_FULL_RANK)
def test_whole_model_at_full_rank_matches_the_original(name, shape):
    torch.manual_seed(0)
    model = lrdlab.get_model(name).eval()
    if name == "vit_b_16":  # torchvision zero-initialises the head: give it weights worth comparing
        nn.init.normal_(model.heads.head.weight)
    plan = make_plan(model, FixedRank("full", allow_larger=True))
    full = decompose(model, plan)
    x = torch.randn(shape)
    with torch.no_grad():
        assert rel_err(full(x), model(x)) < 1e-4
    n_lowrank = sum(isinstance(m, LowRankLayer) for m in full.modules())
    assert n_lowrank == len(plan.decomposed_layers) > 0
    if name == "mobilenet_v2":
        assert any("depthwise" in r.reason for r in plan.layers)
    if name == "vit_b_16":  # q, k, v, out_proj and the 2 MLP Linears of 12 blocks
        assert sum(r.name.startswith("encoder.") for r in plan.decomposed_layers) == 72
        assert any("MultiheadAttention" in r.reason for r in plan.layers)


def test_decomposed_model_runs_and_is_smaller():
    model = lrdlab.get_model("resnet18").eval()
    plan = make_plan(model, Ratio(2))
    small = decompose(model, plan)
    assert count_params(small) < count_params(model)
    with torch.no_grad():
        assert small(torch.randn(2, 3, 32, 32)).shape == (2, 1000)
    assert not any(isinstance(m, LowRankLayer) for m in model.modules()), "original must be untouched"


def test_inplace_decomposition_modifies_the_given_model():
    model = lrdlab.get_model("resnet18")
    plan = make_plan(model, Ratio(3), Layers(include=["layer4.*"]))
    out = decompose(model, plan, inplace=True)
    assert out is model and isinstance(model.layer4[0].conv1, LowRankLayer)


def test_save_and_reload_is_bit_exact(tmp_path):
    torch.manual_seed(0)
    model = lrdlab.get_model("resnet18").eval()
    plan = make_plan(model, Ratio(2, granularity=8), Layers(exclude=PAPER_EXCLUDE), model_name="resnet18")
    small = decompose(model, plan)
    save_decomposed(small, plan, tmp_path)
    reloaded = load_decomposed(tmp_path, torchvision.models.resnet18().eval())
    for (k1, v1), (k2, v2) in zip(small.state_dict().items(), reloaded.state_dict().items()):
        assert k1 == k2 and torch.equal(v1, v2)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(small(x), reloaded(x))
    assert Plan.load(tmp_path / "plan.json").to_dict() == json.loads(plan.to_json())


def test_plan_json_round_trip_and_table():
    plan = make_plan(lrdlab.get_model("resnet18"), Ratio(2, granularity=16))
    again = Plan.from_dict(json.loads(plan.to_json()))
    assert again == plan
    text = str(plan)
    assert "layer1.0.conv1" in text and "tucker2" in text and "reason" in text
    assert "<table" in plan._repr_html_()
    assert all(r % 16 == 0 for row in plan.decomposed_layers for r in row.ranks)


def test_granularity_never_adds_parameters():
    model = nn.Sequential(nn.Linear(40, 40), nn.Conv2d(8, 8, 1))
    plan = make_plan(model, Ratio(1.05, granularity=16, rounding="up"))
    assert plan["0"].decomposed and plan["0"].ranks == [16] and plan["0"].params_after < plan["0"].params_before
    # an 8x8 1x1 conv saves only at rank <= 3: no multiple of 16 fits, so the layer is kept with a reason
    assert not plan["1"].decomposed and "granularity 16" in plan["1"].reason


def test_rank_that_does_not_save_is_kept_with_a_reason():
    model = nn.Sequential(nn.Linear(10, 10))
    plan = make_plan(model, FixedRank(8))
    assert not plan["0"].decomposed and "do not save parameters" in plan["0"].reason
    forced = make_plan(model, FixedRank(8, allow_larger=True))
    assert forced["0"].decomposed and "adds parameters" in forced["0"].reason


def test_energy_and_vbmf_policies_give_ranks():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 64), nn.Conv2d(16, 32, 3))
    with torch.no_grad():  # plant a rank-5 structure in the Linear
        model[0].weight.copy_(torch.randn(64, 5) @ torch.randn(5, 64))
    assert make_plan(model, Energy(0.999))["0"].ranks == [5]
    assert make_plan(model, VBMF())["0"].ranks == [5]
    assert len(make_plan(model, Energy(0.5))["1"].ranks) == 2


def test_channel_svd_method_for_kxk_convs():
    model = nn.Sequential(nn.Conv2d(32, 64, 3, padding=1))
    plan = make_plan(model, Ratio(2), method="channel_svd")
    assert plan["0"].method == "channel_svd"
    out = decompose(model, plan)
    assert [type(m) for m in out[0]] == [nn.Conv2d, nn.Conv2d] and out[0].first.kernel_size == (3, 3)


# --- bad input: a clear ValueError, and the model left unchanged --------------------------------------

def _tiny():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 16, 3), nn.ReLU(), nn.Conv2d(16, 16, 1), nn.Flatten(), nn.LazyLinear(10))


def _model():
    m = nn.Sequential(nn.Conv2d(3, 16, 3), nn.ReLU(), nn.Conv2d(16, 16, 1), nn.Flatten(), nn.Linear(16 * 6 * 6, 10))
    torch.manual_seed(0)
    return m


def _with_nan(m):
    with torch.no_grad():
        m[2].weight[0, 0] = float("nan")
    return m


def _resnet18_plan():
    return make_plan(lrdlab.get_model("resnet18"), Ratio(2))


BAD_PLAN_CALLS = {  # each builds its configs inside the call, so a config's own check counts too
    "rank 0": lambda m: make_plan(m, FixedRank(0)),
    "negative rank": lambda m: make_plan(m, FixedRank(-3)),
    "rank above min dim": lambda m: make_plan(m, FixedRank({"2": 17})),
    "rank above min dim tucker": lambda m: make_plan(m, FixedRank({"0": (4, 99)})),
    "ratio 1": lambda m: make_plan(m, Ratio(1)),
    "ratio below 1": lambda m: make_plan(m, Ratio(0.5)),
    "ratio nan": lambda m: make_plan(m, Ratio(float("nan"))),
    "ratio inf": lambda m: make_plan(m, Ratio(float("inf"))),
    "ratio string": lambda m: make_plan(m, Ratio("2")),
    "a number, not a policy": lambda m: make_plan(m, 2),
    "no policy": lambda m: make_plan(m, None),
    "the shared options, no kind": lambda m: make_plan(m, RankPolicy()),
    "energy 0": lambda m: make_plan(m, Energy(0)),
    "energy above 1": lambda m: make_plan(m, Energy(1.5)),
    "granularity 0": lambda m: make_plan(m, Ratio(2, granularity=0)),
    "granularity float": lambda m: make_plan(m, Ratio(2, granularity=2.5)),
    "unknown method": lambda m: make_plan(m, Ratio(2), method="tt"),
    "options not an options object": lambda m: make_plan(m, Ratio(2), options="hooi"),
    "options twice for one method": lambda m: make_plan(m, Ratio(2),
                                                        options=[Tucker2Options(), Tucker2Options(init="hooi")]),
    "unknown rounding": lambda m: make_plan(m, Ratio(2, rounding="sideways")),
    "unknown include": lambda m: make_plan(m, Ratio(2), Layers(include=["layer9.*"])),
    "unknown exclude": lambda m: make_plan(m, Ratio(2), Layers(exclude=["nope"])),
    "layers not a Layers": lambda m: make_plan(m, Ratio(2), ["conv1"]),
    "unknown rank dict name": lambda m: make_plan(m, FixedRank({"fc9": 3})),
    "rank string": lambda m: make_plan(m, FixedRank("half")),
    "branches 0": lambda m: make_plan(m, Ratio(2, branches=0)),
    "wrong number of ranks": lambda m: make_plan(m, FixedRank({"0": (2, 2, 2)})),
}


@pytest.mark.parametrize("case", sorted(BAD_PLAN_CALLS))
def test_bad_plan_arguments_raise_and_change_nothing(case):
    model = _model()
    before = copy.deepcopy(model.state_dict())
    structure = repr(model)
    with pytest.raises(ValueError) as err:
        BAD_PLAN_CALLS[case](model)
    assert len(str(err.value)) > 20
    assert repr(model) == structure
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def _plan_rank_out_of_range(m):
    plan = make_plan(m, Ratio(2, min_rank=1))
    plan["2"].ranks = [99]
    return plan


def _plan_with_unknown_layer(m):
    plan = make_plan(m, Ratio(2, min_rank=1))
    plan.layers[0].name = "features.0"
    return plan


BAD_DECOMPOSE = {
    "plan for another model": (lambda m: m, lambda m: _resnet18_plan(), "another model|make a new plan"),
    "NaN weights": (_with_nan, lambda m: make_plan(m, Ratio(2, min_rank=1)), "NaN"),
    "ranks out of range in plan": (lambda m: m, _plan_rank_out_of_range, "impossible"),
    "unknown layer in plan": (lambda m: m, _plan_with_unknown_layer, "names no layer"),
    "not a plan": (lambda m: m, lambda m: {"layers": []}, "Plan"),
    "plan of a different shape": (
        lambda m: m,
        lambda m: make_plan(nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 8, 1)), Ratio(2, min_rank=1)),
        "expects",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_DECOMPOSE))
def test_bad_decompose_raises_and_changes_nothing(case):
    prepare, make, pattern = BAD_DECOMPOSE[case]
    model = prepare(_model())
    plan = make(model)
    before = copy.deepcopy(model.state_dict())
    structure = repr(model)
    for inplace in (False, True):
        with pytest.raises(ValueError, match=pattern):
            decompose(model, plan, inplace=inplace)
        assert repr(model) == structure
        assert all(torch.equal(before[k], v) or torch.isnan(v).any() for k, v in model.state_dict().items())


def test_already_decomposed_model_is_refused():
    model = _model()
    plan = make_plan(model, Ratio(2, min_rank=1))
    small = decompose(model, plan)
    with pytest.raises(ValueError, match="already decomposed"):
        decompose(small, plan)


def test_bad_plan_json_is_refused(tmp_path):
    path = tmp_path / "plan.json"
    path.write_text(json.dumps({"model": "x", "layers": [{"name": "a"}]}))
    with pytest.raises(ValueError, match="not an lrdlab plan"):
        Plan.load(path)


def test_min_rank_keeps_a_squeezed_head_by_default_with_the_reason_and_one_turns_it_off():
    from lrdlab.lowrank.plan import MIN_RANK
    from lrdlab.zoo.cifar_models import resnet20

    model = resnet20()
    assert MIN_RANK == 6
    for ratio in (2, 3, 4):  # the default keeps the 10-class head and every 3x3 conv is still decomposed
        kept = {r.name: r for r in lrdlab.make_plan(model, lrdlab.Ratio(ratio), lrdlab.Layers(exclude="conv1")).layers}
        assert not kept["fc"].decomposed and "below min_rank=6" in kept["fc"].reason
        assert kept["fc"].params_after == kept["fc"].params_before
        assert all(r.decomposed for n, r in kept.items() if n not in ("conv1", "fc"))
    squeezed_plan = lrdlab.make_plan(model, lrdlab.Ratio(3, min_rank=1), lrdlab.Layers(exclude="conv1"))
    squeezed = {r.name: r for r in squeezed_plan.layers}
    assert squeezed["fc"].decomposed and squeezed["fc"].ranks == [2]


def test_min_rank_above_a_layers_dimensions_keeps_it_and_says_so():
    model = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.Linear(64, 4))
    rows = lrdlab.make_plan(model, lrdlab.Ratio(1.5, min_rank=8)).layers
    assert rows[0].decomposed
    assert not rows[1].decomposed and "dimensions (64→4) are below min_rank=8" in rows[1].reason
    with pytest.raises(ValueError, match="min_rank"):
        lrdlab.make_plan(model, lrdlab.Ratio(2, min_rank=0))
