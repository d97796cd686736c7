"""One-shot whitening of a language model (``calibrated_decompose(mode="one-shot")``): statistics from the
original model, never worse than weights only on its own data."""

from __future__ import annotations

import pytest
import torch

from lrdlab import Ratio, decompose, make_plan
from lrdlab.lowrank.calibration import calibrated_decompose, input_covariance, one_shot_moments


def test_one_shot_uses_the_original_models_statistics_and_beats_weights_only(tiny_llama):
    model = tiny_llama()
    x = torch.randint(0, 256, (8, 32), generator=torch.Generator().manual_seed(0))
    name = "model.layers.1.mlp.down_proj"
    moments = one_shot_moments(model, [name], [x])[name]
    assert moments.gram is not None and moments.rows == 8 * 32
    assert torch.allclose(moments.gram / moments.rows, input_covariance(model, model.get_submodule(name), [x]))
    plan = make_plan(model, Ratio(2))
    one_shot = calibrated_decompose(model, plan, [x], mode="one-shot")
    weights = decompose(model, plan, progress=False)
    with torch.no_grad():
        ref = model(x).logits
        err = {k: float((m(x).logits - ref).pow(2).mean()) for k, m in (("one", one_shot), ("w", weights))}
    assert err["one"] < err["w"]
    with pytest.raises(ValueError, match="calibration batch 0"):
        calibrated_decompose(model, plan, [torch.full((2, 4), 999)], mode="one-shot")
