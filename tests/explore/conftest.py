"""A stand-in shipped ViT for the explorers: lrdlab's weights folder, patched to one that also holds a vit_tiny.

The stand-in is a random-init ``vit_tiny`` with trained-like spectra (each encoder weight's singular values
made to decay as ``exp(-i / 8)``) and a head fitted by least squares to its class-token features: seconds
to make, ≈50% on MNIST-5k, and its calibrated accuracy moves with the compression (≈47% at 4x, g = 8). Saved in
lrdlab's packed format with its JSON record; never committed (the real ``vit_tiny_mnist5k`` ships separately).
"""

import json
import shutil

import pytest
import torch
from torch import nn

from lrdlab.zoo import pretrained

VIT_KEY = "vit_tiny · trained (MNIST-5k)"


@torch.no_grad()
def _probed_vit(cache_dir, images: int = 600) -> nn.Module:
    """Random-init vit_tiny, decaying spectra, its head fitted by ridge regression on the class-token features."""
    import lrdlab

    torch.manual_seed(0)
    model = lrdlab.get_model("vit_tiny", num_classes=10).eval()
    for name, p in model.named_parameters():
        if p.ndim == 2 and name.startswith("encoder."):
            u, s, vh = torch.linalg.svd(p, full_matrices=False)
            p.copy_((u * s[0] * torch.exp(-torch.arange(len(s)) / 8)) @ vh)
    loaders = lrdlab.get_loaders("mnist5k", images, seed=0, cache_dir=cache_dir)
    x, y = next(iter(loaders.train))
    head, model.heads.head = model.heads.head, nn.Identity()
    feats = model(x).double()
    model.heads.head = head
    feats = torch.cat([feats, torch.ones(len(feats), 1, dtype=feats.dtype)], 1)
    target = nn.functional.one_hot(y, 10).double()
    gram = feats.T @ feats + 1e-2 * torch.eye(feats.shape[1], dtype=feats.dtype) * feats.pow(2).mean()
    w = torch.linalg.solve(gram, feats.T @ target)
    head.weight.copy_(w[:-1].T.float())
    head.bias.copy_(w[-1].float())
    return model


@pytest.fixture(scope="session")
def weights_dirs(tmp_path_factory):
    """Two weights folders: ``"resnet"`` (the shipped ResNet-20 only) and ``"vit"`` (plus the stand-in ViT)."""
    root = tmp_path_factory.mktemp("weights")
    dirs = {"resnet": root / "resnet", "vit": root / "vit"}
    for d in dirs.values():
        d.mkdir()
        for f in pretrained.WEIGHTS_DIR.glob("resnet20_mnist5k.*"):
            shutil.copy(f, d)
    model = _probed_vit(root / "data")
    torch.save(pretrained.pack_state_dict(model.state_dict()), dirs["vit"] / "vit_tiny_mnist5k.pt")
    info = {"name": "vit_tiny_mnist5k", "model": "vit_tiny", "num_classes": 10, "data": "mnist5k",
            "input_size": [3, 32, 32], "storage": "fp16", "command": "tests/explore/conftest.py stand-in",
            "bytes": (dirs["vit"] / "vit_tiny_mnist5k.pt").stat().st_size, "recipe": {}, "machine": {}}
    (dirs["vit"] / "vit_tiny_mnist5k.json").write_text(json.dumps(info))
    return dirs


@pytest.fixture
def shipped_vit(weights_dirs, monkeypatch, tmp_cache):
    """lrdlab's weights folder patched to one holding resnet20_mnist5k and the stand-in vit_tiny_mnist5k."""
    monkeypatch.setattr(pretrained, "WEIGHTS_DIR", weights_dirs["vit"])
    return VIT_KEY


@pytest.fixture(autouse=True)
def no_prerender(monkeypatch):
    """Rank explorers made by tests draw only what they show, so no background drawing outlives its test
    (``test_widgets`` tests the prerender itself, with ``prerender=True``)."""
    try:
        from lrdlab.explore.widgets import RankExplorer
    except ImportError:  # no ipywidgets: no explorer either
        return
    monkeypatch.setattr(RankExplorer, "PRERENDER", False)
