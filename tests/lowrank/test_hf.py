"""HuggingFace models (built from tiny configs, random weights, no download); tied weights; FLOPs on token ids."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from torch import nn

from lrdlab import (
    FixedRank,
    Ratio,
    count_flops,
    count_params,
    decompose,
    decompose_layer,
    load_decomposed,
    make_plan,
    save_decomposed,
)
from lrdlab.lowrank.layers import LowRankLayer

transformers = pytest.importorskip("transformers")
from lrdlab.lowrank.hf import is_conv1d  # noqa: E402
from lrdlab.zoo.lm import gpt2_from_config  # noqa: E402

GPT2 = dict(n_layer=2, n_embd=64, n_head=4, vocab_size=300, n_positions=32, bos_token_id=0, eos_token_id=0)
BERT = dict(num_hidden_layers=2, hidden_size=64, num_attention_heads=4, intermediate_size=128, vocab_size=300,
            max_position_embeddings=32)


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


def gpt2(dtype=torch.float32) -> nn.Module:
    torch.manual_seed(0)
    return gpt2_from_config(**GPT2).to(dtype)


def test_conv1d_decomposes_exactly_as_its_transposed_linear():
    from transformers.pytorch_utils import Conv1D

    torch.manual_seed(0)
    conv = Conv1D(24, 10).double()  # nf=24 outputs, nx=10 inputs; weight stored [10, 24]
    nn.init.normal_(conv.bias)
    assert is_conv1d(conv) and not is_conv1d(nn.Linear(2, 2))
    full = decompose_layer(conv, "svd", (10,))
    x = torch.randn(3, 7, 10, dtype=torch.double)
    assert (full(x) - conv(x)).abs().max() < 1e-12
    low = decompose_layer(conv, "svd", (4,))
    assert low.first.weight.shape == (4, 10) and low.last.weight.shape == (24, 4)
    s = torch.linalg.svdvals(conv.weight.double())
    err = (low.last.weight @ low.first.weight - conv.weight.T).norm()
    assert abs(err - s[4:].norm()) < 1e-10  # the optimal rank-4 error (Eckart–Young)


def test_gpt2_every_conv1d_decomposed_tied_head_skipped_and_exact_at_full_rank():
    model = gpt2(torch.double)
    assert model.lm_head.weight is model.transformer.wte.weight
    plan = make_plan(model, Ratio(2))
    conv1d = [n for n, m in model.named_modules() if is_conv1d(m)]
    assert len(conv1d) == 8 and sorted(r.name for r in plan.decomposed_layers) == sorted(conv1d)
    assert not plan["lm_head"].decomposed and "tied" in plan["lm_head"].reason
    ids = torch.randint(0, 300, (2, 12))
    full = decompose(model, make_plan(model, FixedRank("full", allow_larger=True)))
    assert not isinstance(full.lm_head, LowRankLayer)
    with torch.no_grad():
        assert rel(full(ids).logits, model(ids).logits) < 1e-10
    small = decompose(model, plan)
    assert small.lm_head.weight is small.transformer.wte.weight, "the head must stay tied"
    assert count_params(small) < count_params(model)
    removed = count_params(model) - count_params(small)
    assert removed == sum(r.params_before - r.params_after for r in plan.layers)
    with torch.no_grad():
        assert torch.isfinite(small(ids).logits).all()


def test_gpt2_save_load_and_flops_on_token_ids(tmp_path):
    model = gpt2()
    plan = make_plan(model, Ratio(2))
    small = decompose(model, plan)
    save_decomposed(small, plan, tmp_path / "gpt2")
    loaded = load_decomposed(tmp_path / "gpt2", gpt2()).eval()
    ids = torch.randint(0, 300, (2, 12))
    with torch.no_grad():
        assert torch.equal(loaded(ids).logits, small(ids).logits)
    assert loaded.lm_head.weight is loaded.transformer.wte.weight
    before = count_flops(model, ids)
    assert before == count_flops(model, (2, 12), dtype=torch.long) > 0
    assert 0 < count_flops(small, ids) < before


def test_bert_linear_layers_decompose_exactly():
    torch.manual_seed(0)
    model = transformers.BertModel(transformers.BertConfig(**BERT)).eval().double()
    plan = make_plan(model, Ratio(2))
    attn = [r for r in plan.decomposed_layers if ".attention.self." in r.name]
    assert len(attn) == 2 * 3  # query, key, value per layer
    assert len(plan.decomposed_layers) >= 2 * 6
    full = decompose(model, make_plan(model, FixedRank("full", allow_larger=True)))
    ids = torch.randint(0, 300, (2, 10))
    mask = torch.ones(2, 10, dtype=torch.long)
    mask[1, 7:] = 0
    with torch.no_grad():
        a = model(ids, attention_mask=mask).last_hidden_state
        b = full(ids, attention_mask=mask).last_hidden_state
        assert rel(b, a) < 1e-10
        assert torch.isfinite(decompose(model, plan)(ids, attention_mask=mask).last_hidden_state).all()


class TinyLM(nn.Module):
    """An embedding and a head that shares its weight, plus one Linear used twice."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(100, 32)
        self.mix = nn.Linear(32, 32)
        self.again = self.mix  # the same module under a second name
        self.body = nn.Linear(32, 32)
        self.head = nn.Linear(32, 100, bias=False)
        self.head.weight = self.embed.weight

    def forward(self, ids):
        return self.head(self.again(self.mix(self.body(self.embed(ids)))))


def test_shared_parameters_and_modules_are_skipped_and_counted_once():
    torch.manual_seed(0)
    model = TinyLM()
    assert count_params(model) == 100 * 32 + 2 * (32 * 32 + 32)
    plan = make_plan(model, Ratio(2))
    assert "tied" in plan["head"].reason and not plan["head"].decomposed
    assert "shared" in plan["mix"].reason and not plan["mix"].decomposed
    assert plan["body"].decomposed
    small = decompose(model, plan)
    assert count_params(small) < count_params(model), "decomposing must never grow a tied model"
    assert small.head.weight is small.embed.weight and small.again is small.mix
    assert count_flops(model, (2, 5), dtype=torch.long) > count_flops(small, torch.zeros(2, 5, dtype=torch.long))


def test_import_lrdlab_does_not_import_transformers():
    code = ("import sys, lrdlab, lrdlab.lowrank.plan, lrdlab.lowrank.hf, lrdlab.zoo.lm; "
            "print('transformers' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
