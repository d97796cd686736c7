"""Issue 13 through the explorers' pure labs: what a notebook user types into the rank explorer's controls."""

import numpy as np
import pytest

pytest.importorskip("matplotlib")

from lrdlab.explore import rank_lab  # noqa: E402


@pytest.fixture
def lab(tmp_cache):
    return rank_lab.RankLab(cache=rank_lab.TimeCache(path=tmp_cache / "t.json", reference=None), batch=2)


def test_numpy_values_from_a_notebook_work_like_python_numbers(lab):
    plain = lab.state("resnet20", "layer1.0.conv1", 2.0, 4)
    numpy = lab.state("resnet20", "layer1.0.conv1", np.float32(2), np.int64(4))
    assert numpy["ranks"] == plain["ranks"] and numpy["params_after"] == plain["params_after"]


def test_the_3_channel_stem_gets_the_tucker1_form_not_a_useless_factor(lab):
    state = lab.state("resnet20", "conv1", 2.0, 1)
    assert len(state["ranks"]) == 1 and state["method"] == "channel_svd"
    assert 1.9 < state["compression_ratio"] <= 2.2


@pytest.mark.parametrize("ratio, granularity, match", [
    (1.0, 1, "ratio must be > 1"),
    (2.0, 0, "granularity must be a positive integer"),
    ("2", 1, "ratio must be a finite real number"),
])
def test_impossible_controls_get_a_value_error(lab, ratio, granularity, match):
    with pytest.raises(ValueError, match=match):
        lab.state("resnet20", "layer1.0.conv1", ratio, granularity)


def test_the_stem_keeps_one_form_at_every_ratio(lab):
    for ratio in (1.5, 2.0, 8.0):  # at 8 Tucker-2 would not reach the 3 channels: the form must not flip
        state = lab.state("resnet20", "conv1", ratio, 1)
        assert state["method"] == "channel_svd" and len(state["ranks"]) == 1


def test_the_stems_figure_shows_the_spectrum_of_its_form(lab):
    state = lab.state("resnet34", "conv1", 2.0, 1)  # 3→64 7×7: channel_svd rank 22 of a 64-value spectrum
    assert len(lab.layer("resnet34", "conv1").spectra[0]) == 64 > state["ranks"][0]
    assert lab.figure(state) is not None
