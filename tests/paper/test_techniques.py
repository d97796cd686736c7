"""The branched-Tucker studies' BranchConfig and branch_sweep on a small model."""

from __future__ import annotations

import pytest

from lrdlab.measure.timing_config import TimingConfig
from lrdlab.paper.techniques import BranchConfig, branch_sweep


@pytest.mark.parametrize("kw, match", [
    ({"branches": (1, 3)}, r"granularity 8 is not a multiple of branches \[3\]; give granularity=24"),
    ({"branches": ()}, "branches must be positive ints"),
    ({"branches": (0,)}, "branches must be positive ints"),
    ({"granularity": 0}, "granularity must be a positive int"),
    ({"ratio": 1.0}, "ratio must be a compression ratio > 1"),
    ({"exclude": (1,)}, "exclude must be layer-name globs"),
])
def test_branch_config_names_the_bad_field(kw, match):
    with pytest.raises(ValueError, match=match):
        BranchConfig(**kw)


def test_branch_sweep_structure_and_speed_of_each_count():
    config = BranchConfig(branches=[1, 2], exclude=["conv1"])
    assert config.branches == (1, 2) and config.exclude == ("conv1",)
    result = branch_sweep("resnet20", config, batch=2, image_size=16, timing=None)
    assert [r["branches"] for r in result.rows] == [1, 2] and result.speed is None
    recorded = result.to_dict()
    assert recorded["ratio"] == 2.0 and recorded["granularity"] == 8 and recorded["exclude"] == ["conv1"]
    assert result.rows[1]["params"] < result.rows[0]["params"]  # the core as 2 groups: fewer parameters
    assert "weight_rel_error" in str(result) and "<table" in result._repr_html_()
    timed = branch_sweep("resnet20", config, batch=2, image_size=16,
                         timing=TimingConfig(rounds=1, warmup=0, repeats=1))
    assert timed.speed == {"harness": "lrdlab.compare", "rounds": 1, "warmup": 0, "repeats": 1}
    assert all("infer_speedup_pct" in r and "train_speedup_pct" in r for r in timed.rows)
    with pytest.raises(ValueError, match="config must be a BranchConfig"):
        branch_sweep("resnet20", (1, 2))  # type: ignore[arg-type]  # the old positional branches
