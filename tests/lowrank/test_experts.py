"""Per-expert SVD of HuggingFace MoE blocks whose experts are 3-D parameters (Mixtral's ``gate_up_proj [E, 2F, D]``,
``down_proj [E, D, F]``): one plan row per expert tensor, exact at full rank, saved and reloaded by state_dict."""

import warnings

import pytest
import torch

from lrdlab import FixedRank, Layers, Ratio, count_flops, count_params, decompose, make_plan
from lrdlab.lowrank.decompose import load_decomposed, save_decomposed
from lrdlab.lowrank.experts import FactorizedExperts, unsupported_reason
from lrdlab.lowrank.hf_save import load_hf, save_hf
from lrdlab.lowrank.layers import LowRankLayer

T = pytest.importorskip("transformers")
from transformers.models.mixtral.modeling_mixtral import MixtralExperts  # noqa: E402

E, LAYERS = 4, 2


def _config():
    # eager experts: the grouped_mm kernel transformers picks by default on CPU takes no float64
    return T.MixtralConfig(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=LAYERS,
                           num_attention_heads=4, num_key_value_heads=2, num_local_experts=E, num_experts_per_tok=2,
                           max_position_embeddings=64, experts_implementation="eager")


def _mixtral():
    torch.manual_seed(0)
    return T.MixtralForCausalLM(_config()).eval()


def _plan(model, policy, layers=None):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return make_plan(model, policy, layers)


def _expert_rows():
    return {f"model.layers.{i}.mlp.experts.{t}.{e}" for i in range(LAYERS) for e in range(E)
            for t in ("gate_up_proj", "down_proj")}


def test_every_expert_tensor_has_a_row_and_full_rank_is_exact_in_float64():
    model = _mixtral().double()
    plan = _plan(model, FixedRank("full", allow_larger=True), Layers(include="*experts*"))
    assert {r.name for r in plan.decomposed_layers} == _expert_rows()
    assert (plan["model.layers.0.mlp.experts.gate_up_proj.1"].in_channels,
            plan["model.layers.0.mlp.experts.gate_up_proj.1"].out_channels) == (32, 96)
    assert (plan["model.layers.1.mlp.experts.down_proj.3"].in_channels,
            plan["model.layers.1.mlp.experts.down_proj.3"].out_channels) == (48, 32)
    small = decompose(model, plan)
    experts = small.model.layers[0].mlp.experts
    assert type(experts) is FactorizedExperts and all(isinstance(m, LowRankLayer) for m in experts.gate_up_proj)
    assert type(model.model.layers[0].mlp.experts) is MixtralExperts  # the original is untouched
    ids = torch.randint(0, 64, (3, 20))
    with torch.no_grad():
        want, got = model(ids).logits, small(ids).logits
    assert torch.allclose(got, want, rtol=0, atol=1e-10 * want.abs().max().item())


def test_ratio_2_halves_the_experts_and_the_summary_counts_every_parameter():
    model = _mixtral()
    total = sum(p.numel() for p in model.parameters())
    plan = _plan(model, Ratio(2, min_rank=1))
    assert _expert_rows() <= {r.name for r in plan.decomposed_layers}
    rest = plan.settings["uncovered"]
    assert rest["params"] + sum(r.params_before for r in plan.layers) == total
    assert "experts" not in rest["largest"]  # the 3-D tensors are covered by their rows now
    small = decompose(model, plan)
    before = sum(r.params_before for r in plan.decomposed_layers)
    after = sum(r.params_after for r in plan.decomposed_layers)
    assert count_params(small) == total - (before - after)
    assert count_params(small) < 0.6 * total
    assert f"{count_params(small):,}" in plan.summary()
    ids = torch.randint(0, 64, (2, 16))
    assert count_flops(small, ids) < 0.7 * count_flops(model, ids)


def test_saved_experts_reload_by_state_dict(tmp_path):
    model = _mixtral()
    plan = _plan(model, Ratio(2, min_rank=1))
    small = decompose(model, plan)
    save_decomposed(small, plan, tmp_path)
    keys = torch.load(tmp_path / "state_dict.pt", weights_only=True).keys()
    assert "model.layers.0.mlp.experts.down_proj.2.first.weight" in keys
    assert not any(k.endswith("experts.gate_up_proj") for k in keys)
    loaded = load_decomposed(tmp_path, T.MixtralForCausalLM(_config()).eval())
    save_hf(small, plan, tmp_path / "hf")
    from_hf = load_hf(tmp_path / "hf")
    ids = torch.randint(0, 64, (2, 12))
    with torch.no_grad():
        want = small(ids).logits
        assert torch.equal(loaded(ids).logits, want) and torch.equal(from_hf(ids).logits, want)


