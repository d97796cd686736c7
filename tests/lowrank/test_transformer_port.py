"""The transformer support inside the stage layout: the method registry treats Conv1D and attention's out_proj
as SVD-form Linears, partial plans and saves see the q/k/v rows, the rank search finds their inputs."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lrdlab import Layers, Ratio, SearchConfig, decompose, load_decomposed, make_plan, optimize_plan, save_decomposed
from lrdlab.lowrank.attention import FactorizedMultiheadAttention
from lrdlab.lowrank.layers import LowRankLayer, build, describe
from lrdlab.lowrank.methods import get_method, linear_like
from lrdlab.lowrank.plan import candidate_layers, named_layers


class AttnNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(16, 2, batch_first=True)
        self.fc = nn.Linear(16, 16)

    def forward(self, x):
        return self.fc(self.attn(x, x, x, need_weights=False)[0])


def test_out_proj_is_linear_like_and_only_svd_takes_it():
    info = describe(nn.MultiheadAttention(16, 2).out_proj)
    assert info["type"] == "NonDynamicallyQuantizableLinear" and linear_like(info)
    assert get_method("svd").unsupported(info) is None
    assert "decomposed by 'svd'" in get_method("tucker2").unsupported(info)
    layer = build(info, "svd", (4,))
    assert isinstance(layer.first, nn.Linear) and layer.in_features == 16 and layer.out_features == 16
    with pytest.raises(AttributeError):
        layer.kernel_size  # noqa: B018 - a Linear-like layer has no conv attributes


def test_views_are_plan_names_but_not_submodules():
    model = AttnNet()
    names = [n for n, _ in candidate_layers(model)]
    assert names == ["attn.q_proj", "attn.k_proj", "attn.v_proj", "attn.out_proj", "fc"]
    layers = named_layers(model)
    assert torch.equal(layers["attn.k_proj"].weight, model.attn.in_proj_weight[16:32])
    assert not layers["attn.k_proj"].weight.requires_grad


def test_partial_plan_without_attention_rows_is_refused():
    model = AttnNet()
    plan = make_plan(model, Ratio(2, min_rank=1))
    plan.layers = [r for r in plan.layers if r.name != "attn.v_proj"]
    with pytest.raises(ValueError, match="no row"):
        decompose(model, plan)


def test_keeping_the_attention_saves_and_loads(tmp_path):
    torch.manual_seed(0)
    model = AttnNet().eval()
    plan = make_plan(model, Ratio(2, min_rank=1), Layers(include="fc"))
    small = decompose(model, plan)
    assert type(small.attn) is nn.MultiheadAttention and isinstance(small.fc, LowRankLayer)
    save_decomposed(small, plan, tmp_path / "m")
    loaded = load_decomposed(tmp_path / "m", AttnNet()).eval()
    x = torch.randn(2, 5, 16)
    with torch.no_grad():
        assert torch.equal(loaded(x), small(x))


def test_saving_with_the_wrong_plan_is_refused_for_attention_rows(tmp_path):
    model = AttnNet()
    small = decompose(model, make_plan(model, Ratio(2, min_rank=1), Layers(include="attn.*")))
    assert isinstance(small.attn, FactorizedMultiheadAttention)
    with pytest.raises(ValueError, match="plan"):
        save_decomposed(small, make_plan(model, Ratio(2, min_rank=1), Layers(include="fc")), tmp_path / "m")


def test_optimize_plan_times_the_q_k_v_rows_on_their_real_inputs(tmp_path):
    model = AttnNet()
    plan = make_plan(model, Ratio(2, min_rank=1))
    seen: dict[tuple, int] = {}

    def timer(module: nn.Module, shape) -> float:
        seen[tuple(shape)] = seen.get(tuple(shape), 0) + 1
        return 1e-3 * (sum(p.numel() for p in module.parameters()) + 1)

    new, traces = optimize_plan(model, plan, (2, 5, 16), SearchConfig(
        lower=0.5, cache=False, time_fn=timer, progress=False))
    assert {"attn.q_proj", "attn.k_proj", "attn.v_proj"} <= set(traces["layer"])
    assert set(seen) == {(2, 5, 16)}
    assert all(r.decomposed for r in new.layers)
    assert isinstance(decompose(model, new).attn, FactorizedMultiheadAttention)
