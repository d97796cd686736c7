"""The loss-weighted fit's input moments block by block (lrdlab.lowrank.calibration_blocks.stack_moments): the same
fit as the one-pass path, and the moments held at once do not grow with depth."""

from __future__ import annotations

import weakref

import pytest
import torch
from torch import nn

import lrdlab.lowrank.loss_weighted as loss_weighted
from lrdlab.lowrank.calibration_fit import Moments
from lrdlab.lowrank.layers import LowRankLayer, dense_weight
from lrdlab.lowrank.loss_weighted import fit_plan
from lrdlab.lowrank.plan import Ratio, make_plan
from tests.lowrank.tiny_llama import tiny_llama

transformers = pytest.importorskip("transformers")
VOCAB = 48


def _llama(layers: int, seed: int = 0) -> nn.Module:
    return tiny_llama(layers, VOCAB, seed)


def _batches(seed: int = 1) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return list(torch.randint(0, VOCAB, (6, 16), generator=gen).split(2))


def test_the_block_path_fits_as_the_one_pass_path(monkeypatch):
    model = _llama(3)
    plan = make_plan(model, Ratio(1.5))
    xs = _batches()
    blocks = []
    stack_moments = loss_weighted.stack_moments
    monkeypatch.setattr(loss_weighted, "stack_moments", lambda *a: blocks.append(1) or stack_moments(*a))
    by_blocks = fit_plan(model, plan, xs, progress=False)
    assert blocks  # the decoder layers' moments came block by block
    monkeypatch.setattr(loss_weighted, "find_stack", lambda *a: None)  # no stack: every moment from one pass
    one_pass = fit_plan(model, plan, xs, progress=False)
    assert len(blocks) == 1
    names = [row.name for row in plan.decomposed_layers]
    assert "lm_head" in names and any(n.startswith("model.layers.") for n in names)
    for name in names:
        a, b = by_blocks.get_submodule(name), one_pass.get_submodule(name)
        assert isinstance(a, LowRankLayer) and isinstance(b, LowRankLayer)
        torch.testing.assert_close(dense_weight(a), dense_weight(b), rtol=1e-6, atol=1e-9, msg=name)
    ids = _batches(7)[0]
    with torch.no_grad():
        torch.testing.assert_close(by_blocks(input_ids=ids).logits, one_pass(input_ids=ids).logits,
                                   rtol=1e-6, atol=1e-8)
        assert not torch.allclose(by_blocks(input_ids=ids).logits, model(input_ids=ids).logits, atol=1e-3)


def test_the_moments_held_at_once_do_not_grow_with_depth(monkeypatch):
    live: dict[int, weakref.ref] = {}  # the Moments objects alive that hold sums
    peak = [0]
    add = Moments.add

    def counted(self: Moments, *args, **kwargs) -> None:
        add(self, *args, **kwargs)
        key = id(self)
        live.setdefault(key, weakref.ref(self, lambda ref: live.pop(key, None)))
        peak[0] = max(peak[0], len(live))

    monkeypatch.setattr(Moments, "add", counted)
    seen = {}
    for depth in (2, 4, 8):
        model = _llama(depth)
        plan = make_plan(model, Ratio(2))
        per_block = sum(row.name.startswith("model.layers.0.") for row in plan.decomposed_layers)
        assert per_block >= 5  # q, o, gate, up, down
        peak[0] = 0
        fit_plan(model, plan, _batches(), progress=False)
        seen[depth] = peak[0]
    # one block's moments at a time (gate and up share theirs: fewer than the block's planned layers), never
    # the whole network's (the one-pass path holds one per planned layer: 5 × depth + 1)
    assert seen[2] == seen[4] == seen[8], seen
    assert 1 <= seen[8] < per_block, seen
