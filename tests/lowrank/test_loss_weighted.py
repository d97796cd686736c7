"""Output-Fisher measurement and loss-weighted decomposition on a tiny random Llama (seconds)."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from lrdlab.lowrank.fisher import output_fisher
from lrdlab.lowrank.loss_weighted import (
    build_decomposed,
    measure_loss_weights,
    spectra_of,
    weighted_svds,
)
from lrdlab.lowrank.plan import Ratio, make_plan
from lrdlab.lowrank.plan_config import LossAware
from tests.lowrank.tiny_llama import tiny_llama

transformers = pytest.importorskip("transformers")
VOCAB = 48


def _llama(seed: int = 0) -> nn.Module:
    return tiny_llama(2, VOCAB, seed)


def _batches(seed: int = 1) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return list(torch.randint(0, VOCAB, (4, 12), generator=gen).split(2))


def _loss(model: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    logits = model(input_ids=ids).logits
    return F.cross_entropy(logits[:, :-1].reshape(-1, VOCAB), ids[:, 1:].reshape(-1), reduction="sum")


def test_output_fisher_is_the_squared_gradient_of_the_summed_loss():
    model = _llama()
    name = "model.layers.1.mlp.down_proj"
    batches = _batches()
    fisher, moments = output_fisher(model, batches, [name], full=True, progress=False)
    # reference: the gradient w.r.t. the layer's output, by autograd with the output captured directly
    sq = torch.zeros(32, dtype=torch.float64)
    gram = torch.zeros(32, 32, dtype=torch.float64)
    for ids in batches:
        got = []
        h = model.get_submodule(name).register_forward_hook(lambda m, a, o, got=got: got.append(o) or None)
        for p in model.parameters():
            p.requires_grad_(True)
        loss = _loss(model, ids)
        h.remove()
        (g,) = torch.autograd.grad(loss, got)
        g = g.reshape(-1, 32)
        sq += (g ** 2).sum(0)
        gram += g.T @ g
    f = fisher[name]
    assert f.rows == 48
    torch.testing.assert_close(f.sq, sq)
    torch.testing.assert_close(f.gram, gram)
    assert moments[name].rows == 48 and moments[name].gram.shape == (64, 64)


def test_the_users_model_is_left_as_it_was():
    model = _llama().train()
    frozen = "model.layers.0.self_attn.q_proj"
    model.get_submodule(frozen).weight.requires_grad_(False)
    before = {n: p.requires_grad for n, p in model.named_parameters()}
    hooks = sum(len(m._forward_hooks) for m in model.modules())
    state = {k: v.clone() for k, v in model.state_dict().items()}
    measure_loss_weights(model, _batches(), progress=False)
    assert model.training
    assert {n: p.requires_grad for n, p in model.named_parameters()} == before
    assert all(p.grad is None for p in model.parameters())
    assert sum(len(m._forward_hooks) for m in model.modules()) == hooks
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, state[k], rtol=0, atol=0)


def test_a_model_with_every_parameter_frozen_still_gets_gradients():
    model = _llama()
    for p in model.parameters():
        p.requires_grad_(False)
    stats = measure_loss_weights(model, _batches(), progress=False)
    assert all(bool((f.sq > 0).any()) for f in stats.fisher.values())
    assert not any(p.requires_grad for p in model.parameters())


@pytest.mark.parametrize("weighting", ["plain", "diagonal", "full"])
def test_full_ranks_rebuild_the_model(weighting):
    model = _llama()
    stats = measure_loss_weights(model, _batches(), full=weighting == "full", progress=False)
    svds = weighted_svds(model, stats, weighting, progress=False)
    ranks = {n: len(s.s) for n, s in svds.items()}
    low = build_decomposed(model, svds, ranks)
    ids = _batches(7)[0]
    torch.testing.assert_close(low(input_ids=ids).logits, model(input_ids=ids).logits, rtol=1e-7, atol=1e-7)
    assert sum(1 for m in low.modules() if type(m).__name__ == "LowRankLayer") == len(ranks)


def test_loss_allocation_holds_the_uniform_budget_and_the_floor():
    model = _llama()
    stats = measure_loss_weights(model, _batches(), progress=False)
    svds = weighted_svds(model, stats, "diagonal", progress=False)
    spectra = spectra_of(svds, stats.tokens)
    policy = LossAware(1.5, spectra, normalise="output", floor=0.5)
    uniform = {row.name: row.spec[1][0] for row in make_plan(model, Ratio(1.5)).decomposed_layers}
    cost = {n: s.cost_per_rank for n, s in spectra.layers.items()}
    assert sum(r * cost[n] for n, r in policy.allocated.items()) <= sum(uniform[n] * cost[n] for n in cost)
    assert all(policy.allocated[n] >= uniform[n] // 2 for n in cost)
    # the allocation's summed loss estimate is no worse than uniform ranks' on the same spectra
    assert sum(svds[n].loss(r) for n, r in policy.allocated.items()) <= sum(svds[n].loss(uniform[n]) for n in cost)


def test_a_layer_that_never_runs_is_named():
    model = _llama()
    model.model.layers[1].mlp.extra = nn.Linear(32, 32).double()  # planned, never called by the forward

    with pytest.raises(ValueError, match="no layer named"):
        output_fisher(model, _batches(), ["model.layers.1.mlp.nope"], progress=False)
    fisher, moments = output_fisher(model, _batches(), ["model.layers.1.mlp.extra"], progress=False)
    with pytest.raises(ValueError, match="never received a gradient"):
        fisher["model.layers.1.mlp.extra"].diagonal()


def test_decompose_loss_weighted_fits_the_budget_and_saves(tmp_path):
    from lrdlab.lowrank.decompose import load_decomposed, save_decomposed
    from lrdlab.lowrank.loss_weighted import LossWeighted, decompose_loss_weighted

    model = _llama()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    ids = {"input_ids": _batches(5)[0]}
    batches = [{"input_ids": b} for b in _batches()]  # dict batches, as a tokenizer gives them
    uniform = make_plan(model, Ratio(1.5))

    def after(plan):
        return sum(r.params_after for r in plan.decomposed_layers)

    for allocate in (False, True):
        low, plan = decompose_loss_weighted(model, batches, LossWeighted(1.5, allocate=allocate), progress=False)
        assert after(plan) <= after(uniform)
        assert not torch.equal(low(**ids).logits, model(**ids).logits)
        if not allocate:
            assert [r.spec for r in plan.decomposed_layers] == [r.spec for r in uniform.decomposed_layers]
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, state[k], rtol=0, atol=0)
    save_decomposed(low, plan, tmp_path)
    again = load_decomposed(tmp_path, _llama(3)).double()  # the factors are rebuilt in the default dtype
    torch.testing.assert_close(again(**ids).logits, low(**ids).logits)


@pytest.mark.parametrize("bad", [dict(ratio=1.0), dict(ratio=2, floor=1.5), dict(ratio=2, weighting="kfac"),
                                 dict(ratio=2, allocate="yes"), dict(ratio=2, ridge=-1.0)])
def test_loss_weighted_settings_are_checked(bad):
    from lrdlab.lowrank.loss_weighted import LossWeighted

    with pytest.raises(ValueError, match="LossWeighted"):
        LossWeighted(**bad)


def test_auto_is_loss_weighted_for_a_causal_lm_and_corrected_otherwise():
    from lrdlab.lowrank.loss_weighted import resolved_mode

    model = _llama()
    plan = make_plan(model, Ratio(1.5))
    assert resolved_mode(model, plan, "auto") == "loss-weighted"
    assert resolved_mode(model, plan, "one-shot") == "one-shot"
    cnn = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 8, 3))
    assert resolved_mode(cnn, make_plan(cnn, Ratio(2)), "auto") == "corrected"


def test_the_loss_weighted_mode_is_the_weighted_svd_at_the_plans_ranks():
    from lrdlab import Calibration, decompose
    from lrdlab.lowrank.loss_weighted import LossWeighted, decompose_loss_weighted

    model = _llama()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    plan = make_plan(model, Ratio(1.5))
    batches = _batches()
    default = decompose(model, plan, calibration=batches, progress=False)  # "auto": a causal LM
    named = decompose(model, plan, calibration=Calibration(batches, mode="loss-weighted"), progress=False)
    reference, _ = decompose_loss_weighted(model, batches, LossWeighted(1.5, allocate=False), progress=False)
    ids = _batches(7)[0]
    with torch.no_grad():
        torch.testing.assert_close(default(input_ids=ids).logits, reference(input_ids=ids).logits)
        torch.testing.assert_close(named(input_ids=ids).logits, reference(input_ids=ids).logits)
    assert [type(m).__name__ for m in named.modules()].count("LowRankLayer") == len(plan.decomposed_layers)
    assert not named.training
    for k, v in model.state_dict().items():  # the user's model is left as it was, tied weights included
        torch.testing.assert_close(v, state[k], rtol=0, atol=0)
    assert named.lm_head.weight.data_ptr() != model.lm_head.weight.data_ptr()


def test_the_loss_weighted_fit_is_never_worse_than_svd_llm_on_its_own_objective():
    """Each layer's fit minimises ‖D^½ (W − W′) X‖² (D: the output-channel Fisher, X: its inputs) over its rank;
    SVD-LLM's (one-shot) layer at the same rank does no better on it."""
    from lrdlab import Calibration, decompose
    from lrdlab.lowrank.layers import dense_weight

    model = _llama()
    plan = make_plan(model, Ratio(2))
    batches = list(torch.randint(0, VOCAB, (8, 24), generator=torch.Generator().manual_seed(2)).split(2))
    stats = measure_loss_weights(model, batches, progress=False)  # 192 tokens: more than any input dimension
    ours = decompose(model, plan, calibration=Calibration(batches, mode="loss-weighted", ridge=0.0))
    svd_llm = decompose(model, plan, calibration=Calibration(batches, mode="one-shot", ridge=0.0, bn=False))

    def objective(net: nn.Module, name: str) -> float:
        delta = dense_weight(model.get_submodule(name)) - dense_weight(net.get_submodule(name))
        cov = stats.moments[name].gram / stats.moments[name].rows
        return float((stats.fisher[name].diagonal(0.0) * (delta @ cov @ delta.T).diagonal()).sum())

    better = 0
    for row in plan.decomposed_layers:
        mine, theirs = objective(ours, row.name), objective(svd_llm, row.name)
        assert mine <= theirs * (1 + 1e-9) + 1e-12, (row.name, mine, theirs)
        better += mine < 0.99 * theirs
    assert better >= len(plan.decomposed_layers) // 2, better


def test_the_loss_weighted_mode_refuses_what_it_cannot_fit_and_changes_nothing():
    from lrdlab import Calibration, decompose

    cnn = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 8, 3))
    before = [p.clone() for p in cnn.parameters()]
    with pytest.raises(ValueError, match="not a causal LM; use mode='corrected'"):
        decompose(cnn, make_plan(cnn, Ratio(2)), calibration=Calibration([torch.randn(2, 3, 8, 8)],
                                                                          mode="loss-weighted"))
    assert all(torch.equal(a, b) for a, b in zip(before, cnn.parameters()))
    from lrdlab.lowrank.calibration import calibrated_decompose

    model = _llama()
    for mode in ("auto", "loss-weighted"):  # the engine of the other modes points to decompose for these
        with pytest.raises(ValueError, match=r"use decompose\(model, plan, calibration=Calibration"):
            calibrated_decompose(model, make_plan(model, Ratio(1.5)), _batches(), mode=mode)
