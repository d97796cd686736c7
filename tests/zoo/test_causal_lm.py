"""The user's causal LM for bench-lm: a shipped name, a checkpoint folder or a GGUF file."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("transformers")
from lrdlab.zoo.smollm import load_causal_lm  # noqa: E402


def _tiny(**config):
    from lrdlab.zoo.lm import llama_from_config

    torch.manual_seed(0)
    return llama_from_config(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                             num_attention_heads=4, num_key_value_heads=2, **config)


def test_a_checkpoint_folder_loads_in_eval_mode_with_the_same_logits(tmp_path):
    model = _tiny(tie_word_embeddings=True)
    model.save_pretrained(tmp_path / "ckpt")
    back = load_causal_lm(tmp_path / "ckpt")
    assert not back.training and back.lm_head.weight is back.model.embed_tokens.weight
    x = torch.tensor([[1, 2, 3, 4]])
    with torch.no_grad():
        torch.testing.assert_close(back(x).logits, model(x).logits, rtol=1e-5, atol=1e-5)


def test_a_decomposed_folder_and_a_missing_path_are_refused(tmp_path):
    from lrdlab import Ratio, decompose, make_plan
    from lrdlab.lowrank.hf_save import save_hf

    model = _tiny()
    plan = make_plan(model, Ratio(2))
    save_hf(decompose(model, plan), plan, tmp_path / "low")
    with pytest.raises(ValueError, match="already decomposed"):
        load_causal_lm(tmp_path / "low")
    with pytest.raises(ValueError, match="smollm2_135m"):
        load_causal_lm(tmp_path / "missing")
    (tmp_path / "weights.bin").write_bytes(b"x")
    with pytest.raises(ValueError, match=r"\.gguf"):
        load_causal_lm(tmp_path / "weights.bin")


@pytest.mark.slow
def test_the_real_gguf_file_loads_without_its_gguf_record(real_gguf_path):
    model = load_causal_lm(real_gguf_path)
    assert getattr(model.config, "quantization_config", None) is None and getattr(model, "hf_quantizer", None) is None
    assert len(model.model.layers) == 30 and model.lm_head.weight is model.model.embed_tokens.weight
    assert not model.training and next(model.parameters()).dtype == torch.float32
