"""The opt-in low-rank output head: untie lm_head from the input embedding, plan and decompose it, save it."""

from __future__ import annotations

import re

import pytest
import torch

from lrdlab import Ratio, count_params, decompose, make_plan

pytest.importorskip("transformers")
from lrdlab.lowrank.hf_save import load_hf, save_hf  # noqa: E402
from lrdlab.lowrank.lm_head import plan_untied_lm_head, tied_lm_head, untie_lm_head  # noqa: E402


@pytest.fixture
def tied(tiny_llama):
    return tiny_llama(vocab_size=512, tie_word_embeddings=True)


def _ids(seed=0):
    return torch.randint(0, 512, (2, 12), generator=torch.Generator().manual_seed(seed))


def test_untie_copies_the_head_and_leaves_the_users_model_tied(tied):
    assert tied_lm_head(tied) == ("lm_head", "model.embed_tokens")
    untied = untie_lm_head(tied)
    assert tied.lm_head.weight is tied.model.embed_tokens.weight and tied.config.tie_word_embeddings
    assert untied.lm_head.weight is not untied.model.embed_tokens.weight and tied_lm_head(untied) is None
    assert not untied.config.tie_word_embeddings
    with torch.no_grad():
        torch.testing.assert_close(untied(_ids()).logits, tied(_ids()).logits, rtol=0, atol=0)
    with pytest.raises(ValueError, match="not tied"):
        untie_lm_head(untied)


def test_the_plan_shows_the_head_and_counts_the_whole_model_from_the_tied_one(tied):
    kept = make_plan(tied, Ratio(2))
    assert not kept["lm_head"].decomposed and "tied" in kept["lm_head"].reason
    linears = [r for r in kept.layers if r.decomposed]
    before, after = sum(r.params_before for r in linears), sum(r.params_after for r in linears)
    assert f"decomposed layers' params {before:,} → {after:,}" in kept.summary()  # the kept head is not counted
    assert f"whole model {count_params(tied):,} → {count_params(decompose(tied, kept)):,}" in kept.summary()

    untied, plan = plan_untied_lm_head(tied, Ratio(2))
    head = plan["lm_head"]
    assert head.decomposed and head.params_before == 512 * 64 and head.params_after < head.params_before
    assert "untied from model.embed_tokens" in head.reason
    low = decompose(untied, plan)
    whole = re.search(r"whole model ([\d,]+) → ([\d,]+)", plan.summary())
    assert whole and int(whole[1].replace(",", "")) == count_params(tied)
    assert int(whole[2].replace(",", "")) == count_params(low)  # the embedding kept, the head's factors added
    assert f"untied lm_head {head.params_before:,} → {head.params_after:,}" in plan.summary()
    torch.testing.assert_close(low.model.embed_tokens.weight, tied.model.embed_tokens.weight, rtol=0, atol=0)


def test_a_decomposed_head_saves_and_reloads_exact(tied, tmp_path):
    untied, plan = plan_untied_lm_head(tied, Ratio(2))
    low = decompose(untied, plan)
    save_hf(low, plan, tmp_path / "low")
    back = load_hf(tmp_path / "low")
    assert type(back.lm_head).__name__ == "LowRankLayer" and not back.config.tie_word_embeddings
    with torch.no_grad():
        torch.testing.assert_close(back(_ids(1)).logits, low(_ids(1)).logits, rtol=0, atol=1e-6)
