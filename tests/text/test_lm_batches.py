"""Language-model batches through calibration, fit and evaluate (tiny Llama configs with GQA, random weights)."""

from __future__ import annotations

import math
import warnings

import pytest
import torch

from lrdlab import FitConfig, Ratio, decompose, make_plan
from lrdlab.finetune.loop import evaluate, fit

pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def llama(tiny_llama):
    return tiny_llama()


def ids(n=4, t=32, seed=1):
    return torch.randint(0, 256, (n, t), generator=torch.Generator().manual_seed(seed))


def logits_error(model, reference, x):
    with torch.no_grad():
        return float((model(x).logits - reference(x).logits).pow(2).mean())


def test_calibration_takes_token_ids_and_dicts_and_beats_weights_only_with_gqa(llama):
    attn = llama.model.layers[0].self_attn
    assert attn.k_proj.out_features < attn.q_proj.out_features  # grouped-query attention
    plan = make_plan(llama, Ratio(2))
    assert "model.layers.0.self_attn.k_proj" in {r.name for r in plan.decomposed_layers}
    x = ids(8, 32)
    as_dict = {"input_ids": x[4:], "attention_mask": torch.ones_like(x[4:])}
    calibrated = decompose(llama, plan, calibration=[x[:4], as_dict])
    weights_only = decompose(llama, plan)
    assert logits_error(calibrated, llama, x) < logits_error(weights_only, llama, x)
    before = {k: v.clone() for k, v in llama.state_dict().items()}
    assert all(torch.equal(v, llama.state_dict()[k]) for k, v in before.items())  # the user's model unchanged


@pytest.mark.parametrize("batch, words", [
    ({"attention_mask": torch.ones(2, 8, dtype=torch.long)}, "no 'input_ids'"),
    ([[1, 2, 3], [4, 5]], "ragged"),
    (torch.full((2, 8), 300), "vocabulary has 256"),
    (torch.rand(2, 8), "integers"),
    ({"input_ids": torch.ones(2, 8, dtype=torch.long), "attention_mask": torch.tensor([[1] * 8, [1] * 4 + [0] * 4])},
     "padded"),
])
def test_bad_calibration_batches_are_named(llama, batch, words):
    plan = make_plan(llama, Ratio(2))
    with pytest.raises(ValueError, match=words) as err:
        decompose(llama, plan, calibration=[ids(2, 8), batch])
    assert "calibration batch 1" in str(err.value)


def test_too_few_calibration_tokens_warn_naming_the_layer(llama):
    plan = make_plan(llama, Ratio(2))
    with pytest.warns(UserWarning, match=r"fewer than layer 'model\.layers\.0\.self_attn\.q_proj'"):
        decompose(llama, plan, calibration=[ids(1, 16)])


def test_evaluate_reports_the_models_own_next_token_perplexity(llama):
    x = ids(3, 24)
    mask = torch.ones_like(x)
    mask[2, 12:] = 0  # one padded sequence: its padding is not scored
    labels = x.masked_fill(mask == 0, -100)
    result = evaluate(llama, [{"input_ids": x, "attention_mask": mask, "labels": labels}])
    with torch.no_grad():
        hf_loss = float(llama(input_ids=x, attention_mask=mask, labels=labels).loss)
    assert result["images"] == 2 * 23 + 11  # scored next-token predictions
    assert result["loss"] == pytest.approx(hf_loss, rel=1e-5)
    assert result["perplexity"] == pytest.approx(math.exp(hf_loss), rel=1e-5)


def test_evaluate_and_fit_name_bad_batches(llama, tiny_llama):
    with pytest.raises(ValueError, match="evaluate batch 0.*vocabulary"):
        evaluate(llama, [torch.full((2, 8), 999)])
    with pytest.raises(ValueError, match="training batch 0: input_ids is a ragged list"):
        fit(tiny_llama(), [{"input_ids": [[1, 2, 3], [1, 2]]}], [ids(2, 8)], FitConfig(progress=False))


def test_fit_trains_a_causal_lm_on_dict_batches_with_and_without_a_teacher(tiny_llama):
    model = tiny_llama()
    text = torch.arange(64).repeat(8, 1) % 7 + 40  # a periodic "text": learnable in a few steps
    train = [{"input_ids": text[i:i + 4], "labels": text[i:i + 4]} for i in (0, 4)] * 4
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        history = fit(model, train, [text[:2]], FitConfig(epochs=3, lr=1e-2, optimizer="adamw", progress=False,
                                                          evaluate_start=True))
    assert history["loss"].iloc[-1] < 0.5 * history["loss"].iloc[0]
    student = decompose(model, make_plan(model, Ratio(2)))
    history = fit(student, train, [text[:2]], FitConfig(lr=1e-3, optimizer="adamw", progress=False), teacher=model)
    assert math.isfinite(history["loss"].iloc[-1])
