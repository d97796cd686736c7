"""The explorers' accuracy seam: BN re-estimation, the calibrated decomposition, and the readout it feeds."""

import copy
import os

import pytest
import torch
from torch import nn

from lrdlab import decompose
from lrdlab.explore import accuracy_lab
from lrdlab.lowrank.plan import Ratio, make_plan


def _net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1),
                         nn.BatchNorm2d(8), nn.Flatten(), nn.Linear(8 * 6 * 6, 10))


def test_the_calibrated_decomposition_the_explorers_score_leaves_the_original_untouched():
    net = _net().eval()
    before = copy.deepcopy(net.state_dict())
    plan = make_plan(net, Ratio(2))
    out = decompose(net, plan, calibration=[torch.randn(4, 3, 6, 6)])
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    assert out is not net and not out.training
    with pytest.raises(ValueError, match="calibration"):
        decompose(net, plan, calibration=[])

@pytest.mark.slow
def _network_ready(ex) -> None:
    """Wait for the network readout's worker (not for the accuracy scoring it may start)."""
    while (thread := ex._net_thread) is not None:
        thread.join()


def test_rank_explorer_accuracy_moves_with_the_ratio(tmp_cache):
    from lrdlab.explore.widgets import RankExplorer

    ex = RankExplorer(auto_measure=False)
    ex.wait()  # a setting off the shipped grid is scored in the background
    assert "trained" in ex.model.value
    key = next(k for k in ex.network["accuracy"] if k.startswith("rounded"))
    first = ex.network["accuracy"][key]["accuracy"]
    assert first > 50 and "test accuracy" in ex.net_readout.value
    ex.ratio.value = 4.0
    ex.wait()
    key = next(k for k in ex.network["accuracy"] if k.startswith("rounded"))
    assert ex.network["accuracy"][key]["accuracy"] != first and "α=4" in ex.readout.value
    print(f"accuracy update: {ex.render_seconds[-1]:.2f} s")
    ex.model.value = "resnet18"  # the trained model's layers do not exist there: the layer follows the model
    ex.wait()  # the network readout follows the move in a worker thread
    assert ex.state["model"] == "resnet18" and ex.state["layer"] == ex.layer.value in ex.layer.options
    assert "untrained" in ex.net_readout.value and "accuracy means nothing" in ex.net_readout.value


def test_prefetch_scores_new_plans_together_like_one_at_a_time(tmp_cache):
    from lrdlab.explore.network_lab import network_plan

    lab = accuracy_lab.AccuracyLab(use_grid=False)  # score here, not from the shipped grid
    plans = [network_plan(lab.model, r, 1) for r in (2.0, 3.0)]
    threads = torch.get_num_threads()
    lab.prefetch(plans)  # both new: computed at once, one per core
    assert torch.get_num_threads() == threads
    together = [lab.memo.get(accuracy_lab.plan_key(p) + accuracy_lab.CALIBRATION[:4]) for p in plans]
    lab.memo.clear()
    alone = [lab.accuracy(p) for p in plans]
    if (os.cpu_count() or 1) > 1:  # on one core prefetch leaves the work to accuracy()
        assert together == alone


@pytest.mark.parametrize("name", ["resnet20_mnist5k", "vit_tiny_mnist5k"])
def test_the_shipped_grid_is_what_the_explorer_would_score(tmp_cache, name):
    """The grid file is read (same weights, calibration, images), small, and states the README's original accuracy."""
    from lrdlab.explore.network_lab import network_plan
    from lrdlab.measure.cache import read_json
    from lrdlab.zoo.pretrained import kept_stem, pretrained_info
    from tools.record.explorer_grids import grid_settings

    path = accuracy_lab.grid_path(name)
    grid = read_json(path)
    assert grid and path.stat().st_size < 300_000
    lab = accuracy_lab.AccuracyLab(name)
    assert {k: grid[k] for k in lab.settings()} == lab.settings(), "re-record: python -m tools.record.explorer_grids"
    assert lab.settings()["test_images"] == 1000
    assert lab.original() == pretrained_info(name).test_accuracy  # the README's 97.7% for ResNet-20
    assert lab.source() == "recorded grid"
    recorded = {(r["ratio"], r["granularity"], r["rounding"]) for r in grid["rows"]}
    assert set(grid_settings(name)) == recorded
    plan = network_plan(lab.model, 2.0, 8, "down", kept_stem(pretrained_info(name).model))  # the opening setting
    assert lab.known(plan) and lab.source(plan) == "recorded grid"
    row = next(r for r in grid["rows"] if (r["ratio"], r["granularity"], r["rounding"]) == (2.0, 8, "down"))
    assert row["plan"] == accuracy_lab.plan_key(plan) and row["layers"] == len(plan.decomposed_layers)
    from lrdlab.explore.network_lab import NetworkLab

    counted = NetworkLab().counts(name, lab.model, plan, pretrained_info(name).input_size)
    assert lab.structure(plan) == counted  # the explorer's counts from the file equal the counted ones


@pytest.mark.slow
def test_slider_moves_on_the_grid_answer_from_the_file_off_grid_in_the_background(tmp_cache):
    import statistics

    from lrdlab.explore.widgets import RankExplorer

    ex = RankExplorer(auto_measure=False)
    ex.render_seconds.clear()
    for ratio in (3.0, 4.0, 2.0, 6.0, 1.5, 2.0, 3.0, 4.0, 6.0, 2.0):  # all on the shipped grid at g=8, down
        ex.ratio.value = ratio
        _network_ready(ex)
        acc = ex.network["accuracy"]
        assert all(a["source"] == "recorded grid" for a in acc.values()) and ex._job is None
    print(f"grid moves: median {1000 * statistics.median(ex.render_seconds):.0f} ms over 10 (figures drawn anew)")
    ex.granularity.value = 4  # off the grid: scored here in the background, with a progress bar
    _network_ready(ex)
    rounded = next(k for k in ex.network["accuracy"] if k.startswith("rounded"))
    assert ex.network["accuracy"][rounded].get("pending") and "background" in ex.net_readout.value
    assert ex.scoring.layout.visibility == "visible"
    ex.wait()
    assert ex.network["accuracy"][rounded]["source"] == "scored here" and "scored here" in ex.net_readout.value
    assert ex.scoring.layout.visibility == "hidden" and ex.scoring.value == ex.scoring.max
