"""Layer merging: exact primitives are exact, merged bottlenecks have the original structure."""

import copy

import pytest
import torch
import torchvision
from torch import nn

from lrdlab import FixedRank, Layers, Ratio, count_params, decompose, make_plan
from lrdlab.lowrank.layers import LowRankLayer
from lrdlab.lowrank.merge import (
    BN_MODES,
    calibrate_bn,
    find_bottlenecks,
    fold_bn,
    merge_bottlenecks,
    merge_linear,
    merge_report,
)
from lrdlab.measure.counting import count_layers
from lrdlab.zoo.cifar_models import bottleneck_net

torch.set_num_threads(1)


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


def randomise_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial BN statistics and affine parameters, so folding them is really tested."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                n = m.num_features
                m.running_mean.copy_(torch.randn(n, generator=g) * 0.3)
                m.running_var.copy_(torch.rand(n, generator=g) * 1.5 + 0.5)
                m.weight.copy_(torch.rand(n, generator=g) + 0.5)
                m.bias.copy_(torch.randn(n, generator=g) * 0.2)
    return model


def no_relu(model: nn.Module) -> nn.Module:
    """The same model with every block's ReLU removed: then merging across BN is exact."""
    for m in model.modules():
        if hasattr(m, "relu"):
            m.relu = nn.Identity()
    return model


def small(**kw) -> nn.Module:
    torch.manual_seed(0)
    return randomise_bn(bottleneck_net(num_classes=10, **kw)).double().eval()


def convs(model: nn.Module) -> int:
    return sum(isinstance(m, nn.Conv2d) for m in model.modules())


# --- merge_linear ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("bias_a,bias_b", [(False, False), (True, False), (False, True), (True, True)])
def test_merge_linear_linear_is_exact(bias_a, bias_b):
    torch.manual_seed(0)
    a, b = nn.Linear(7, 5, bias=bias_a).double(), nn.Linear(5, 3, bias=bias_b).double()
    m = merge_linear(a, b)
    x = torch.randn(11, 7, dtype=torch.float64)
    assert isinstance(m, nn.Linear) and (m.in_features, m.out_features) == (7, 3)
    assert (m.bias is not None) == (bias_a or bias_b)
    assert rel_err(m(x), b(a(x))) < 1e-13


@pytest.mark.parametrize("kernel,stride_a,stride_b,padding,dilation", [
    (1, 1, 1, 0, 1), (1, 2, 1, 0, 1), (1, 1, 2, 0, 1), (1, 2, 3, 0, 1),
    (3, 1, 1, 1, 1), (3, 2, 2, 1, 1), (3, 1, 2, 2, 2), ((3, 1), (2, 1), (1, 2), (1, 0), 1), (5, 3, 2, 0, 1),
])
@pytest.mark.parametrize("bias_a,bias_b", [(False, False), (True, True), (True, False)])
def test_merge_conv_then_1x1_is_exact(kernel, stride_a, stride_b, padding, dilation, bias_a, bias_b):
    torch.manual_seed(1)
    a = nn.Conv2d(4, 6, kernel, stride=stride_a, padding=padding, dilation=dilation, bias=bias_a).double()
    b = nn.Conv2d(6, 5, 1, stride=stride_b, bias=bias_b).double()
    m = merge_linear(a, b)
    for size in (13, 16):
        x = torch.randn(2, 4, size, size + 1, dtype=torch.float64)
        ref = b(a(x))
        out = m(x)
        assert out.shape == ref.shape
        assert rel_err(out, ref) < 1e-13
    assert (m.bias is not None) == (bias_a or bias_b)


def test_merge_linear_keeps_float32_and_padding_mode():
    torch.manual_seed(2)
    a = nn.Conv2d(3, 8, 3, padding=1, padding_mode="reflect")
    b = nn.Conv2d(8, 4, 1)
    m = merge_linear(a, b)
    assert m.weight.dtype == torch.float32 and m.padding_mode == "reflect"
    x = torch.randn(2, 3, 9, 9)
    assert rel_err(m(x), b(a(x))) < 1e-5


