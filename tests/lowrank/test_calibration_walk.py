"""The walk of a calibrated decomposition (lrdlab.lowrank.calibration_walk): chains found by watching a forward,
inputs cached along them, and the network run about once per part outside them, not once per layer."""

import pytest
import torch
import torchvision.models as tv
from torch import nn
from torchvision.models._utils import IntermediateLayerGetter
from torchvision.models.segmentation.deeplabv3 import ASPP, DeepLabHead, DeepLabV3

import lrdlab
from lrdlab.lowrank.calibration import calibrated_decompose
from lrdlab.lowrank.calibration_walk import probe


def _tiny_deeplab() -> nn.Module:
    """torchvision's DeepLabV3 on a 0.25-wide dilated MobileNetV3 backbone (IntermediateLayerGetter) and a head of
    DeepLabHead's shape (an ASPP with dilated branches, a 3×3 conv, a 1×1 classifier) only 16 channels wide."""
    torch.manual_seed(0)
    features = tv.mobilenet_v3_large(width_mult=0.25, dilated=True).features
    backbone = IntermediateLayerGetter(features, {str(len(features) - 1): "out"})
    head = nn.Sequential(ASPP(features[-1].out_channels, (2, 4), 16), nn.Conv2d(16, 16, 3, padding=1, bias=False),
                         nn.BatchNorm2d(16), nn.ReLU(), nn.Conv2d(16, 3, 1))
    return DeepLabV3(backbone, head).eval()


def _images(n: int = 2, size: int = 64) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return [torch.randn(4, 3, size, size, generator=g) for _ in range(n)]


class _Counter:
    """Counts the calls of a module (a forward pre-hook, so a pass stopped early counts too)."""

    def __init__(self, module: nn.Module) -> None:
        self.calls = 0
        module.register_forward_pre_hook(self)

    def __call__(self, module, args) -> None:
        self.calls += 1

    def __deepcopy__(self, memo) -> "_Counter":  # the copies calibrated_decompose works on count here too
        return self


def test_probe_finds_chains_by_the_tensors_children_hand_on():
    class Residual(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b, self.c = nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 4)

        def forward(self, x):
            return self.c(self.b(self.a(x)) + x)  # c takes a sum, not b's output: the chain is a, b

    net = nn.Sequential(nn.Linear(4, 4), Residual(), nn.Sequential(nn.Linear(4, 4), nn.ReLU(inplace=True),
                                                                   nn.Linear(4, 4)))
    got = probe(net, ["0", "1.a", "1.c", "2.0", "2.2"], torch.randn(2, 4))
    assert got.order == ["0", "1.a", "1.c", "2.0", "2.2"]
    # an in-place ReLU inside a chain is fine: it runs once on a tensor nothing else needs
    assert got.chains == {"": ("0", "1", "2"), "1": ("a", "b"), "2": ("0", "1", "2")}


class _Halve(nn.Module):
    """Halves its input in place, then a Linear: rerun on cached inputs, it would halve them again."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(8, 8)

    def forward(self, x):
        return self.lin(x.mul_(0.5))


def _without_chains(monkeypatch) -> None:
    real = probe

    def no_chains(*args):
        got = real(*args)
        got.chains.clear()
        return got

    monkeypatch.setattr("lrdlab.lowrank.calibration.probe", no_chains)


def test_a_child_that_changes_its_input_in_place_ends_the_chain(monkeypatch):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(8, 8), _Halve(), nn.Linear(8, 3)).eval()
    xs = [torch.randn(16, 8) for _ in range(2)]
    assert probe(net, ["0", "1.lin", "2"], xs[0]).chains == {"": ("0",)}
    plan = lrdlab.make_plan(net, lrdlab.Ratio(2, min_rank=1))
    cached = calibrated_decompose(net, plan, xs)
    _without_chains(monkeypatch)
    whole = calibrated_decompose(net, plan, xs)
    x = torch.randn(4, 8)
    torch.testing.assert_close(cached(x), whole(x))


def test_deeplab_backbone_and_head_are_chains():
    model = _tiny_deeplab()
    plan = lrdlab.make_plan(model, lrdlab.Ratio(2, min_rank=1),
                            lrdlab.Layers(example_input=torch.randn(1, 3, 64, 64)))
    chains = probe(model, [r.name for r in plan.decomposed_layers], torch.randn(1, 3, 64, 64)).chains
    assert chains[""] == ("backbone",)  # the head takes features["out"], not the backbone's dict
    assert chains["backbone"] == tuple(str(i) for i in range(17))  # IntermediateLayerGetter: every block
    assert chains["classifier"] == ("0", "1", "2", "3", "4")


@pytest.mark.filterwarnings("ignore:layer .* rows")
@pytest.mark.parametrize("mode", ["corrected", "sequential", "one-shot"])
def test_deeplab_runs_about_once_per_part_outside_the_chains_not_once_per_layer(mode):
    """Before the fit: one trial and one probe forward. Per batch: the head's inputs once in the decomposed and
    once in the original network, and one pass to re-estimate BatchNorm (one-shot: one pass instead)."""
    model = _tiny_deeplab()
    xs = _images()
    plan = lrdlab.make_plan(model, lrdlab.Ratio(2, min_rank=1), lrdlab.Layers(example_input=xs[0][:1]))
    passes, backbone = _Counter(model), _Counter(model.backbone[str(len(model.backbone) - 1)])
    calibrated_decompose(model, plan, xs, mode=mode, progress=False)
    assert len(plan.decomposed_layers) > 40
    assert passes.calls <= 2 + 3 * len(xs)
    assert backbone.calls <= 2 + 3 * len(xs)  # the backbone's last block: whole backbone passes


@pytest.mark.filterwarnings("ignore:layer .* rows")  # the head's few positions: its fit leans on the ridge
@pytest.mark.parametrize("mode", ["corrected", "sequential"])
def test_cached_chains_give_the_model_that_whole_network_runs_give(mode, monkeypatch):
    model = _tiny_deeplab()
    xs = _images()
    plan = lrdlab.make_plan(model, lrdlab.Ratio(2, min_rank=1), lrdlab.Layers(example_input=xs[0][:1]))
    cached = calibrated_decompose(model, plan, xs, mode=mode, progress=False)
    _without_chains(monkeypatch)
    passes = _Counter(model)
    whole = calibrated_decompose(model, plan, xs, mode=mode, progress=False)
    assert passes.calls > 2 * len(plan.decomposed_layers)  # without chains: once per layer and batch
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(cached(x)["out"], whole(x)["out"], atol=1e-5, rtol=1e-4)


@pytest.mark.slow
def test_torchvision_deeplabv3_calibrates_in_a_few_network_passes():
    torch.manual_seed(0)
    model = tv.segmentation.deeplabv3_mobilenet_v3_large(weights=None, weights_backbone=None, num_classes=3).eval()
    xs = _images(2, 96)
    plan = lrdlab.make_plan(model, lrdlab.Ratio(2), lrdlab.Layers(example_input=xs[0][:1]))
    passes = _Counter(model)
    out = calibrated_decompose(model, plan, xs)
    assert passes.calls <= 2 + 3 * len(xs) < len(plan.decomposed_layers)
    assert isinstance(model.classifier, DeepLabHead)  # the real head: ASPP with rates 12, 24, 36
    with torch.no_grad():
        assert torch.isfinite(out(xs[0])["out"]).all()
