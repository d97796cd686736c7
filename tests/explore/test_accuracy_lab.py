"""The explorers' accuracy seam: BN re-estimation, the calibrated decomposition, and the readout it feeds."""

import copy
import os

import pytest
import torch
from torch import nn

from lrdlab.explore import accuracy_lab
from lrdlab.lowrank.plan import make_plan


def _net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1),
                         nn.BatchNorm2d(8), nn.Flatten(), nn.Linear(8 * 6 * 6, 10))


def test_calibrated_decompose_leaves_the_original_untouched():
    net = _net().eval()
    before = copy.deepcopy(net.state_dict())
    plan = make_plan(net, ratio=2)
    out = accuracy_lab.calibrated_decompose(net, plan, [torch.randn(4, 3, 6, 6)])
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    assert out is not net and not out.training
    with pytest.raises(ValueError, match="calibration"):
        accuracy_lab.calibrated_decompose(net, plan, [])


@pytest.mark.slow
def test_rank_explorer_accuracy_moves_with_the_ratio(tmp_cache):
    from lrdlab.explore.widgets import RankExplorer

    ex = RankExplorer(auto_measure=False)
    assert "trained" in ex.model.value
    key = next(k for k in ex.network["accuracy"] if k.startswith("rounded"))
    first = ex.network["accuracy"][key]["accuracy"]
    assert first > 50 and "test accuracy" in ex.net_readout.value
    ex.ratio.value = 4.0
    key = next(k for k in ex.network["accuracy"] if k.startswith("rounded"))
    assert ex.network["accuracy"][key]["accuracy"] != first and "α=4" in ex.readout.value
    print(f"accuracy update: {ex.render_seconds[-1]:.2f} s")
    ex.model.value = "resnet18"  # the trained model's layers do not exist there: the layer follows the model
    assert ex.state["model"] == "resnet18" and ex.state["layer"] == ex.layer.value in ex.layer.options
    assert "untrained" in ex.net_readout.value and "accuracy means nothing" in ex.net_readout.value


def test_prefetch_scores_new_plans_together_like_one_at_a_time(tmp_cache):
    from lrdlab.explore.network_lab import network_plan

    lab = accuracy_lab.AccuracyLab()
    plans = [network_plan(lab.model, r, 1) for r in (2.0, 3.0)]
    threads = torch.get_num_threads()
    lab.prefetch(plans)  # both new: computed at once, one per core
    assert torch.get_num_threads() == threads
    together = [lab.memo.get(accuracy_lab.plan_key(p) + accuracy_lab.CALIBRATION[:4]) for p in plans]
    lab.memo.clear()
    alone = [lab.accuracy(p) for p in plans]
    if (os.cpu_count() or 1) > 1:  # on one core prefetch leaves the work to accuracy()
        assert together == alone