@pytest.mark.parametrize("a,b,match", [
    (nn.Conv2d(4, 6, 1), nn.Conv2d(6, 5, 3), "1×1"),
    (nn.Conv2d(4, 6, 1), nn.Conv2d(6, 5, 1, padding=1), "padding"),
    (nn.Conv2d(4, 6, 1), nn.Conv2d(7, 5, 1), "channels"),
    (nn.Conv2d(4, 6, 1, groups=2), nn.Conv2d(6, 5, 1), "grouped"),
    (nn.Conv2d(4, 6, 1), nn.Conv2d(6, 6, 1, groups=3), "grouped"),
    (nn.Linear(4, 6), nn.Linear(5, 3), "features"),
    (nn.Linear(4, 6), nn.Conv2d(6, 5, 1), "cannot merge"),
    (nn.Conv2d(4, 6, 3, padding="same"), nn.Conv2d(6, 5, 1, stride=2), "same"),
])
def test_merge_linear_rejects_what_is_not_exact(a, b, match):
    with pytest.raises(ValueError, match=match):
        merge_linear(a, b)


def test_fold_bn_is_exact_in_eval_mode():
    torch.manual_seed(3)
    for bias in (False, True):
        conv = nn.Conv2d(3, 6, 3, stride=2, padding=1, bias=bias).double()
        bn = randomise_bn(nn.Sequential(nn.BatchNorm2d(6))).double().eval()[0]
        folded = fold_bn(conv, bn)
        x = torch.randn(2, 3, 10, 10, dtype=torch.float64)
        assert rel_err(folded(x), bn(conv(x))) < 1e-13
        assert conv.bias is None or conv.bias is not folded.bias  # the input layer is not modified
    with pytest.raises(ValueError, match="BatchNorm"):
        fold_bn(nn.Conv2d(3, 6, 1), nn.ReLU())


# --- bottlenecks -------------------------------------------------------------------------------------------


def test_finds_torchvision_and_own_bottlenecks():
    assert len(find_bottlenecks(torchvision.models.resnet50())) == 16
    assert find_bottlenecks(bottleneck_net()) == ["layer1.0", "layer2.0", "layer3.0"]
    assert find_bottlenecks(torchvision.models.resnet18()) == []


@pytest.mark.parametrize("bn", ["fold", "fresh"])
def test_merged_resnet50_keeps_its_conv_count(bn):
    model = torchvision.models.resnet50(num_classes=10).eval()
    plan = make_plan(model, Ratio(2), Layers(exclude=["conv1", "*.downsample.*", "fc"]))
    merged = merge_bottlenecks(model, plan, bn=bn)
    assert convs(merged) == convs(model) == 53
    assert count_layers(merged) == count_layers(model) == 50
    assert count_layers(decompose(model, plan)) == 114  # vanilla LRD: 16 × (2 + 3 + 2) + stem + fc
    assert not any(isinstance(m, LowRankLayer) for m in merged.modules())
    block, row = merged.layer3[0], plan["layer3.0.conv2"]
    r1, r2 = row.ranks
    assert (block.conv1.in_channels, block.conv1.out_channels) == (512, r1)
    assert (block.conv2.in_channels, block.conv2.out_channels, block.conv2.stride) == (r1, r2, (2, 2))
    assert (block.conv3.in_channels, block.conv3.out_channels) == (r2, 1024)
    assert count_params(merged) < 0.6 * count_params(model)
    assert merged(torch.randn(1, 3, 64, 64)).shape == (1, 10)


@pytest.mark.parametrize("bn", ["fold", "fresh"])
def test_merge_without_relu_equals_the_decomposed_model(bn):
    """With no ReLU between them, merging (BN folded) must be exact: merged ≡ Tucker-2 of the conv2s (+ fc SVD)."""
    model = no_relu(small())
    plan = make_plan(model, Ratio(2), Layers(exclude=["conv1", "*.conv1", "*.conv3"]))
    x = torch.randn(3, 3, 16, 16, dtype=torch.float64)
    merged, vanilla = merge_bottlenecks(model, plan, bn=bn), decompose(model, plan)
    with torch.no_grad():
        assert rel_err(merged(x), vanilla(x)) < 1e-10


def test_full_rank_merge_without_relu_equals_the_original():
    model = no_relu(small())
    plan = make_plan(model, FixedRank("full", allow_larger=True), Layers(include=["*.conv2"]))
    assert all(r["merged"] for r in merge_report(model, plan))
    merged = merge_bottlenecks(model, plan)
    assert merged.layer2[0].conv1.out_channels == model.layer2[0].conv1.out_channels  # full ranks: same widths
    x = torch.randn(2, 3, 16, 16, dtype=torch.float64)
    with torch.no_grad():
        assert rel_err(merged(x), model(x)) < 1e-10


