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


# --- tied weights, GGUF-loaded models ---------------------------------------------------------------------


def _gguf_like(model):
    """What transformers leaves on a model it dequantized from a GGUF file: a GGUF config and quantizer."""
    from transformers.quantizers.auto import AutoHfQuantizer

    config = transformers.GgufConfig(gguf_file="model.gguf")
    model.config.quantization_config = config
    model.hf_quantizer = AutoHfQuantizer.from_config(config)
    return model


def _size(path):
    return sum(f.stat().st_size for f in path.iterdir() if f.suffix == ".safetensors")


def test_shared_entries_store_a_tied_tensor_once_and_copy_overlapping_views():
    from lrdlab.lowrank.hf_save import shared_entries

    w = torch.randn(6, 4)
    stored, aliases = shared_entries({"a": w, "b": w, "top": w[:3], "c": torch.ones(2)})
    assert aliases == {"b": "a"} and set(stored) == {"a", "top", "c"}
    assert stored["a"].data_ptr() == w.data_ptr()  # not copied
    assert stored["top"].data_ptr() != w.data_ptr()  # the overlapping view is a copy
    torch.testing.assert_close(stored["top"], w[:3])


@pytest.mark.parametrize("ratio", [1.25, 2.0])
def test_tied_embedding_is_stored_once_and_the_model_is_smaller_than_dense(tiny_llama, tmp_path, ratio):
    from safetensors import safe_open

    model = tiny_llama(vocab_size=512, tie_word_embeddings=True)
    assert model.lm_head.weight is model.model.embed_tokens.weight
    plan = make_plan(model, Ratio(ratio))
    assert not plan["lm_head"].decomposed  # kept: tied
    low = decompose(model, plan)
    save_hf(low, plan, tmp_path / "low")
    model.save_pretrained(tmp_path / "dense")
    with safe_open(str(tmp_path / "low" / "model.safetensors"), "pt") as f:
        keys = set(f.keys())
    assert len(keys & {"lm_head.weight", "model.embed_tokens.weight"}) == 1
    assert _size(tmp_path / "low") < _size(tmp_path / "dense")
    back = load_hf(tmp_path / "low")
    assert back.lm_head.weight is back.model.embed_tokens.weight  # tied again
    x = torch.randint(0, 512, (2, 16), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(back(x).logits, low(x).logits, rtol=0, atol=1e-6)


def test_a_gguf_loaded_model_saves_and_merges_without_its_gguf_record(tiny_llama, tmp_path):
    import copy
    import json

    model = _gguf_like(tiny_llama(tie_word_embeddings=True))
    with pytest.raises(ValueError, match="gguf"):  # what transformers does with a GGUF-loaded model
        copy.deepcopy(model).save_pretrained(tmp_path / "refused")
    plan = make_plan(model, Ratio(2))
    low = decompose(model, plan)
    save_hf(low, plan, tmp_path / "low")
    assert "quantization_config" not in json.loads((tmp_path / "low" / "config.json").read_text())
    x = torch.randint(0, 256, (2, 16), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        torch.testing.assert_close(load_hf(tmp_path / "low")(x).logits, low(x).logits, rtol=0, atol=1e-6)
        expected = low(x).logits
    dense = merge_to_dense(low)
    dense.save_pretrained(tmp_path / "dense")
    assert "quantization_config" not in json.loads((tmp_path / "dense" / "config.json").read_text())
    plain = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "dense").eval()
    with torch.no_grad():
        torch.testing.assert_close(plain(x).logits, expected, rtol=1e-4, atol=1e-4)
    assert getattr(model.config, "quantization_config", None) is not None  # the user's model is left as it was


@pytest.mark.slow
def test_real_gguf_loaded_smollm2_saves_smaller_reloads_exact_and_merges(tmp_path, real_gguf_path):
    """SmolLM2-135M as transformers loads it from the GGUF file (with its GGUF record), at 1.25x."""
    import json

    path = real_gguf_path
    model = transformers.AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name,
                                                              dtype=torch.float32).eval()
    dense_bytes = 4 * sum(p.numel() for p in model.parameters())  # float32, the tied matrix once
    plan = make_plan(model, Ratio(1.25))
    low = decompose(model, plan, progress=False)
    save_hf(low, plan, tmp_path / "low")
    assert _size(tmp_path / "low") < dense_bytes
    assert "quantization_config" not in json.loads((tmp_path / "low" / "config.json").read_text())
    x = torch.randint(0, model.config.vocab_size, (1, 24), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = low(x).logits
        torch.testing.assert_close(load_hf(tmp_path / "low")(x).logits, expected, rtol=0, atol=1e-6)
    merge_to_dense(low).save_pretrained(tmp_path / "dense")
    assert "quantization_config" not in json.loads((tmp_path / "dense" / "config.json").read_text())
