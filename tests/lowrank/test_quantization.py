"""Eager-mode quantization of decomposed models: ``fuse_model()`` of torchvision's quantizable models fuses a
LowRankLayer's last factor with the BatchNorm / ReLU after it (lrdlab/lowrank/quantization.py)."""

import warnings

import pytest
import torch
import torch.ao.nn.intrinsic as nni
from torch import nn

from lrdlab import Layers, Ratio, decompose, make_plan
from lrdlab.lowrank.layers import LowRankLayer

torchvision = pytest.importorskip("torchvision")
ENGINES = torch.backends.quantized.supported_engines


def _decomposed_resnet(train: bool = False):
    torch.manual_seed(0)
    model = torchvision.models.quantization.resnet18(weights=None, quantize=False, num_classes=10)
    for m in model.modules():  # BatchNorms that are not the identity, so folding them is tested
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
            nn.init.uniform_(m.weight, 0.5, 1.5)
    model.train(train)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        plan = make_plan(model, Ratio(2), Layers(input_shape=(1, 3, 32, 32)))
    return decompose(model, plan, progress=False)


def _modes(layer):
    assert isinstance(layer, LowRankLayer)
    return {layer.training, *(f.training for f in layer.children())}


def test_fuse_model_folds_batchnorm_and_relu_into_the_last_factor_and_quantizes():
    model = _decomposed_resnet()
    assert _modes(model.layer1[0].conv1) == {False}  # decomposed in eval mode, as the conv it replaces
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        want = model(x)
    model.fuse_model()
    block = model.layer1[0]
    assert isinstance(block.conv1.last, nni.ConvReLU2d) and isinstance(block.bn1, nn.Identity)
    assert isinstance(block.conv2.last, nn.Conv2d) and isinstance(block.bn2, nn.Identity)
    with torch.no_grad():
        fused = model(x)
    assert torch.allclose(fused, want, rtol=0, atol=1e-5 * want.abs().max().item())
    engine = "x86" if "x86" in ENGINES else "fbgemm" if "fbgemm" in ENGINES else None
    if engine is None:
        pytest.skip(f"no x86/fbgemm quantized engine ({ENGINES})")
    was = torch.backends.quantized.engine
    try:
        torch.backends.quantized.engine = engine
        model.qconfig = torch.ao.quantization.get_default_qconfig(engine)
        torch.ao.quantization.prepare(model, inplace=True)
        with torch.no_grad():
            for _ in range(4):
                model(torch.randn(4, 3, 32, 32))
        torch.ao.quantization.convert(model, inplace=True)
        with torch.no_grad():
            quantized = model(x)
    finally:
        torch.backends.quantized.engine = was
    assert "quantized" in type(model.layer1[0].conv1.core).__module__
    assert ((quantized - want).norm() / want.norm()).item() < 0.5  # 8-bit, calibrated on 16 random images


def test_fuse_model_for_qat_keeps_the_batchnorm_trainable_beside_the_last_factor():
    model = _decomposed_resnet(train=True)
    assert _modes(model.layer1[0].conv1) == {True}
    model.fuse_model(is_qat=True)
    assert isinstance(model.layer1[0].conv1.last, nni.ConvBnReLU2d)
    model.qconfig = torch.ao.quantization.get_default_qat_qconfig("fbgemm")
    torch.ao.quantization.prepare_qat(model, inplace=True)
    out = model(torch.randn(2, 3, 32, 32))
    out.sum().backward()
    assert model.layer1[0].conv1.first.weight.grad is not None


def test_a_last_factor_torch_cannot_fuse_is_a_one_line_error():
    model = nn.Sequential(nn.Linear(8, 8), nn.BatchNorm2d(8)).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        small = decompose(model, make_plan(model, Ratio(2, min_rank=1)))
    with pytest.raises(ValueError, match="torch has no fuser.*leave this layer out of the fuse list"):
        torch.ao.quantization.fuse_modules(small, [["0", "1"]])