def test_merge_with_stride_on_conv1_resnet_v1():
    """ResNet v1 puts the stride on the first 1×1: the merged conv1 must carry it."""
    torch.manual_seed(4)
    down = nn.Sequential(nn.Conv2d(16, 32, 1, stride=2, bias=False), nn.BatchNorm2d(32))
    block = torchvision.models.resnet.Bottleneck(16, 8, downsample=down)
    block.conv1.stride, block.conv2.stride = (2, 2), (1, 1)
    model = no_relu(randomise_bn(nn.Sequential(block))).double().eval()
    plan = make_plan(model, FixedRank("full", allow_larger=True), Layers(include=["0.conv2"]))
    assert merge_report(model, plan)[0]["merged"]
    merged = merge_bottlenecks(model, plan)
    assert merged[0].conv1.stride == (2, 2)
    x = torch.randn(2, 16, 12, 12, dtype=torch.float64)
    with torch.no_grad():
        assert rel_err(merged(x), model(x)) < 1e-10


def test_fresh_equals_fold_in_eval_and_calibration_keeps_it():
    model = small()
    plan = make_plan(model, Ratio(2), Layers(exclude=["conv1"]))
    x = torch.randn(4, 3, 16, 16, dtype=torch.float64)
    fold = merge_bottlenecks(model, plan, bn="fold")
    fresh = merge_bottlenecks(model, plan, bn="fresh")
    calib = [torch.randn(8, 3, 16, 16, dtype=torch.float64) for _ in range(3)]
    calibrated = merge_bottlenecks(model, plan, bn="fresh", calibration=calib)
    with torch.no_grad():
        ref = fold(x)
        assert rel_err(fresh(x), ref) < 1e-10
        assert rel_err(calibrated(x), ref) < 1e-10
        bn = calibrated.layer2[0].bn1
        assert isinstance(bn, nn.BatchNorm2d) and bn.num_features == plan["layer2.0.conv2"].ranks[0]
        assert not torch.allclose(bn.running_var, torch.ones_like(bn.running_var))
        # its statistics are those of its input on this data: in train mode it computes nearly the same
        seen = []
        handle = bn.register_forward_pre_hook(lambda mod, inp: seen.append(inp[0]))
        calibrated(torch.cat(calib))
        handle.remove()
        eval_out = bn(seen[0])
        train_out = copy.deepcopy(bn).train()(seen[0])
        assert rel_err(train_out, eval_out) < 1e-3
    assert isinstance(fold.layer1[0].bn1, nn.Identity) and isinstance(fold.layer1[0].bn2, nn.Identity)


def test_fold_changes_only_where_the_relu_acts():
    """With ReLUs, merging is inexact, but a full-rank merge moves only the ReLU: error is finite and nonzero."""
    model = small()
    plan = make_plan(model, FixedRank("full", allow_larger=True), Layers(include=["*.conv2"]))
    x = torch.randn(4, 3, 16, 16, dtype=torch.float64)
    with torch.no_grad():
        err = rel_err(merge_bottlenecks(model, plan)(x), model(x))
    assert 1e-6 < err < 10


def test_exact_mode_merges_nothing_across_relu():
    model = small()
    plan = make_plan(model, Ratio(2), Layers(exclude=["conv1"]))
    report = merge_report(model, plan, bn="exact")
    assert [r["merged"] for r in report] == [False] * 3 and "ReLU" in report[0]["reason"]
    exact = merge_bottlenecks(model, plan, bn="exact")
    x = torch.randn(2, 3, 16, 16, dtype=torch.float64)
    with torch.no_grad():
        assert torch.equal(exact(x), decompose(model, plan)(x))
    assert "exact" in BN_MODES


def test_merge_never_modifies_the_input_model():
    model = small()
    before = copy.deepcopy(model.state_dict())
    plan = make_plan(model, Ratio(2), Layers(exclude=["conv1"]))
    merge_bottlenecks(model, plan, bn="fresh", calibration=[torch.randn(4, 3, 16, 16, dtype=torch.float64)])
    assert list(model.state_dict()) == list(before)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in before.items())
    assert isinstance(model.layer1[0].conv1, nn.Conv2d) and model.layer1[0].conv1.out_channels == 16


