"""Issue 13 for the fine-tuning stage: the user's own flags, stale optimizer state, and what loaders really send."""

from __future__ import annotations

import copy
import re
from dataclasses import FrozenInstanceError, replace

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lrdlab.finetune.fit_config import FitConfig
from lrdlab.finetune.freezing import Freezer
from lrdlab.finetune.loop import evaluate, fit
from lrdlab.lowrank.layers import decompose_layer


def tucker_net(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                          nn.Flatten(), nn.Linear(8, 4))
    model[0] = decompose_layer(model[0], "tucker2", (2, 4))
    return model


def loader(n: int = 16, classes: int = 4, batch: int = 8) -> DataLoader:
    g = torch.Generator().manual_seed(0)
    data = TensorDataset(torch.randn(n, 3, 6, 6, generator=g), torch.randint(0, classes, (n,), generator=g))
    return DataLoader(data, batch_size=batch)


QUIET = FitConfig(progress=False)  # one epoch


class DictData(torch.utils.data.Dataset):
    def __init__(self, keys=("pixel_values", "labels")) -> None:
        self.base, self.keys = loader(16).dataset, keys

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i):
        x, y = self.base[i]
        return {self.keys[0]: x, self.keys[1]: y}


# --- 5. the user's own requires_grad -----------------------------------------------------------------


@pytest.mark.parametrize("mode", ["none", "regular", "sequential"])
def test_freezer_never_unfreezes_what_the_user_froze(mode):
    model = tucker_net()
    model[1].weight.requires_grad_(False)  # the user freezes BN's scale
    model[0].core.weight.requires_grad_(False)  # ... and the core
    freezer = Freezer(model, mode)
    for progress in range(4):
        freezer.update(progress)
        assert not model[1].weight.requires_grad and not model[0].core.weight.requires_grad
    assert model[1].bias.requires_grad and model[5].weight.requires_grad


def test_a_second_freezer_undoes_the_first_but_not_the_user():
    model = tucker_net()
    model[5].bias.requires_grad_(False)
    Freezer(model, "regular")
    assert not model[0].first.weight.requires_grad
    twin = copy.deepcopy(model)  # a copy keeps the record of what the Freezer froze
    Freezer(twin, "none")
    Freezer(model, "none")
    for net in (model, twin):
        assert net[0].first.weight.requires_grad and not net[5].bias.requires_grad


# --- 6. stale optimizer state -------------------------------------------------------------------------


