"""Layer patterns of real code: each layer is decomposed exactly and used, or kept with a reason; clear errors for
what cannot be planned (see docs/real_models.md)."""

import copy

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrizations, parametrize, prune

import lrdlab
from lrdlab import Layers, Ratio, count_flops, decompose, load_decomposed, make_plan, save_decomposed
from lrdlab.lowrank import usage
from lrdlab.lowrank.layers import LowRankLayer
from tests.lowrank.real_code_layers import ReadsWeight, StdConv, full_rank_plan


class ScaledLinear(nn.Linear):
    def forward(self, x):
        return super().forward(x) * 0.125


class ReadsDtype(nn.Module):
    """HF T5's pattern: ``wo`` is called, but its ``weight.dtype`` is read in the parent's forward."""

    def __init__(self):
        super().__init__()
        self.wi, self.wo = nn.Linear(16, 32), nn.Linear(32, 16)

    def forward(self, x):
        return self.wo(self.wi(x).to(self.wo.weight.dtype))



# --- decide from what the forward does -------------------------------------------------------------------


@pytest.mark.parametrize("layer", [StdConv(4, 8, 3, padding=1), ScaledLinear(8, 8)])
def test_subclass_with_its_own_forward_is_kept_and_stays_exact(layer):
    model = nn.Sequential(layer).double().eval()
    x = torch.randn(2, 4, 6, 6, dtype=torch.float64) if isinstance(layer, nn.Conv2d) else torch.randn(2, 8).double()
    plan = full_rank_plan(model, Layers(example_input=x))
    assert not plan["0"].decomposed and "overrides" in plan["0"].reason and "register_safe_layer" in plan["0"].reason
    assert torch.equal(decompose(model, plan)(x), model(x))


def test_register_safe_layer_and_force_opt_in():
    class LoggingLinear(nn.Linear):
        def forward(self, x):
            return super().forward(x)

    model = nn.Sequential(LoggingLinear(8, 8), ScaledLinear(8, 8), LoggingLinear(8, 8))
    try:
        lrdlab.register_safe_layer(LoggingLinear)
        plan = full_rank_plan(model, Layers(input_shape=(1, 8), force=["2"]))
    finally:
        usage.SAFE_LAYERS.discard(LoggingLinear)
    assert plan["0"].decomposed and plan["2"].decomposed and "forced" in plan["2"].reason
    assert not plan["1"].decomposed and "overrides" in plan["1"].reason
    # a forced layer whose forward is not the plain one fails the full-rank check, with the measured error
    with pytest.raises(ValueError, match=r"force=\['1'\]\): ScaledLinear '1' decomposed at full rank changes its "
                                         r"output on input_shape \[1, 8\] by [0-9.e-]+ \(RMS"):
        full_rank_plan(model, Layers(input_shape=(1, 8), force=["1"]))
    with pytest.raises(ValueError, match="subclass of nn.Linear"):
        lrdlab.register_safe_layer(nn.ReLU)


def test_a_layer_used_through_its_weight_is_kept_and_flops_do_not_grow():
    model = ReadsWeight().eval()
    plan = make_plan(model, Ratio(2, allow_larger=True, min_rank=1), Layers(input_shape=(1, 16)))
    assert not plan["qkv"].decomposed and "never called" in plan["qkv"].reason and "force=['qkv']" in plan["qkv"].reason
    assert plan["mlp"].decomposed
    assert count_flops(decompose(model, plan), (1, 16)) <= count_flops(model, (1, 16))


def test_a_layer_whose_weight_is_read_outside_its_forward_is_kept():
    plan = make_plan(ReadsDtype(), Ratio(2, allow_larger=True, min_rank=1), Layers(input_shape=(1, 16)))
    assert plan["wi"].decomposed and not plan["wo"].decomposed and "outside its forward" in plan["wo"].reason


