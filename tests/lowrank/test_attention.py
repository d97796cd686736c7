"""Attention projections: FactorizedMultiheadAttention is nn.MultiheadAttention exactly; plans, decomposition,
PyTorch's fast paths, unsupported variants, save/load and freezing of SVD'd attention and MLP layers."""

from __future__ import annotations

import itertools

import pytest
import torch
from torch import nn

import lrdlab
from lrdlab import (
    FixedRank,
    Freezer,
    Layers,
    Ratio,
    count_params,
    decompose,
    load_decomposed,
    make_plan,
    save_decomposed,
)
from lrdlab.lowrank.attention import FactorizedMultiheadAttention
from lrdlab.lowrank.decompose import planned_structure
from lrdlab.lowrank.layers import LowRankLayer


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


def encoder(batch_first: bool = True, layers: int = 2, dtype=torch.float32, seed: int = 0) -> nn.TransformerEncoder:
    torch.manual_seed(seed)
    layer = nn.TransformerEncoderLayer(16, 2, 32, dropout=0.0, batch_first=batch_first)
    return nn.TransformerEncoder(layer, layers, enable_nested_tensor=True).to(dtype).eval()


CASES = list(itertools.product([False, True], [False, True], [None, 6], [True, False]))


@pytest.mark.parametrize("batch_first,need_weights,kdim,bias", CASES)
def test_factorized_attention_equals_multihead_attention(batch_first, need_weights, kdim, bias):
    torch.manual_seed(0)
    mha = nn.MultiheadAttention(8, 2, bias=bias, kdim=kdim, vdim=kdim, batch_first=batch_first).double().eval()
    fac = FactorizedMultiheadAttention.from_mha(mha)
    N, L, S, Ek = 3, 5, 4, kdim or 8
    q = torch.randn((N, L, 8) if batch_first else (L, N, 8), dtype=torch.double)
    k = torch.randn((N, S, Ek) if batch_first else (S, N, Ek), dtype=torch.double)
    v = torch.randn_like(k)
    kpm = torch.zeros(N, S, dtype=torch.bool)
    kpm[0, -1] = True
    masks = [{}, {"key_padding_mask": kpm}, {"attn_mask": torch.randn(L, S, dtype=torch.double)},
             {"attn_mask": torch.rand(L, S) > 0.7, "key_padding_mask": kpm},
             {"attn_mask": torch.randn(N * 2, L, S, dtype=torch.double), "key_padding_mask": kpm.double() * -5}]
    for kw in masks:
        for avg in (True, False):
            a = mha(q, k, v, need_weights=need_weights, average_attn_weights=avg, **kw)
            b = fac(q, k, v, need_weights=need_weights, average_attn_weights=avg, **kw)
            assert (a[0] - b[0]).abs().max() < 1e-12, kw
            if need_weights:
                assert a[1].shape == b[1].shape and (a[1] - b[1]).abs().max() < 1e-12
            else:
                assert b[1] is None
    # unbatched input
    one = (lambda t: t[0]) if batch_first else (lambda t: t[:, 0])
    a, b = mha(one(q), one(k), one(v)), fac(one(q), one(k), one(v))
    assert (a[0] - b[0]).abs().max() < 1e-12 and (a[1] - b[1]).abs().max() < 1e-12


def test_factorized_attention_gradients_match_and_it_scripts():
    torch.manual_seed(0)
    mha = nn.MultiheadAttention(8, 2, batch_first=True).double()
    fac = FactorizedMultiheadAttention.from_mha(mha)
    x = torch.randn(2, 5, 8, dtype=torch.double)
    mha(x, x, x)[0].square().sum().backward()
    fac(x, x, x)[0].square().sum().backward()
    E = 8
    assert torch.allclose(mha.in_proj_weight.grad[:E], fac.q_proj.weight.grad)
    assert torch.allclose(mha.in_proj_weight.grad[2 * E:], fac.v_proj.weight.grad)
    assert torch.allclose(mha.out_proj.weight.grad, fac.out_proj.weight.grad)
    scripted = torch.jit.script(fac)
    assert torch.allclose(scripted(x, x, x)[0], fac(x, x, x)[0])
    with pytest.raises(RuntimeError, match="is_causal"):
        fac(x, x, x, is_causal=True)


