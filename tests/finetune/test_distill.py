"""Knowledge distillation: the loss against its definition, and fit(teacher=) leaving the teacher alone."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from lrdlab.finetune.fit_config import FitConfig
from lrdlab.finetune.loop import DistillationLoss, evaluate, fit
from lrdlab.zoo.data import Images, get_loaders


def _net(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))


def test_loss_is_the_hinton_blend():
    teacher, x, y = _net(0), torch.randn(16, 1, 8, 8), torch.randint(0, 10, (16,))
    student = torch.randn(16, 10)
    t, a = 3.0, 0.7
    with torch.no_grad():
        soft = teacher(x)
    p, q = F.softmax(soft / t, 1), F.log_softmax(student / t, 1)
    kl = (p * (p.log() - q)).sum(1).mean()
    expected = (1 - a) * F.cross_entropy(student, y) + a * t * t * kl
    assert torch.allclose(DistillationLoss(teacher, a, t)(student, y, x), expected, atol=1e-6)
    # alpha 0 is plain cross-entropy; a student equal to its teacher has no distillation term
    assert torch.allclose(DistillationLoss(teacher, 0.0)(student, y, x), F.cross_entropy(student, y))
    assert DistillationLoss(teacher, 1.0)(soft, y, x).abs() < 1e-6


@pytest.mark.parametrize("kw, match", [({"alpha": 1.5}, "alpha"), ({"temperature": 0.0}, "temperature")])
def test_bad_settings_are_refused(kw, match):
    with pytest.raises(ValueError, match=match):
        DistillationLoss(_net(0), **kw)


def test_fit_with_a_teacher_trains_the_student_only():
    loaders = get_loaders("digits", 64, Images(channels=1), seed=0)
    teacher = _net(0)
    fit(teacher, loaders.train, loaders.test, FitConfig(epochs=3, lr=0.05, progress=False))
    teacher.requires_grad_(False).train()  # the user's choices must survive
    before = copy.deepcopy(teacher.state_dict())
    student = _net(1)
    h = fit(student, loaders.train, loaders.test, FitConfig(epochs=2, lr=0.05, distill_alpha=0.8, progress=False),
            teacher=teacher)
    assert all(torch.equal(before[k], v) for k, v in teacher.state_dict().items())
    assert teacher.training and not any(p.requires_grad for p in teacher.parameters())
    assert h["accuracy"].iloc[-1] > 50 and evaluate(student, loaders.test)["accuracy"] > 50