def test_an_uncalled_layer_is_kept_and_the_probe_leaves_the_model_as_it_was():
    class Unused(nn.Module):
        def __init__(self):
            super().__init__()
            self.used, self.aux = nn.Linear(16, 16), nn.Linear(16, 16)

        def forward(self, x):
            return self.used(x)

    model = Unused().train()
    state = copy.deepcopy(model.state_dict())
    rng = torch.get_rng_state()
    plan = make_plan(model, Ratio(2, min_rank=1), Layers(input_shape=(1, 16)))
    assert "not called" in plan["aux"].reason and plan["used"].decomposed
    assert model.training and all(m.training for m in model.modules())
    assert type(model.used) is nn.Linear and not model.used._forward_pre_hooks and not model.used._forward_hooks
    assert torch.equal(torch.get_rng_state(), rng)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())
    assert plan.settings["probe"] == "probed on input_shape [1, 16]"


def test_probe_input_sources():
    plain = nn.Sequential(nn.Linear(8, 8))
    assert make_plan(plain, Ratio(2, min_rank=1)).settings["probe"].startswith("not probed: no input known")
    assert "registry" in make_plan(lrdlab.get_model("resnet20"), Ratio(2, min_rank=1)).settings["probe"]
    with pytest.raises(ValueError, match="probe forward on input_shape"):
        make_plan(plain, Ratio(2, min_rank=1), Layers(input_shape=(1, 3)))
    with pytest.raises(ValueError, match="not both"):
        make_plan(plain, Ratio(2, min_rank=1), Layers(input_shape=(1, 8), example_input=torch.randn(1, 8)))


# --- parametrized, weight-normed and pruned layers -------------------------------------------------------


@pytest.mark.parametrize("parametrization", [parametrizations.weight_norm, parametrizations.spectral_norm])
def test_parametrized_layers_give_exact_trainable_factors(parametrization):
    torch.manual_seed(0)
    model = nn.Sequential(parametrization(nn.Linear(8, 8)), nn.ReLU(), parametrization(nn.Conv2d(8, 4, 1)))
    model = model.double().eval()
    x = torch.randn(2, 8, dtype=torch.float64)
    model[2] = nn.Identity()
    plan = full_rank_plan(model, Layers(example_input=x))
    out = decompose(model, plan)
    assert torch.allclose(out(x), model(x), atol=1e-10)
    assert all(p.requires_grad for p in out[0].parameters()) and "parametrized" in plan["0"].reason
    assert parametrize.is_parametrized(model[0])  # the user's model keeps its parametrization


def test_old_weight_norm_and_prune_are_refused_with_the_fix():
    wn = nn.Sequential(nn.utils.weight_norm(nn.Linear(8, 8)))
    with pytest.raises(ValueError, match=r"layer '0'.*remove_weight_norm"):
        make_plan(wn, Ratio(2, min_rank=1))
    pruned = nn.Sequential(nn.Linear(8, 8), nn.Linear(8, 8))
    plan = make_plan(pruned, Ratio(2, min_rank=1))
    prune.l1_unstructured(pruned[1], "weight", amount=0.5)
    for call in (lambda: make_plan(pruned, Ratio(2, min_rank=1)), lambda: decompose(pruned, plan)):
        with pytest.raises(ValueError, match=r"layer '1'.*prune.remove\(layer, 'weight'\)"):
            call()


# --- hooks -----------------------------------------------------------------------------------------------


def test_hooks_move_to_the_replacement():
    model = nn.Sequential(nn.Linear(8, 8), nn.Linear(8, 8)).double()
    handle = model[0].register_forward_hook(lambda mod, args, out: out.clamp(-0.1, 0.1))
    x = torch.randn(4, 8, dtype=torch.float64)
    out = decompose(model, full_rank_plan(model), inplace=True)
    assert isinstance(out[0], LowRankLayer) and out[0]._forward_hooks
    assert out(x).abs().max() > 0 and torch.allclose(out[0](x).abs().max(), torch.tensor(0.1, dtype=torch.float64))
    handle.remove()  # the user's handle still removes it
    assert not out[0]._forward_hooks


def test_hooks_on_a_rewritten_attention_module_move_too():
    class Attn(nn.Module):
        def __init__(self):
            super().__init__()
            self.mha = nn.MultiheadAttention(16, 2, batch_first=True)

        def forward(self, x):
            return self.mha(x, x, x, need_weights=False)[0]

    model = Attn().double().eval()
    seen = []
    model.mha.register_forward_hook(lambda mod, args, out: seen.append(type(mod).__name__))
    x = torch.randn(1, 4, 16, dtype=torch.float64)
    plan = full_rank_plan(model, Layers(example_input=x))
    seen.clear()  # the probe forward is an ordinary forward: the model's hooks ran
    out = decompose(model, plan)
    torch.testing.assert_close(out(x), model(x))
    assert seen == ["FactorizedMultiheadAttention", "MultiheadAttention"]


