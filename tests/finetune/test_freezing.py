"""Freezing: which factors train, when the schedule switches, and that the optimizer never moves frozen weights."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lrdlab.finetune.freezing import Freezer, layer_order, low_rank_layers
from lrdlab.lowrank.layers import decompose_layer
from lrdlab.lowrank.methods import get_method


def tiny_decomposed(seed: int = 0) -> nn.Module:
    """conv3×3 (Tucker-2) → BN → conv1×1 (SVD) → pool → Linear (SVD) → Linear (kept)."""
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 8, 1),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 6), nn.ReLU(), nn.Linear(6, 4))
    model[0] = decompose_layer(model[0], "tucker2", (2, 4))
    model[3] = decompose_layer(model[3], "svd", (4,))
    model[6] = decompose_layer(model[6], "svd", (3,))
    return model


def trainable_map(model: nn.Module) -> dict[str, bool]:
    return {name: p.requires_grad for name, p in model.named_parameters()}


def train_steps(model: nn.Module, opt: torch.optim.Optimizer, steps: int, freezer: Freezer | None = None,
                set_to_none: bool = True) -> None:
    g = torch.Generator().manual_seed(1)
    for _ in range(steps):
        x, y = torch.randn(8, 3, 6, 6, generator=g), torch.randint(0, 4, (8,), generator=g)
        opt.zero_grad(set_to_none=set_to_none)
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
        if freezer is not None:
            freezer.step()


def test_regular_trains_core_or_last_and_keeps_the_rest_trainable():
    model = tiny_decomposed()
    Freezer(model, "regular")
    t = trainable_map(model)
    assert t["0.core.weight"] and not t["0.first.weight"] and not t["0.last.weight"] and not t["0.last.bias"]
    assert t["3.last.weight"] and not t["3.first.weight"]
    assert t["6.last.weight"] and not t["6.first.weight"]
    assert t["1.weight"] and t["1.bias"] and t["8.weight"] and t["8.bias"]  # BN and the kept Linear


def test_none_makes_every_factor_trainable_and_freeze_others_freezes_the_rest():
    model = tiny_decomposed()
    Freezer(model, "regular")
    Freezer(model, "none")
    assert all(trainable_map(model).values())
    f = Freezer(model, "regular", freeze_others=True)
    t = trainable_map(model)
    assert not t["1.weight"] and not t["8.weight"] and t["0.core.weight"]
    assert f.counts()["trainable"] == sum(p.numel() for n, p in model.named_parameters() if t[n])


@pytest.mark.parametrize("period", [1, 2, 3])
def test_sequential_switches_exactly_at_period_boundaries(period):
    model = tiny_decomposed()
    f = Freezer(model, "sequential", period=period, unit="iteration")
    tucker, svd = get_method("tucker2").sequential_order, get_method("svd").sequential_order
    for progress in range(4 * period * 3):
        changed = f.update(progress)
        assert changed == (progress > 0 and progress % period == 0), progress
        phase = progress // period
        t = trainable_map(model)
        for name in ("first", "core", "last"):
            assert t[f"0.{name}.weight"] == (name == tucker[phase % 3])
        for name in ("first", "last"):
            assert t[f"3.{name}.weight"] == (name == svd[phase % 2])
            assert t[f"6.{name}.weight"] == (name == svd[phase % 2])
        assert t["1.weight"] and t["8.weight"]
        # exactly one factor of each decomposed layer is trainable
        assert all(len(v) == 1 for v in f.trainable_factors().values())


def test_step_and_sync_follow_their_unit():
    model = tiny_decomposed()
    f = Freezer(model, "sequential", period=2, unit="epoch")
    assert not f.sync(epoch=1, iteration=50) and f.phase == 0
    assert f.sync(epoch=2, iteration=51) and f.phase == 1
    g = Freezer(model, "sequential", period=2, unit="iteration")
    assert [g.step() for _ in range(4)] == [False, True, False, True]
    assert g.progress == 4 and g.phase == 2


def test_order_is_configurable():
    model = tiny_decomposed()
    f = Freezer(model, "sequential", order=["first", "last"])
    assert f.orders["0"] == ("first", "last") and f.orders["3"] == ("first", "last")
    f = Freezer(model, "sequential", order={"tucker2": ["last", "core"]})
    assert f.orders["0"] == ("last", "core") and f.orders["3"] == get_method("svd").sequential_order
    layer = low_rank_layers(model)[0][1]
    assert layer_order(layer, ["core"]) == ("core",)


def test_bad_settings_raise_clear_errors():
    model = tiny_decomposed()
    with pytest.raises(ValueError, match="mode"):
        Freezer(model, "sometimes")
    with pytest.raises(ValueError, match="unit"):
        Freezer(model, "sequential", unit="batch")
    with pytest.raises(ValueError, match="period"):
        Freezer(model, "sequential", period=0)
    with pytest.raises(ValueError, match="unknown factor"):
        Freezer(model, "sequential", order=["middle"])
    with pytest.raises(ValueError, match="names no factor"):
        Freezer(model, "sequential", order=["core"])  # SVD layers have no core
    with pytest.raises(ValueError, match="decompose it first"):
        Freezer(nn.Linear(3, 3), "regular")
    with pytest.raises(ValueError, match="progress"):
        Freezer(model, "sequential").update(-1)


@pytest.mark.parametrize("make_opt", [
    lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, weight_decay=0.1),
    lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, weight_decay=0.1, nesterov=True),
    lambda p: torch.optim.AdamW(p, lr=0.01, weight_decay=0.1),
], ids=["sgd", "sgd-nesterov", "adamw"])
def test_frozen_weights_are_bit_identical_after_steps(make_opt):
    model = tiny_decomposed()
    Freezer(model, "regular")
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = make_opt(list(model.parameters()))  # all parameters, as fit() does
    train_steps(model, opt, 5)
    for name, p in model.named_parameters():
        if p.requires_grad:
            assert not torch.equal(p, before[name]), f"{name} should train"
        else:
            assert torch.equal(p, before[name]), f"{name} moved while frozen"
            assert p.grad is None


@pytest.mark.parametrize("set_to_none", [True, False])
def test_no_momentum_drift_after_a_factor_is_frozen(set_to_none):
    """A factor trained (building momentum), then frozen, must not move again — not even by weight decay."""
    model = tiny_decomposed()
    f = Freezer(model, "sequential", period=3, unit="iteration")
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=0.1)
    train_steps(model, opt, 3, f, set_to_none)  # phase 0: core / last trained, momentum built up
    assert f.phase == 1 and opt.state[model[0].core.weight]["momentum_buffer"].abs().sum() > 0
    snapshot = {n: p.detach().clone() for n, p in model.named_parameters()}
    frozen_now = [n for n, p in model.named_parameters() if not p.requires_grad]
    assert "0.core.weight" in frozen_now and "3.last.weight" in frozen_now
    train_steps(model, opt, 2, f, set_to_none)  # still phase 1
    for name in frozen_now:
        assert torch.equal(dict(model.named_parameters())[name], snapshot[name]), name
    assert not torch.equal(model[0].first.weight, snapshot["0.first.weight"])  # phase 1 trains Tucker first


def test_frozen_factors_get_no_gradient():
    model = tiny_decomposed()
    Freezer(model, "regular")
    nn.functional.cross_entropy(model(torch.randn(4, 3, 6, 6)), torch.tensor([0, 1, 2, 3])).backward()
    assert model[0].first.weight.grad is None and model[0].last.weight.grad is None
    assert model[0].core.weight.grad is not None and model[3].last.weight.grad is not None


def test_state_dict_roundtrip_restores_the_phase():
    model = tiny_decomposed()
    f = Freezer(model, "sequential", period=2, unit="iteration")
    f.update(5)
    expected = trainable_map(model)
    g = Freezer(tiny_decomposed(), "sequential", period=2, unit="iteration")
    g.load_state_dict(f.state_dict())
    assert g.phase == 2 and trainable_map(g.model) == expected
    with pytest.raises(ValueError, match="period"):
        Freezer(tiny_decomposed(), "sequential", period=3, unit="iteration").load_state_dict(f.state_dict())