def test_plan_has_real_rows_for_q_k_v_and_out_proj():
    model = encoder()
    plan = make_plan(model, Ratio(2, min_rank=1))
    names = [r.name for r in plan.layers]
    block = ["layers.0.self_attn.q_proj", "layers.0.self_attn.k_proj", "layers.0.self_attn.v_proj",
             "layers.0.self_attn.out_proj", "layers.0.linear1", "layers.0.linear2"]
    assert names[:6] == block
    assert all(plan[n].decomposed for n in names)
    assert "fast path off" in plan["layers.0.self_attn.q_proj"].reason
    assert "fast path off" in plan["layers.1.linear2"].reason
    # the patterns see the attention rows too
    only_q = make_plan(model, Ratio(2, min_rank=1), Layers(include=["*.q_proj"]))
    assert [r.name for r in only_q.decomposed_layers] == ["layers.0.self_attn.q_proj", "layers.1.self_attn.q_proj"]


@pytest.mark.parametrize("batch_first", [True, False])
def test_full_rank_encoder_is_exact_in_float64_train_and_eval(batch_first):
    model = encoder(batch_first, dtype=torch.double)
    full = decompose(model, make_plan(model, FixedRank("full", allow_larger=True)))
    assert sum(isinstance(m, FactorizedMultiheadAttention) for m in full.modules()) == 2
    assert sum(isinstance(m, LowRankLayer) for m in full.modules()) == 12
    x = torch.randn((3, 5, 16) if batch_first else (5, 3, 16), dtype=torch.double)
    mask = torch.triu(torch.full((5, 5), float("-inf"), dtype=torch.double), 1)
    with torch.no_grad():
        assert rel(full(x, mask=mask), model(x, mask=mask)) < 1e-12
    model.train(), full.train()
    assert rel(full(x), model(x)) < 1e-12


@pytest.mark.parametrize("include", [None, ["*.linear1", "*.linear2"], ["*.out_proj"]])
def test_fast_path_conditions_run_and_match(include):
    """eval + no_grad + batch_first + key padding mask: PyTorch would take its fused/nested-tensor path."""
    model = encoder(True)
    assert model.use_nested_tensor
    x = torch.randn(3, 6, 16)
    kpm = torch.zeros(3, 6, dtype=torch.bool)
    kpm[1, 4:] = True
    full = decompose(model, make_plan(model, FixedRank("full", allow_larger=True), Layers(include=include)))
    assert not full.use_nested_tensor
    assert all(isinstance(layer.self_attn, FactorizedMultiheadAttention) for layer in full.layers)
    with torch.no_grad():
        a, b = model(x, src_key_padding_mask=kpm), full(x, src_key_padding_mask=kpm)
        single = full.layers[0](x, src_key_padding_mask=kpm)  # the layer's own fast-path check
    keep = ~kpm  # PyTorch's nested-tensor path writes 0 at padded positions
    assert (a[keep] - b[keep]).abs().max() < 1e-4
    assert torch.isfinite(single).all()
    small = decompose(model, make_plan(model, Ratio(2, min_rank=1), Layers(include=include)))
    with torch.no_grad():
        assert torch.isfinite(small(x, src_key_padding_mask=kpm)).all()


def test_cross_attention_in_a_decoder_layer_is_exact():
    torch.manual_seed(0)
    dec = nn.TransformerDecoderLayer(16, 4, 32, dropout=0.0).double().eval()
    plan = make_plan(dec, FixedRank("full", allow_larger=True))
    assert plan["multihead_attn.k_proj"].decomposed
    full = decompose(dec, plan)
    tgt, memory = torch.randn(5, 2, 16, dtype=torch.double), torch.randn(7, 2, 16, dtype=torch.double)
    with torch.no_grad():
        assert rel(full(tgt, memory), dec(tgt, memory)) < 1e-12


