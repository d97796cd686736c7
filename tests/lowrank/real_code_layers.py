"""Layer patterns of real code that lrdlab cannot read from the class alone, shared by the tests that plan them."""

import torch.nn.functional as F
from torch import nn

from lrdlab import FixedRank, make_plan


class StdConv(nn.Conv2d):
    """timm's StdConv2d pattern, a class lrdlab does not know: the weight is standardised in forward."""

    def forward(self, x):
        w = self.weight
        w = (w - w.mean(dim=(1, 2, 3), keepdim=True)) / (w.std(dim=(1, 2, 3), keepdim=True) + 1e-5)
        return F.conv2d(x, w, self.bias, self.stride, self.padding)


class ReadsWeight(nn.Module):
    """Swin's pattern: ``qkv`` is used through its weight, never called; ``mlp`` is called."""

    def __init__(self):
        super().__init__()
        self.qkv, self.mlp = nn.Linear(16, 16), nn.Linear(16, 16)

    def forward(self, x):
        return self.mlp(F.linear(x, self.qkv.weight, self.qkv.bias))


def full_rank_plan(model, layers=None):
    """Every layer at full rank (exact factors), so a test sees only what the layer's own code changes."""
    return make_plan(model, FixedRank("full", allow_larger=True), layers)