def sgd_step_of_core(reset: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(the core's change in its first step after being re-enabled, lr · its gradient then)."""
    model = tucker_net()
    freezer = Freezer(model, "sequential", period=1, unit="iteration", reset_optimizer_state=reset)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    freezer.attach_optimizer(opt)
    x, y = next(iter(loader()))
    core = model[0].core.weight
    for step in range(4):  # phases core, first, last, core
        freezer.update(step)
        before = core.detach().clone()
        opt.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(model(x), y).backward()
        grad = None if core.grad is None else core.grad.detach().clone()
        opt.step()
    return core.detach() - before, -0.1 * grad


def test_a_reenabled_factor_starts_without_momentum_from_earlier_phases():
    change, plain = sgd_step_of_core(reset=True)
    assert torch.allclose(change, plain, atol=1e-7)
    stale, plain = sgd_step_of_core(reset=False)  # the documented opt-out keeps the old momentum
    assert not torch.allclose(stale, plain, atol=1e-4)


class WatchedFreezer(Freezer):
    """A Freezer that checks, at every phase change, that each factor coming back has no optimizer state left."""

    def attach_optimizer(self, optimizer):
        super().attach_optimizer(optimizer)
        self.watched = optimizer

    def apply(self):
        opt = getattr(self, "watched", None)
        params = list(self.model.parameters())
        was_on = {id(p) for p in params if p.requires_grad}
        had_state = set() if opt is None else {id(p) for p in opt.state}
        super().apply()
        back = [p for p in params if p.requires_grad and id(p) not in was_on and id(p) in had_state]
        self.returned = getattr(self, "returned", 0) + len(back)
        assert all(p not in opt.state for p in back), "a returning factor kept its old optimizer state"


def test_fit_resets_state_when_a_factor_comes_back():
    model = tucker_net()
    freezer = WatchedFreezer(model, "sequential", period=1, unit="iteration")
    fit(model, loader(32), loader(), FitConfig(lr=0.1, schedule="constant", progress=False), freezer)
    assert freezer.returned > 0  # fit attached its optimizer, and factors came back with state to drop


# --- bad inputs of the training loop -----------------------------------------------------------------


def test_an_empty_train_loader_is_a_clear_error():
    empty = DataLoader(TensorDataset(torch.randn(0, 3, 6, 6), torch.zeros(0, dtype=torch.long)), batch_size=4)
    with pytest.raises(ValueError, match="train_loader is empty"):
        fit(tucker_net(), empty, loader(), QUIET)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_cuda_without_cuda_is_a_clear_error():
    model = tucker_net()
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(ValueError, match="CUDA is not available here.*device='cpu'"):
        fit(model, loader(), loader(), QUIET, device="cuda")
    with pytest.raises(ValueError, match="CUDA is not available"):
        evaluate(model, loader(), device="cuda")
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_an_unknown_device_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown device 'gpu'"):
        fit(tucker_net(), loader(), loader(), QUIET, device="gpu")


def test_dict_batches_are_read_by_their_keys():
    data = DataLoader(DictData(), batch_size=8)
    history = fit(tucker_net(), data, data, QUIET)
    assert history["accuracy"].notna().all()
    with pytest.raises(ValueError, match=r"dict batch needs an input key.*got keys \['a', 'b'\]"):
        fit(tucker_net(), DataLoader(DictData(("a", "b")), batch_size=8), data, QUIET)


def test_labels_beyond_the_model_outputs_name_num_classes():
    with pytest.raises(ValueError, match="labels run from 0 to 9 but the model has 4 outputs.*num_classes=10"):
        fit(tucker_net(), loader(64, classes=10), loader(), QUIET)


def test_a_generator_is_not_a_loader():
    with pytest.raises(ValueError, match="re-iterable with a length"):
        fit(tucker_net(), (b for b in loader()), loader(), QUIET)


@pytest.mark.parametrize("epochs", [0, 2.5, "3", True])
def test_epochs_must_be_a_positive_int(epochs):
    with pytest.raises(ValueError, match=r"FitConfig: epochs must be an int >= 1 .*e\.g\. FitConfig\(epochs=1\)"):
        FitConfig(epochs=epochs)


@pytest.mark.parametrize("field, value, rule", [
    ("lr", 0, "lr must be a number > 0"), ("lr", float("nan"), "lr must be a number > 0"),
    ("lr", "0.1", "lr must be a number > 0"), ("optimizer", "lion", "optimizer must be one of \\('sgd', 'adamw'\\)"),
    ("momentum", 1.0, "momentum must be in \\[0, 1\\)"), ("weight_decay", -1e-4, "weight_decay must be a number >= 0"),
    ("schedule", "step", "schedule must be one of"), ("label_smoothing", 1.0, "label_smoothing must be in"),
    ("distill_alpha", 1.5, "distill_alpha must be in \\[0, 1\\]"), ("distill_temperature", 0, "distill_temperature"),
    ("clip_grad_norm", 0.0, "clip_grad_norm must be a number > 0, or None"), ("seed", -1, "seed must be an int >= 0"),
    ("seed", 2**32, "seed must be below 2\\*\\*32"), ("progress", "no", "progress must be True or False"),
    ("evaluate_start", 1, "evaluate_start must be True or False"), ("label", 3, "label must be a str"),
])
def test_fit_config_names_the_bad_field_and_the_fix(field, value, rule):
    with pytest.raises(ValueError, match=f"^FitConfig: {rule}") as err:
        FitConfig(**{field: value})
    fix = re.search(r"e\.g\. (FitConfig\(\w+=.*\))$", str(err.value))
    assert fix and fix.group(1).startswith(f"FitConfig({field}=")
    assert isinstance(eval(fix.group(1), {"FitConfig": FitConfig}), FitConfig)  # noqa: S307 - the fix it names works


def test_fit_config_is_a_frozen_recipe_and_fit_takes_no_loose_epochs():
    config = FitConfig(epochs=2, lr=0.01)
    assert replace(config, lr=0.02) == FitConfig(epochs=2, lr=0.02) and config.lr == 0.01
    with pytest.raises(FrozenInstanceError):
        config.lr = 0.1  # type: ignore[misc]
    with pytest.raises(ValueError, match=r"fit's 4th argument is a FitConfig, got int 3.*FitConfig\(epochs=3"):
        fit(tucker_net(), loader(), loader(), 3)  # the old fit(model, train, test, epochs)


def test_resume_without_a_checkpoint_and_a_folder_as_checkpoint(tmp_path):
    with pytest.raises(ValueError, match="resume=True needs checkpoint=PATH"):
        fit(tucker_net(), loader(), loader(), QUIET, resume=True)
    with pytest.raises(ValueError, match="is a folder; give a file path"):
        fit(tucker_net(), loader(), loader(), QUIET, checkpoint=tmp_path)


def test_a_diverging_loss_stops_with_advice():
    model = tucker_net()
    with torch.no_grad():
        model[5].weight.fill_(float("nan"))
    with pytest.raises(ValueError, match="training loss became nan.*lower the learning rate"):
        fit(model, loader(), loader(), QUIET)


def test_model_outputs_with_logits_are_read_and_others_refused():
    class HFStyle(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = tucker_net()

        def forward(self, x):
            return {"logits": self.net(x)}

    assert evaluate(HFStyle(), loader())["images"] == 16

    class Pair(HFStyle):
        def forward(self, x):
            return self.net(x), None

    with pytest.raises(ValueError, match="returned a tuple, not a tensor of class scores"):
        evaluate(Pair(), loader())


@pytest.mark.parametrize("kw, match", [
    ({"period": 0}, "period must be a positive int"),
    ({"period": 2.0}, "period must be a positive int"),
    ({"order": "core"}, "not the string 'core'"),
])
def test_freezer_settings(kw, match):
    with pytest.raises(ValueError, match=match):
        Freezer(tucker_net(), "sequential", **kw)
    import numpy as np

    assert Freezer(tucker_net(), "sequential", period=np.int64(2)).period == 2