class BiasKV(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(8, 2, add_bias_kv=True)
        self.zero = nn.MultiheadAttention(8, 2, add_zero_attn=True)
        self.fc = nn.Linear(8, 8)

    def forward(self, x):
        return self.fc(self.attn(x, x, x)[0] + self.zero(x, x, x)[0])


class MyAttention(nn.MultiheadAttention):
    pass


def test_attention_lrdlab_cannot_rewrite_is_left_unchanged_with_a_reason():
    torch.manual_seed(0)
    model = BiasKV().eval()
    plan = make_plan(model, FixedRank("full", allow_larger=True))
    for p in ("q_proj", "k_proj", "v_proj", "out_proj"):
        assert not plan[f"attn.{p}"].decomposed and "add_bias_kv" in plan[f"attn.{p}"].reason
        assert not plan[f"zero.{p}"].decomposed and "add_zero_attn" in plan[f"zero.{p}"].reason
    assert plan["fc"].decomposed
    out = decompose(model, plan)
    assert type(out.attn) is nn.MultiheadAttention and type(out.zero) is nn.MultiheadAttention
    x = torch.randn(4, 2, 8)
    with torch.no_grad():
        assert rel(out(x), model(x)) < 1e-5
    sub = nn.Sequential(MyAttention(8, 2))
    sub_plan = make_plan(sub, Ratio(2, min_rank=1))
    assert not sub_plan.decomposed_layers and "subclasses" in sub_plan["0.out_proj"].reason
    # an encoder layer whose self_attn cannot be rewritten keeps its MLP (its fast path reads linear1.weight)
    layer = nn.TransformerEncoderLayer(16, 2, 32, batch_first=True)
    layer.self_attn = nn.MultiheadAttention(16, 2, add_bias_kv=True, batch_first=True)
    assert "fast path" in make_plan(layer, Ratio(2, min_rank=1))["linear1"].reason


def vit(seed: int = 0, dtype=torch.float32) -> nn.Module:
    torch.manual_seed(seed)
    model = lrdlab.get_model("vit_tiny", num_classes=10)
    nn.init.normal_(model.heads.head.weight, std=0.02)  # torchvision zero-initialises the head
    return model.to(dtype).eval()


def test_vit_every_projection_is_decomposed_and_full_rank_is_exact():
    model = vit(dtype=torch.double)
    plan = make_plan(model, Ratio(2, min_rank=1))
    enc = [r for r in plan.decomposed_layers if r.name.startswith("encoder.")]
    assert len(enc) == 6 * 6  # q, k, v, out, 2 MLP per block
    small = decompose(model, plan)
    x = torch.randn(2, 3, 32, 32, dtype=torch.double)
    with torch.no_grad():
        assert torch.isfinite(small(x)).all()
    assert count_params(small) < 0.6 * count_params(model)
    assert count_params(small) == count_params(planned_structure(model, plan))
    full = decompose(model, make_plan(model, FixedRank("full", allow_larger=True)))
    with torch.no_grad():
        assert rel(full(x), model(x)) < 1e-10


def test_decompose_leaves_the_model_untouched_when_a_layer_fails():
    model = vit()
    plan = make_plan(model, Ratio(2, min_rank=1))
    with torch.no_grad():
        model.encoder.layers[-1].self_attention.in_proj_weight[0, 0] = float("nan")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match="NaN"):
        decompose(model, plan, inplace=True)
    assert not any(isinstance(m, FactorizedMultiheadAttention) for m in model.modules())
    after = model.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.allclose(before[k], after[k], equal_nan=True, rtol=0, atol=0) for k in before)


def test_save_and_load_round_trip(tmp_path):
    model = vit()
    plan = make_plan(model, Ratio(2, min_rank=1))
    small = decompose(model, plan)
    save_decomposed(small, plan, tmp_path / "vit")
    keys = small.state_dict().keys()
    assert "encoder.layers.encoder_layer_0.self_attention.q_proj.first.weight" in keys
    assert not any(k.endswith("in_proj_weight") for k in keys)
    loaded = load_decomposed(tmp_path / "vit", lrdlab.get_model("vit_tiny", num_classes=10)).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded(x), small(x))


def mlp_and_attention_factors(model: nn.Module) -> dict[str, LowRankLayer]:
    return {n: m for n, m in model.named_modules() if isinstance(m, LowRankLayer) and n.startswith("layers.0.")}


