"""An embedded text corpus, a byte-level tokenizer and fixed-length sequence loaders.

The corpus is the documentation every CPython ships (``pydoc_data.topics``: the language reference's help
topics), so it exists on every machine without a download. Its text follows the Python version: the
corpus's SHA-256 is recorded beside every measurement (:func:`corpus_info`). Split: the topics in sorted
order are joined with blank lines; the first 90% of the bytes train, the last 10% validate.
The tokens are UTF-8 bytes: vocabulary 256, no unknown token, nothing to ship (``tests/text/byte_tokenizer.py`` wraps
them as a Hugging Face-like tokenizer).

Two more texts for language-model distillation: the docstrings of the standard library's modules
(:func:`stdlib_docstrings`), also shipped with every CPython, and the long descriptions (READMEs) of the installed
packages (:func:`package_readmes`), which follow the environment: :func:`text_digest` names the text a run read.
"""

from __future__ import annotations

import ast
import hashlib
import sys
import sysconfig
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import cast

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

VOCAB = 256
TRAIN_FRACTION = 0.9
SPLITS = ("train", "validation")


def corpus_text() -> str:
    """The CPython help topics, sorted by topic and joined by blank lines."""
    from pydoc_data.topics import topics

    return "\n\n".join(topics[k] for k in sorted(topics))


DOCSTRING_SKIP = frozenset({"test", "tests", "idlelib", "pydoc_data", "site-packages", "dist-packages"})
DOCSTRING_MIN_CHARS = 200


@lru_cache(maxsize=1)
def stdlib_docstrings(min_chars: int = DOCSTRING_MIN_CHARS) -> str:
    """The docstrings (modules, classes, functions) of at least ``min_chars`` characters of the standard
    library's ``.py`` files in path order, joined by blank lines. Left out: the test suites, ``pydoc_data``
    (the corpus above) and ``idlelib`` (its release history is the language models' never-seen text)."""
    root = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(p for p in root.rglob("*.py") if not DOCSTRING_SKIP.intersection(p.relative_to(root).parts))
    kinds = (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)
    texts = []
    for path in files:
        try:
            tree = ast.parse(path.read_bytes())
        except (SyntaxError, ValueError):  # a template or a file for another Python version: not text to read
            continue
        texts += [d for node in ast.walk(tree) if isinstance(node, kinds)
                  and (d := ast.get_docstring(node)) and len(d) >= min_chars]
    return "\n\n".join(texts)


README_MIN_CHARS = 500


@lru_cache(maxsize=1)
def package_readmes(min_chars: int = README_MIN_CHARS) -> str:
    """The long descriptions (the READMEs on PyPI) of at least ``min_chars`` characters of the installed
    distributions, sorted by name (one per name), joined by blank lines; lrdlab's own is left out. Prose, lists
    and code examples about software, written by many hands: more varied English than the help topics."""
    from email.message import Message
    from importlib.metadata import distributions

    texts: dict[str, str] = {}
    for dist in distributions():
        meta = cast(Message, dist.metadata)  # an email message: the long description is its body
        name = (meta.get("Name") or "").lower().replace("_", "-")
        body = meta.get_payload()
        text = (body if isinstance(body, str) and body.strip() else meta.get("Description") or "").strip()
        if name and name != "lrdlab" and len(text) >= min_chars:
            texts.setdefault(name, text)
    return "\n\n".join(texts[n] for n in sorted(texts))


def text_digest(text: str) -> str:
    """The first 16 hex digits of ``text``'s SHA-256 (UTF-8): which text a recorded run read."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def corpus_ids(split: str) -> Tensor:
    """The token ids (int64) of ``split``: ``"train"`` (first 90% of the bytes) or ``"validation"``."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    data = torch.frombuffer(bytearray(corpus_text().encode("utf-8")), dtype=torch.uint8).long()
    cut = int(len(data) * TRAIN_FRACTION)
    return data[:cut] if split == "train" else data[cut:]


def corpus_info() -> dict[str, object]:
    """What the corpus is on this machine: source, Python version, bytes per split, SHA-256."""
    raw = corpus_text().encode("utf-8")
    cut = int(len(raw) * TRAIN_FRACTION)
    return {"corpus": "pydoc_data.topics (CPython help topics)", "python": sys.version.split()[0],
            "bytes": len(raw), "train_bytes": cut, "validation_bytes": len(raw) - cut,
            "sha256": hashlib.sha256(raw).hexdigest(), "tokenizer": "UTF-8 bytes (vocab 256)"}


class Sequences(Dataset):
    """Non-overlapping windows of ``seq_len`` ids of a split as ``{"input_ids", "labels"}`` (labels = ids:
    the model shifts them, as Hugging Face's causal LMs do). ``offset`` shifts the windows' start."""

    def __init__(self, ids: Tensor, seq_len: int, offset: int = 0) -> None:
        if seq_len < 2:
            raise ValueError(f"seq_len must be >= 2, got {seq_len}")
        usable = (len(ids) - offset) // seq_len
        if usable < 1:
            raise ValueError(f"a split of {len(ids)} tokens holds no sequence of {seq_len}")
        self.windows = ids[offset: offset + usable * seq_len].reshape(usable, seq_len)

    def __len__(self) -> int:
        return len(self.windows)

    def __getitem__(self, i: int) -> dict[str, Tensor]:
        return {"input_ids": self.windows[i], "labels": self.windows[i]}


@dataclass(frozen=True)
class TextLoaders:
    """What :func:`text_loaders` returns: train and validation loaders and what a model needs to know."""

    train: DataLoader
    test: DataLoader
    vocab_size: int
    seq_len: int

    def calibration(self, sequences: int = 32, batch: int = 8) -> list[Tensor]:
        """The first ``sequences`` training windows as token-id batches ``[batch, seq_len]`` (for calibration)."""
        windows = self.train.dataset.windows[:sequences]  # type: ignore[attr-defined]
        return list(windows.split(batch))


def text_loaders(seq_len: int = 128, batch_size: int = 32, *, seed: int = 0, test_batch_size: int = 64,
                 validation_sequences: int | None = None) -> TextLoaders:
    """Loaders of ``seq_len``-token windows of the corpus: shuffled train batches (seeded), validation in order.

    ``validation_sequences`` keeps only the first that many validation windows (quick checks).
    """
    train = Sequences(corpus_ids("train"), seq_len)
    test = Sequences(corpus_ids("validation"), seq_len)
    if validation_sequences is not None:
        test.windows = test.windows[:validation_sequences]
    gen = torch.Generator().manual_seed(seed)
    return TextLoaders(DataLoader(train, batch_size=batch_size, shuffle=True, generator=gen),
                       DataLoader(test, batch_size=test_batch_size), VOCAB, seq_len)


def ngram_perplexity(order: int = 2, alpha: float = 0.1) -> float:
    """Validation perplexity of an add-``alpha`` smoothed unigram (``order=1``) or bigram byte model fitted on
    the training split: the baseline a trained language model must beat."""
    if order not in (1, 2):
        raise ValueError(f"order must be 1 (unigram) or 2 (bigram), got {order}")
    train, val = corpus_ids("train"), corpus_ids("validation")
    if order == 1:
        counts = torch.bincount(train, minlength=VOCAB).double() + alpha
        logp = (counts / counts.sum()).log()[val]
    else:
        pairs = torch.bincount(train[:-1] * VOCAB + train[1:], minlength=VOCAB * VOCAB).double()
        table = pairs.reshape(VOCAB, VOCAB) + alpha
        logp = (table / table.sum(1, keepdim=True)).log()[val[:-1], val[1:]]
    return float((-logp.mean()).exp())

