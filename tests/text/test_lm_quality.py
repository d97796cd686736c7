"""Loss-aware ranks and the distillation recipe on a tiny Llama (token batches end to end)."""

from __future__ import annotations

import copy

import pytest
import torch
from torch.nn import functional as F

from lrdlab.finetune.lm_distill import LMDistillation, distill_language_model, token_windows_loader
from lrdlab.lowrank.calibration import calibrated_decompose
from lrdlab.lowrank.loss_spectra import loss_spectra
from lrdlab.lowrank.plan import Ratio, make_plan
from lrdlab.lowrank.plan_config import LossAware
from lrdlab.zoo.text import corpus_ids


def _windows(split: str, n: int, t: int = 32) -> torch.Tensor:
    return corpus_ids(split)[: n * t].reshape(n, t)


def _kl(student, teacher, windows) -> float:
    with torch.no_grad():
        s = F.log_softmax(student(windows).logits, -1)
        p = F.log_softmax(teacher(windows).logits, -1)
    return float(F.kl_div(s.flatten(0, 1), p.flatten(0, 1), log_target=True, reduction="batchmean"))


def test_loss_aware_plan_on_a_llama_from_token_batches(tiny_llama):
    model = tiny_llama()
    calib = list(_windows("train", 8).split(4))
    spectra = loss_spectra(model, calib, progress=False)
    assert len([n for n in spectra.layers if n.startswith("model.layers.")]) == 14  # 7 Linears × 2 layers
    uniform = make_plan(model, Ratio(2, min_rank=1))
    aware = make_plan(model, LossAware(2, spectra))
    assert sum(r.params_after for r in aware.layers) <= sum(r.params_after for r in uniform.layers)
    assert {r.spec[1][0] for r in aware.decomposed_layers} != {r.spec[1][0] for r in uniform.decomposed_layers}
    low = calibrated_decompose(model, aware, calib, mode="one-shot")
    assert torch.isfinite(low(calib[0]).logits).all()


def test_distillation_brings_the_student_towards_the_teacher(tiny_llama):
    teacher = tiny_llama()
    student = calibrated_decompose(teacher, make_plan(teacher, Ratio(3, min_rank=1)), list(_windows("train", 4)
                                                                                            .split(2)))
    held_out = _windows("validation", 4)
    before = _kl(student, teacher, held_out)
    recipe = LMDistillation(steps=12, batch=2, eval_every=4, lr=1e-3, progress=False)
    history = distill_language_model(student, teacher, _windows("train", 32), held_out, recipe)
    assert list(history["epoch"]) == [0, 1, 2, 3]
    assert history["perplexity"].notna().all() and history["wall_s"].is_monotonic_increasing
    assert _kl(student, teacher, held_out) < before
    assert all(not p.requires_grad or p.grad is None for p in teacher.parameters())


def test_the_recipe_and_loader_check_their_input():
    with pytest.raises(ValueError, match="multiple of eval_every"):
        LMDistillation(steps=10, eval_every=4)
    with pytest.raises(ValueError, match="steps"):
        LMDistillation(steps=0)
    with pytest.raises(ValueError, match="token ids"):
        token_windows_loader(torch.randn(4, 8), 2, 2)
    loader = token_windows_loader(torch.arange(40).reshape(10, 4), 2, 3, seed=1)
    first, second = [b["input_ids"] for b in loader], [b["input_ids"] for b in loader]
    assert len(loader) == 3 and first[0].shape == (2, 4)
    assert not all(torch.equal(a, b) for a, b in zip(first, second))  # fresh windows on every pass
    assert copy.deepcopy(LMDistillation()).fit_config().optimizer == "adamw"