def test_state_dict_hooks_are_refused_before_anything_changes():
    model = nn.Sequential(nn.Linear(8, 8))
    model[0]._register_state_dict_hook(lambda *a: None)
    with pytest.raises(ValueError, match=r"layer '0' has state dict hooks"):
        decompose(model, make_plan(model, Ratio(2, min_rank=1)), inplace=True)
    assert isinstance(model[0], nn.Linear)


# --- single layers, decomposed models, lazy layers, scalars, memory format -------------------------------


def test_single_layer_and_already_decomposed_models_get_a_clear_answer():
    with pytest.raises(ValueError, match="single Linear.*wrap it"):
        make_plan(nn.Linear(64, 64), Ratio(2, min_rank=1))
    model = nn.Sequential(nn.Linear(32, 32))
    decomposed = decompose(model, make_plan(model, Ratio(2, min_rank=1)))
    with pytest.raises(ValueError, match=r"already decomposed \(layer '0'"):
        make_plan(decomposed, Ratio(2, min_rank=1))


def test_lazy_layer_kept_until_materialised():
    model = nn.Sequential(nn.LazyLinear(64), nn.Linear(64, 64))
    plan = make_plan(model, Ratio(2, min_rank=1), Layers(input_shape=(1, 16)))
    assert plan["0"].reason == "kept: lazy: not materialised, run a forward first" and plan["1"].decomposed
    assert "lazy" in plan.settings["probe"] and isinstance(model[0], nn.LazyLinear)  # the probe did not run it


def test_tensor_ratio_is_a_number():
    model = nn.Sequential(nn.Linear(32, 32))
    plan = make_plan(model, Ratio(torch.tensor(2.0), min_rank=1))
    assert plan.to_dict() == make_plan(model, Ratio(2.0, min_rank=1)).to_dict()


def test_channels_last_factors_stay_channels_last():
    model = nn.Sequential(nn.Conv2d(8, 16, 3), nn.Conv2d(16, 16, 3)).to(memory_format=torch.channels_last)
    out = decompose(model, make_plan(model, Ratio(2, min_rank=1), method="tucker2"))
    core = out[0].core.weight
    assert core.is_contiguous(memory_format=torch.channels_last) and not core.is_contiguous()


# --- wrappers --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("wrap", [torch.compile, nn.DataParallel])
def test_wrappers_are_unwrapped_for_planning_saving_and_loading(wrap, tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 4))
    wrapped = wrap(model)
    plan = make_plan(wrapped, Ratio(2, min_rank=1))
    assert [r.name for r in plan.layers] == ["0", "2"]
    out = decompose(wrapped, plan)
    save_decomposed(out, plan, tmp_path)
    fresh = load_decomposed(tmp_path, nn.Sequential(nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 4)))
    x = torch.randn(2, 16)
    assert torch.equal(fresh(x), out(x))
    assert set(torch.load(tmp_path / "state_dict.pt")) == set(fresh.state_dict())


# --- VBMF planning cost ----------------------------------------------------------------------------------


def test_vbmf_singular_values_come_from_the_gram_matrix_unless_near_singular(monkeypatch):
    import numpy as np

    from lrdlab.lowrank import ranks

    rng = np.random.default_rng(0)
    Y = rng.standard_normal((40, 300))
    expected = np.linalg.svd(Y, compute_uv=False)
    low = rng.standard_normal((40, 5)) @ rng.standard_normal((5, 300))
    low_expected = np.linalg.svd(low, compute_uv=False)
    rank = ranks.vbmf_rank(Y)

    def no_svd(*args, **kwargs):
        raise AssertionError("full SVD called")

    monkeypatch.setattr(np.linalg, "svd", no_svd)  # the well-conditioned case needs no SVD
    assert np.allclose(ranks.singular_values(Y), expected, rtol=1e-10) and ranks.vbmf_rank(Y) == rank
    monkeypatch.undo()
    assert np.allclose(ranks.singular_values(low), low_expected, atol=1e-12)  # the SVD fallback keeps tiny values
