"""HF-format save/load of a decomposed causal LM: exact round trip, a loud plain from_pretrained, dense merge."""

from __future__ import annotations

import pytest
import torch

from lrdlab import Ratio, decompose, make_plan

transformers = pytest.importorskip("transformers")
from lrdlab.lowrank.hf_save import load_hf, merge_to_dense, save_hf  # noqa: E402


@pytest.fixture(scope="module")
def decomposed(tiny_llama):
    model = tiny_llama()
    plan = make_plan(model, Ratio(2))
    x = torch.randint(0, 256, (4, 32), generator=torch.Generator().manual_seed(0))
    return model, plan, decompose(model, plan, calibration=[x]), x


def test_round_trip_gives_identical_logits(decomposed, tmp_path):
    _, plan, low, x = decomposed
    save_hf(low, plan, tmp_path / "lm")
    back = load_hf(tmp_path / "lm")
    with torch.no_grad():
        diff = (back(x).logits - low(x).logits).abs().max()
    assert float(diff) <= 1e-6
    assert back.config._attn_implementation == low.config._attn_implementation  # eager stays eager
    assert sum(p.numel() for p in back.parameters()) == sum(p.numel() for p in low.parameters())


def test_plain_from_pretrained_fails_loudly(decomposed, tmp_path):
    _, plan, low, _ = decomposed
    save_hf(low, plan, tmp_path / "lm")
    with pytest.raises(ValueError, match="lrdlab_lowrank"):
        transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "lm")


def test_merge_to_dense_saves_a_plain_checkpoint_with_the_same_logits(decomposed, tmp_path):
    model, _, low, x = decomposed
    import copy

    dense = merge_to_dense(copy.deepcopy(low))
    assert sum(p.numel() for p in dense.parameters()) == sum(p.numel() for p in model.parameters())
    dense.save_pretrained(tmp_path / "dense")
    plain = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "dense").eval()
    with torch.no_grad():
        assert torch.allclose(plain(x).logits, low(x).logits, atol=1e-4)


def test_save_hf_refuses_a_model_without_a_config(tmp_path):
    from torch import nn

    net = nn.Sequential(nn.Linear(8, 8))
    with pytest.raises(ValueError, match="Hugging Face model"):
        save_hf(net, make_plan(net, Ratio(2)), tmp_path / "x")
