"""TimingConfig: one set of timing settings for compare, bench_plan, choose_plan and the sweeps."""

from __future__ import annotations

import dataclasses
import json

import pytest
from torch import nn

import lrdlab
from lrdlab.measure.bench import bench_plan
from lrdlab.measure.compare import compare, effective_limits, round_limits
from lrdlab.measure.timing_config import TimingConfig, check_timing


@pytest.mark.parametrize("kw, field, fix", [
    ({"rounds": 0}, "rounds", "int >= 1"),
    ({"rounds": True}, "rounds", "int >= 1"),
    ({"warmup": -1}, "warmup", "int >= 0"),
    ({"repeats": 2.5}, "repeats", "int >= 1"),
    ({"device": "banana"}, "device", "cpu"),
    ({"dtype": "int8"}, "dtype", "bf16"),
    ({"backend": "tensorrt"}, "backend", "onnxruntime"),
    ({"channels_last": "yes"}, "channels_last", "True or False"),
    ({"rounds": 5, "max_rounds": 3}, "max_rounds", "max_rounds=None"),
    ({"budget_s": -1.0}, "budget_s", "float('inf')"),
    ({"half_width": 0}, "half_width", "0.03"),
])
def test_a_bad_field_is_a_value_error_naming_it_and_the_fix(kw, field, fix):
    with pytest.raises(ValueError, match=field) as err:
        TimingConfig(**kw)
    assert fix in str(err.value)


def test_the_config_is_frozen_exported_and_checked_where_it_is_taken():
    timing = TimingConfig(rounds=3)
    with pytest.raises(dataclasses.FrozenInstanceError):
        timing.rounds = 4  # type: ignore[misc]
    assert lrdlab.TimingConfig is TimingConfig and "TimingConfig" in lrdlab.__all__
    assert check_timing(None, timing) is timing
    with pytest.raises(ValueError, match=r"timing must be a TimingConfig, got dict; e.g. timing=TimingConfig\("):
        check_timing({"rounds": 3}, timing)
    model = nn.Sequential(nn.Linear(4, 4))
    with pytest.raises(ValueError, match="timing must be a TimingConfig"):
        compare({"a": model}, (2, 4), "inference", 3)  # type: ignore[arg-type]  # the old positional rounds
    with pytest.raises(ValueError, match="timing must be a TimingConfig"):
        bench_plan(model, lrdlab.make_plan(model, lrdlab.FixedRank(2)), (2, 4), {"rounds": 3})  # type: ignore[arg-type]


def test_round_limits_fill_only_what_the_config_leaves_open():
    assert effective_limits(TimingConfig(rounds=5)) == (15, 600.0)  # 3·rounds, 600 s
    assert effective_limits(TimingConfig(rounds=2)) == (2, 600.0)  # too few rounds to adapt
    assert effective_limits(TimingConfig(rounds=5, max_rounds=7, budget_s=float("inf"))) == (7, None)
    with round_limits(factor=1, budget_s=120.0):
        assert effective_limits(TimingConfig(rounds=5)) == (5, 120.0)
        assert effective_limits(TimingConfig(rounds=5, max_rounds=9, budget_s=30.0)) == (9, 30.0)
    assert effective_limits(TimingConfig(rounds=5)) == (15, 600.0)  # restored


def test_bench_plan_records_the_limits_it_ran_under():
    model = nn.Sequential(nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 16))
    timing = TimingConfig(rounds=2, warmup=0, repeats=1, budget_s=float("inf"))
    report = bench_plan(model, lrdlab.make_plan(model, lrdlab.FixedRank(4)), (2, 16), timing)
    assert report.settings == {"rounds": 2, "max_rounds": 2, "budget_s": None, "warmup": 0, "repeats": 1,
                                  "dtype": "fp32", "channels_last": False, "backend": "eager"}
    assert report.inference.speedup.rounds == 2 and report.to_dict()["inference"]["speedup_pct"]["rounds"] == 2
    recorded = json.loads(json.dumps(report.to_dict()))  # the recorded form is JSON as it is
    assert recorded["params"] == dict(zip(("original", "decomposed"), report.params)) and "train" not in recorded
    assert str(report).splitlines()[-1].startswith("inference") and "95% CI" in str(report)
