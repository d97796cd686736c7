"""The user's causal language model, by name, folder or GGUF file, for ``lrdlab bench-lm --model``.

- ``smollm2_135m``: the shipped real model (:func:`lrdlab.zoo.smollm.load_smollm2`);
- a folder holding a Hugging Face checkpoint (``config.json`` + weights): ``AutoModelForCausalLM.from_pretrained``
  (never ``trust_remote_code``);
- a ``.gguf`` file: transformers dequantizes it (needs ``gguf`` and ``accelerate``); its GGUF record is dropped.

Every model is float32 and in eval mode.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from lrdlab.lowrank.hf import drop_gguf_quantization, require_transformers
from lrdlab.zoo.smollm import INSTALL_HINT, LANGUAGE_MODELS, load_smollm2


def load_causal_lm(source: str | Path) -> nn.Module:
    """A causal LM from a shipped name (``smollm2_135m``), a checkpoint folder or a ``.gguf`` file (see above)."""
    if str(source) in LANGUAGE_MODELS:
        return load_smollm2().model
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
