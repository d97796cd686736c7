"""gemv_layout: the widening factors stored [in, out] for one-token decode, same modules, values and outputs."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lrdlab import Ratio, decompose, make_plan
from lrdlab.lowrank.gemv_layout import gemv_layout, output_major, row_major_layout
from lrdlab.lowrank.layers import LowRankLayer


def _decomposed() -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 24), nn.ReLU(), nn.Linear(24, 8))
    with pytest.warns(UserWarning, match="not probed"):
        return decompose(model, make_plan(model, Ratio(2)))


def test_only_widening_factors_are_restrided_and_the_model_computes_the_same():
    low = _decomposed()
    low[2][0].weight.requires_grad_(False)
    calls = []
    low[0][-1].register_forward_hook(lambda *_: calls.append(1))
    x = torch.randn(5, 16)
    before = {n: (p, p.detach().clone(), p.requires_grad) for n, p in low.named_parameters()}
    reference = low(x)
    changed = gemv_layout(low)
    widening = [f"{i}.{n}" for i, layer in enumerate(low) if isinstance(layer, LowRankLayer)
                for n, f in layer.named_children() if f.out_features > f.in_features]
    assert changed == widening and changed  # every last factor widens from its rank, no first factor does
    for name, module in low.named_modules():
        if type(module) is nn.Linear:
            assert output_major(module) == (name in changed)
    for name, p in low.named_parameters():
        param, value, grad = before[name]
        assert p is param and p.requires_grad == grad and torch.equal(p, value)  # same Parameter, values, flags
    torch.testing.assert_close(low(x), reference)  # equal up to the BLAS's summation order
    assert calls == [1, 1]  # the factor's own hook still runs
    assert gemv_layout(low) == []  # already laid out: nothing to do
    low(x).sum().backward()
    assert all(p.grad is not None and p.grad.shape == p.shape for p in low.parameters() if p.requires_grad)
    assert row_major_layout(low) == changed and all(p.is_contiguous() for p in low.parameters())
    torch.testing.assert_close(low(x), reference)


def test_all_scope_lays_out_a_dense_model_and_a_tied_weight_once():
    torch.manual_seed(0)
    emb, head = nn.Embedding(50, 8), nn.Linear(8, 50, bias=False)
    head.weight = emb.weight  # a tied lm_head: one Parameter
    model = nn.Sequential(emb, nn.Linear(8, 32), nn.Linear(32, 8), head)
    ids = torch.tensor([[1, 7, 3]])
    reference = model(ids)
    assert gemv_layout(model) == []  # no LowRankLayer: the default scope leaves a dense model as it is
    assert gemv_layout(model, "all") == ["1", "3"]  # the widening ones
    assert output_major(head) and head.weight is emb.weight  # laid out once, still tied
    torch.testing.assert_close(model(ids), reference)


def test_a_bad_scope_is_a_value_error_naming_the_choices():
    with pytest.raises(ValueError, match="'factors'.*'all'"):
        gemv_layout(nn.Linear(2, 4), "everything")