def test_regular_freezing_trains_last_of_every_svd_attention_and_mlp_layer():
    model = decompose(encoder(), make_plan(encoder(), Ratio(2, min_rank=1)))
    Freezer(model, "regular")
    layers = mlp_and_attention_factors(model)
    assert sorted(n.rsplit(".", 1)[-1] for n in layers) == ["k_proj", "linear1", "linear2", "out_proj", "q_proj",
                                                             "v_proj"]
    for layer in layers.values():
        assert layer.last.weight.requires_grad and layer.last.bias.requires_grad
        assert not layer.first.weight.requires_grad
    norms = [p for n, p in model.named_parameters() if ".norm" in n]
    assert norms and all(p.requires_grad for p in norms)


def test_sequential_freezing_rotates_last_then_first_and_frozen_weights_do_not_move():
    model = decompose(encoder(), make_plan(encoder(), Ratio(2, min_rank=1)))
    f = Freezer(model, "sequential", period=2, unit="iteration")
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    g = torch.Generator().manual_seed(0)
    for step in range(6):
        phase_factor = ("last", "first")[(step // 2) % 2]
        for layer in mlp_and_attention_factors(model).values():
            assert layer.get_submodule(phase_factor).weight.requires_grad
            other = "first" if phase_factor == "last" else "last"
            assert not layer.get_submodule(other).weight.requires_grad
        before = {n: p.detach().clone() for n, p in model.named_parameters()}
        opt.zero_grad(set_to_none=True)
        model.train()(torch.randn(4, 5, 16, generator=g)).square().mean().backward()
        opt.step()
        for n, p in model.named_parameters():
            assert torch.equal(p, before[n]) != p.requires_grad, n
        f.step()


def test_unfuse_makes_every_projection_a_called_module_with_the_same_plan_rows():
    from lrdlab.lowrank.attention import unfuse
    from lrdlab.measure.shapes import layer_input_shapes

    model = encoder(True, dtype=torch.double)
    unfused = unfuse(encoder(True, dtype=torch.double))
    x = torch.randn(2, 5, 16, dtype=torch.double)
    with torch.no_grad():
        assert rel(unfused(x), model(x)) < 1e-12
    plan, plan_unfused = make_plan(model, Ratio(2, min_rank=1)), make_plan(unfused, Ratio(2, min_rank=1))
    assert [(r.name, r.ranks) for r in plan.layers] == [(r.name, r.ranks) for r in plan_unfused.layers]
    names = [r.name for r in plan_unfused.decomposed_layers]
    shapes = layer_input_shapes(unfused, names, (2, 5, 16))
    assert shapes["layers.0.self_attn.k_proj"] == (5, 2, 16)  # the (L, N, E) layout inside the attention
    with torch.no_grad():
        assert rel(decompose(unfused, plan_unfused)(x), decompose(model, plan)(x)) < 1e-12


def test_decomposed_encoder_exports_and_traces():
    model = encoder(True)
    small = decompose(model, make_plan(model, Ratio(2, min_rank=1))).eval()
    x = torch.randn(2, 5, 16)
    kpm = torch.zeros(2, 5, dtype=torch.bool)
    kpm[1, 3:] = True
    exported = torch.export.export(small, (x,), {"src_key_padding_mask": kpm})
    with torch.no_grad():
        want = small(x, src_key_padding_mask=kpm)
        assert torch.allclose(exported.module()(x, src_key_padding_mask=kpm), want, atol=1e-6)
        traced = torch.jit.trace(small, (x,))
        assert torch.allclose(traced(x), small(x), atol=1e-6)


def test_an_attention_module_used_twice_is_not_untied():
    class Twice(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.MultiheadAttention(16, 2, batch_first=True)
            self.b = self.a

        def forward(self, x):
            return self.b(self.a(x, x, x)[0], x, x)[0]

    model = Twice().eval()
    plan = make_plan(model, Ratio(2, min_rank=1))
    assert not plan.decomposed_layers
    assert all("shared" in r.reason for r in plan.layers)
    out = decompose(model, plan)
    assert out.a is out.b and type(out.a) is nn.MultiheadAttention
