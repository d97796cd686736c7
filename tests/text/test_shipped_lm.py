"""The shipped byte-level Llama: loads from the package, beats the n-gram baselines, record matches the weights."""

from __future__ import annotations

import pytest
import torch

from lrdlab.finetune.loop import evaluate
from lrdlab.zoo.pretrained import WEIGHTS_DIR, available, pretrained, pretrained_info

pytest.importorskip("transformers")
from lrdlab.zoo.text import ngram_perplexity, text_loaders  # noqa: E402

pytestmark = pytest.mark.skipif("llama_pydoc" not in available(), reason="llama_pydoc not shipped")


def test_shipped_lm_is_small_and_its_record_names_recipe_baselines_and_machine():
    info = pretrained_info("llama_pydoc")
    assert (WEIGHTS_DIR / "llama_pydoc.pt").stat().st_size < 4_000_000
    assert info.recipe["epochs"] >= 1 and info.machine["cpu"] and info.kind == "causal_lm"
    assert info.baselines is not None and info.validation_perplexity is not None
    assert info.baselines["bigram_perplexity"] == pytest.approx(ngram_perplexity(2), rel=1e-3)
    assert info.validation_perplexity < 0.5 * info.baselines["bigram_perplexity"]
    assert f"validation perplexity {info.validation_perplexity:.2f}" in str(info)


def test_shipped_lm_loads_and_beats_the_bigram_baseline_on_validation():
    model = pretrained("llama_pydoc")
    attn = model.model.layers[0].self_attn
    assert attn.k_proj.out_features < attn.q_proj.out_features  # GQA
    result = evaluate(model, text_loaders(128, 32, validation_sequences=24).test)
    assert result["perplexity"] < ngram_perplexity(2)
    assert torch.isfinite(torch.tensor(result["loss"]))
