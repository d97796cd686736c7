"""One-shot whitening: statistics from the original model, never worse than weights only on its own data."""

from __future__ import annotations

import pytest
import torch

from lrdlab import decompose, make_plan
from lrdlab.lowrank.calibration import input_covariance

pytest.importorskip("transformers")
from lrdlab.lowrank.one_shot import input_covariances, one_shot_decompose  # noqa: E402
from lrdlab.zoo.lm import llama_from_config  # noqa: E402

TINY = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=64)


def test_one_shot_uses_the_original_models_statistics_and_beats_weights_only():
    torch.manual_seed(0)
    model = llama_from_config(**TINY)
    x = torch.randint(0, 256, (8, 32), generator=torch.Generator().manual_seed(0))
    name = "model.layers.1.mlp.down_proj"
    covs = input_covariances(model, [name], [x])
    assert torch.allclose(covs[name], input_covariance(model, model.get_submodule(name), [x]))
    plan = make_plan(model, ratio=2)
    one_shot = one_shot_decompose(model, plan, [x])
    weights = decompose(model, plan, progress=False)
    with torch.no_grad():
        ref = model(x).logits
        err = {k: float((m(x).logits - ref).pow(2).mean()) for k, m in (("one", one_shot), ("w", weights))}
    assert err["one"] < err["w"]
    with pytest.raises(ValueError, match="calibration batch 0"):
        one_shot_decompose(model, plan, [torch.full((2, 4), 999)])
