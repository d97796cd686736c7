"""The embedded corpus: a fixed split, byte tokens, fixed-length windows, n-gram baselines; the docstrings and the
packages' READMEs."""

from __future__ import annotations

import pytest
import torch

from lrdlab.zoo.text import (
    corpus_ids,
    corpus_info,
    ngram_perplexity,
    package_readmes,
    stdlib_docstrings,
    text_digest,
    text_loaders,
)


def test_split_is_fixed_and_covers_the_corpus():
    train, val = corpus_ids("train"), corpus_ids("validation")
    info = corpus_info()
    assert len(train) == info["train_bytes"] and len(val) == info["validation_bytes"]
    assert len(train) + len(val) == info["bytes"] > 100_000
    assert torch.equal(corpus_ids("validation"), val)
    assert int(train.max()) < 256 and int(train.min()) >= 0
    with pytest.raises(ValueError, match="split must be"):
        corpus_ids("test")


def test_loaders_give_fixed_length_dict_batches():
    loaders = text_loaders(seq_len=64, batch_size=8, validation_sequences=10)
    batch = next(iter(loaders.train))
    assert batch["input_ids"].shape == (8, 64) and torch.equal(batch["input_ids"], batch["labels"])
    assert len(loaders.test.dataset) == 10
    assert [b.shape for b in loaders.calibration(sequences=12, batch=8)] == [(8, 64), (4, 64)]


def test_bigram_beats_unigram():
    assert ngram_perplexity(2) < ngram_perplexity(1) < 256


def test_stdlib_docstrings_leave_out_idle_tests_and_the_corpus():
    import idlelib.history
    import inspect
    import json.decoder

    text = stdlib_docstrings()
    assert len(text) > 2 * len(corpus_ids("train"))  # more text than the pydoc training split
    assert inspect.getdoc(json.decoder.JSONDecoder)[:200] in text  # a class docstring of a module
    # IDLE (its release history is the never-seen evaluation text) and the corpus itself are left out
    assert inspect.getdoc(idlelib.history.History)[:200] not in text
    assert stdlib_docstrings(min_chars=10**6) == ""


def test_package_readmes_are_the_installed_packages_descriptions_in_name_order():
    from importlib.metadata import metadata

    text = package_readmes()
    tqdm, torch_readme = (metadata(name).get_payload().strip() for name in ("tqdm", "torch"))
    assert tqdm[:300] in text and torch_readme[:300] in text  # a README in reStructuredText, one in Markdown
    assert text.index(torch_readme[:300]) < text.index(tqdm[:300])  # sorted by the packages' names
    assert len(text) > len(corpus_ids("train"))  # more text than the pydoc training split
    assert package_readmes(min_chars=10**8) == ""
    assert text_digest(text) == text_digest(package_readmes()) != text_digest(text + " ")
    assert len(text_digest(text)) == 16