def test_an_experts_module_with_its_own_forward_stays_whole_and_is_counted():
    class Scaled(MixtralExperts):
        def forward(self, hidden_states, top_k_index, top_k_weights):
            return 2 * super().forward(hidden_states, top_k_index, top_k_weights)

    model = _mixtral()
    model.model.layers[0].mlp.experts = Scaled(_config())
    assert "not MixtralExperts' eager forward" in unsupported_reason(model.model.layers[0].mlp.experts)
    plan = _plan(model, Ratio(2, min_rank=1))
    names = {r.name for r in plan.layers}
    assert not any(n.startswith("model.layers.0.mlp.experts.") for n in names)
    assert "model.layers.1.mlp.experts.gate_up_proj.0" in names
    rest = plan.settings["uncovered"]
    assert rest["params"] + sum(r.params_before for r in plan.layers) == sum(p.numel() for p in model.parameters())
    assert rest["largest"] == "model.layers.0.mlp.experts.gate_up_proj"


def test_default_calibration_fits_the_routed_experts():
    model = _mixtral()
    plan = _plan(model, Ratio(2, min_rank=1))
    batches = [torch.randint(0, 64, (4, 16)) for _ in range(2)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fitted = decompose(model, plan, calibration=batches)
    plain = decompose(model, plan)
    ids = torch.cat(batches)
    with torch.no_grad():
        want = model(ids).logits
        err_fit = (fitted(ids).logits - want).norm() / want.norm()
        err_plain = (plain(ids).logits - want).norm() / want.norm()
    assert type(fitted.model.layers[1].mlp.experts) is FactorizedExperts
    assert err_fit < err_plain  # fitted to (its own) calibration tokens


def test_count_flops_counts_the_grouped_mm_experts_kernel():
    """transformers' default experts kernel on CPU is torch._grouped_mm, which torch's flop counter leaves out."""
    ids = torch.ones(1, 8, dtype=torch.long)
    counts = {}
    for kernel in ("grouped_mm", "eager"):
        torch.manual_seed(0)
        config = _config()
        config._experts_implementation = kernel
        counts[kernel] = count_flops(T.MixtralForCausalLM(config).eval(), ids)
    assert counts["grouped_mm"] == counts["eager"]


def test_a_plan_without_expert_rows_still_applies_and_leaves_the_experts_whole(tmp_path):
    """Plans saved before lrdlab planned 3-D experts have no rows for them."""
    model = _mixtral()
    plan = _plan(model, Ratio(2, min_rank=1))
    plan.layers = [r for r in plan.layers if ".experts." not in r.name]
    small = decompose(model, plan)
    assert type(small.model.layers[0].mlp.experts) is MixtralExperts
    save_decomposed(small, plan, tmp_path)
    loaded = load_decomposed(tmp_path, T.MixtralForCausalLM(_config()).eval())
    ids = torch.randint(0, 64, (2, 12))
    with torch.no_grad():
        assert torch.equal(loaded(ids).logits, small(ids).logits)


@pytest.mark.parametrize("family", ["qwen3_moe", "olmoe", "qwen2_moe"])
def test_other_families_with_the_mixtral_experts_forward_get_expert_rows_exact_at_full_rank(family):
    common = dict(vocab_size=64, hidden_size=32, num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=2,
                  max_position_embeddings=64, experts_implementation="eager", num_experts=E, num_experts_per_tok=2,
                  eos_token_id=None)
    configs = {"qwen3_moe": lambda: T.Qwen3MoeConfig(**common, moe_intermediate_size=24, intermediate_size=48),
               "olmoe": lambda: T.OlmoeConfig(**common, intermediate_size=24),
               "qwen2_moe": lambda: T.Qwen2MoeConfig(**common, moe_intermediate_size=24, intermediate_size=48,
                                                     shared_expert_intermediate_size=24)}
    torch.manual_seed(0)
    model = T.AutoModelForCausalLM.from_config(configs[family]()).eval().double()
    plan = _plan(model, FixedRank("full", allow_larger=True), Layers(include="*experts*"))
    assert sum(".experts.down_proj." in r.name for r in plan.decomposed_layers) == E
    small = decompose(model, plan)
    ids = torch.randint(0, 64, (2, 10))
    with torch.no_grad():
        want, got = model(ids).logits, small(ids).logits
    assert torch.allclose(got, want, rtol=0, atol=1e-10 * want.abs().max().item())
