"""make_plan's configs: one frozen rank policy per kind and Layers, checked when made, recorded in plans the way
plans have always recorded them (so plan files written before the configs still load)."""

import dataclasses
import json

import numpy as np
import pytest
import torch
from torch import nn

import lrdlab
from lrdlab import VBMF, Energy, FixedRank, Layers, RankPolicy, Ratio, decompose, make_plan
from lrdlab.lowrank.decompose import load_decomposed, save_decomposed
from lrdlab.lowrank.plan import MIN_RANK, Plan

# what make_plan(model, ratio=2, granularity=2, exclude="0", min_rank=1) wrote before the configs existed
OLD_PLAN = {
    "model": "Sequential",
    "settings": {"policy": "ratio", "value": 2.0, "granularity": 2, "rounding": "down", "method": "auto",
                 "options": {"tucker2": {"init": "hooi", "sweeps": 1}}, "beta": 1.0, "branches": 1, "include": [],
                 "exclude": ["0"], "allow_larger": False, "force": [],
                 "probe": "not probed: no input known; pass make_plan(..., input_shape=...) or example_input= so "
                          "layers the forward never calls are kept"},
    "layers": [
        {"name": "0", "type": "Conv2d", "in_channels": 8, "out_channels": 16, "kernel_size": [3, 3], "method": None,
         "ranks": None, "params_before": 1168, "params_after": 1168, "reason": "excluded by '0'",
         "target_ranks": None, "branches": 1},
        {"name": "2", "type": "Conv2d", "in_channels": 16, "out_channels": 16, "kernel_size": [3, 3],
         "method": "tucker2", "ranks": [8, 8], "params_before": 2320, "params_after": 848,
         "reason": "ratio 2, rounded 9,9→8,8 (g=2)", "target_ranks": [9, 9], "branches": 1},
    ],
}


def _net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(8, 16, 3), nn.ReLU(), nn.Conv2d(16, 16, 3)).eval()


def test_a_plan_written_before_the_configs_loads_and_decomposes_the_same(tmp_path):
    net = _net()
    old = Plan.from_dict(json.loads(json.dumps(OLD_PLAN)))
    new = make_plan(net, Ratio(2, granularity=2, min_rank=1), Layers(exclude="0"))
    assert [(r.name, r.method, r.ranks, r.reason) for r in old.layers] == \
        [(r.name, r.method, r.ranks, r.reason) for r in new.layers]
    assert old.policy == Ratio(2, granularity=2)  # min_rank was not recorded then: it reads as the default
    old_settings = set(OLD_PLAN["settings"])
    assert old_settings <= set(new.settings)
    assert set(new.settings) - old_settings == {"min_rank", "model_params", "uncovered"}
    small = decompose(net, old)
    save_decomposed(small, old, tmp_path)
    (tmp_path / "plan.json").write_text(json.dumps(OLD_PLAN))  # the folder as an older lrdlab saved it
    again = load_decomposed(tmp_path, _net())
    x = torch.randn(2, 8, 12, 12)
    with torch.no_grad():
        torch.testing.assert_close(again(x), small(x))


@pytest.mark.parametrize("policy", [
    Ratio(3, granularity=4, rounding="nearest", beta=0.5, min_rank=2), Energy(0.9, granularity=2), VBMF(branches=2),
    FixedRank(4, allow_larger=True), FixedRank("full"), FixedRank({"2": [4, 6]}),
])
def test_a_plan_records_its_policy_and_reads_it_back(policy):
    plan = make_plan(_net(), policy, Layers(exclude="0"))
    assert Plan.from_dict(json.loads(plan.to_json())).policy == policy
    assert plan.settings["policy"] == policy.kind and plan.settings["exclude"] == ["0"]


def test_configs_are_frozen_normalised_and_readable():
    r = Ratio(np.float64(2), granularity=np.int64(8))
    assert (r.ratio, r.granularity, r.beta, r.min_rank, r.rounding) == (2.0, 8, 1.0, MIN_RANK, "down")
    assert type(r.granularity) is int and repr(r) == "Ratio(2.0, granularity=8)" and repr(VBMF()) == "VBMF()"
    with pytest.raises(dataclasses.FrozenInstanceError):
        r.ratio = 3
    assert dataclasses.replace(r, granularity=16) == Ratio(2, granularity=16)
    assert Layers(exclude="conv1").exclude == ("conv1",) and Layers(include=["a", "b"]).include == ("a", "b")
    assert FixedRank(torch.tensor(3)).rank == 3 and VBMF().value is True
    assert {"Ratio", "Energy", "VBMF", "FixedRank", "RankPolicy", "Layers"} <= set(lrdlab.__all__)
    assert lrdlab.Ratio is Ratio and lrdlab.Layers is Layers


@pytest.mark.parametrize("make, words", [
    (lambda: Ratio(1), "Ratio: ratio must be > 1"),
    (lambda: Ratio(2, rounding="sideways"), "Ratio: rounding must be one of"),
    (lambda: Ratio(2, beta=0), "Ratio: beta must be > 0"),
    (lambda: Ratio(2, min_rank=0), "Ratio: min_rank must be a positive integer"),
    (lambda: Energy(1.5), r"Energy: energy must be in \(0, 1\]"),
    (lambda: VBMF(granularity=0), "VBMF: granularity must be a positive integer"),
    (lambda: FixedRank("half"), "FixedRank: rank must be an int >= 1, 'full' or a dict"),
    (lambda: FixedRank({3: 4}), "FixedRank: a rank dict's keys are layer names"),
    (lambda: RankPolicy(), r"make one kind: Ratio\(2\)"),
    (lambda: Layers(exclude=["conv1", 3]), "Layers: exclude must be a glob pattern or a list"),
    (lambda: make_plan(_net(), 2), r"e.g. make_plan\(model, Ratio\(2\)\)"),
    (lambda: make_plan(_net(), Ratio(2), "0"), r"layers must be a Layers\(...\)"),
    (lambda: make_plan(_net(), FixedRank({"9": 4})), "the rank dict names layers that do not exist: \\['9'\\]"),
])
def test_a_bad_field_gets_a_value_error_that_names_it_and_a_fix(make, words):
    with pytest.raises(ValueError, match=words):
        make()


def test_ratio_only_options_are_not_options_of_the_other_kinds():
    with pytest.raises(TypeError):
        Energy(0.9, min_rank=1)
    with pytest.raises(TypeError):
        FixedRank(4, beta=2)
    # min_rank applies to ratio plans only: a fixed rank below it is planned
    assert make_plan(_net(), FixedRank(2), Layers(exclude="0"))["2"].ranks == [2, 2]
    assert not make_plan(_net(), Ratio(8), Layers(exclude="0"))["2"].decomposed


def test_a_recorded_plan_of_the_oldest_format_reads_its_policy():
    from pathlib import Path

    plan = Plan.load(Path(__file__).resolve().parents[2] / "data" / "optimize_resnet50_cpu_plan.json")
    assert plan.policy == Ratio(2) and plan.settings["exclude"] == ["conv1", "*.downsample.*"]
    assert plan.options_for("tucker2").init == "hosvd"  # its "tucker" setting, from before per-method options
    assert Plan(model="x", layers=[]).policy is None