def test_inplace_merge_and_failure_leaves_the_model_whole():
    model = small()
    plan = make_plan(model, Ratio(2), Layers(exclude=["conv1"]), method="channel_svd")
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(ValueError, match="Tucker-2"):
        merge_bottlenecks(model, plan, inplace=True)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in before.items())
    good = make_plan(model, Ratio(2), Layers(exclude=["conv1"]))
    out = merge_bottlenecks(model, good, inplace=True)
    assert out is model and model.layer1[0].conv1.out_channels == good["layer1.0.conv2"].ranks[0]


@pytest.mark.parametrize("make,match", [
    (lambda: torchvision.models.resnet18(), "no bottleneck"),
])
def test_unsupported_models_raise(make, match):
    model = make().eval()
    with pytest.raises(ValueError, match=match):
        merge_bottlenecks(model, make_plan(model, Ratio(2)))


def test_bad_options_raise():
    model = small()
    plan = make_plan(model, Ratio(2))
    with pytest.raises(ValueError, match="bn must be"):
        merge_bottlenecks(model, plan, bn="drop")
    with pytest.raises(ValueError, match="calibration"):
        merge_bottlenecks(model, plan, bn="fold", calibration=[torch.randn(2, 3, 8, 8)])
    with pytest.raises(ValueError, match="plan"):
        merge_bottlenecks(torchvision.models.resnet50(), plan)
    with pytest.raises(ValueError, match="no calibration"):
        merged = merge_bottlenecks(model, plan, bn="fresh")
        calibrate_bn(merged, [merged.layer1[0].bn1], [])


def test_blocks_the_plan_keeps_are_not_merged():
    model = small()
    plan = make_plan(model, Ratio(2), Layers(exclude=["conv1", "layer1.*", "*.downsample.*"]))
    report = merge_report(model, plan)
    assert [r["merged"] for r in report] == [False, True, True]
    merged = merge_bottlenecks(model, plan)
    assert merged.layer1[0].conv1.out_channels == 16 and isinstance(merged.layer1[0].bn1, nn.BatchNorm2d)
    assert convs(merged) == convs(model)


def test_merged_model_trains():
    model = small().float().train()
    plan = make_plan(model, Ratio(2), Layers(exclude=["conv1"]))
    for bn in ("fold", "fresh"):
        merged = merge_bottlenecks(model, plan, bn=bn).train()
        assert merged.training and merged.layer1[0].conv1.training
        loss = nn.functional.cross_entropy(merged(torch.randn(4, 3, 16, 16)), torch.tensor([0, 1, 2, 3]))
        loss.backward()
        assert merged.layer2[0].conv2.weight.grad is not None


def test_technique_models_for_table2():
    from lrdlab.paper.techniques import structure_row, technique_models

    model = small().float()
    plan = make_plan(model, Ratio(2, min_rank=1), Layers(exclude=["conv1", "*.downsample.*"]))  # the 10-class fc too
    models = technique_models(model, plan)
    assert list(models) == ["original", "vanilla LRD", "layer freezing", "layer merging"]
    rows = {n: structure_row(n, m, model, (1, 3, 16, 16)) for n, m in models.items()}
    assert rows["original"]["params_pct"] == 0 and rows["original"]["layers"] == count_layers(model)
    assert rows["layer merging"]["layers"] == rows["original"]["layers"] + 1  # the fc is SVD-decomposed
    assert rows["vanilla LRD"]["layers"] == rows["original"]["layers"] + 3 * 4 + 1
    assert rows["layer freezing"]["params"] == rows["vanilla LRD"]["params"]
    assert rows["layer freezing"]["trainable_params"] < rows["vanilla LRD"]["trainable_params"]
    assert rows["layer merging"]["flops_pct"] < rows["vanilla LRD"]["flops_pct"] < 0


def test_cli_merge_rejects_models_without_bottlenecks(capsys):
    from lrdlab.cli import main

    assert main(["merge", "resnet18", "--paper", "--image-size", "32"]) == 2
    assert "no bottleneck" in capsys.readouterr().err


@pytest.mark.slow
def test_cli_merge_resnet50_json(capsys):
    import json

    from lrdlab.cli import main

    assert main(["merge", "resnet50", "--paper", "--json", "--image-size", "64"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert sum(b["merged"] for b in report["blocks"]) == 16
    rows = {r["method"]: r for r in report["rows"]}
    assert rows["original"]["layers"] == 50 and rows["vanilla LRD"]["layers"] == 115
    assert rows["layer merging (bn=fresh)"]["layers"] == 51  # 50 + the SVD-decomposed fc
