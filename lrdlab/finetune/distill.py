"""Knowledge distillation: the original model teaches its decomposed copy while it is fine-tuned.

The loss of Hinton et al. (2015), "Distilling the Knowledge in a Neural Network":
``(1 − α)·CE(student, labels) + α·T²·KL(softmax(teacher/T) ‖ softmax(student/T))``. After a low-rank
decomposition the original is the natural teacher: it knows what the factorized layers should
compute, and its soft targets carry more per image than a label (``lrdlab.fit(..., teacher=original)``).
:mod:`lrdlab.finetune.lm_distill` is the recipe for a decomposed causal LM: pure KL on the logits over
token windows, with a held-out perplexity curve.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from lrdlab.finetune.inputs import teacher_logits


class DistillationLoss(nn.Module):
    """``criterion(student_logits, labels, inputs)``: cross-entropy blended with the teacher's soft targets.

    The teacher runs under ``no_grad`` in eval mode and is never trained; it may be the very model the
    student was decomposed from.
    """

    def __init__(self, teacher: nn.Module, alpha: float = 0.5, temperature: float = 4.0,
                 label_smoothing: float = 0.0) -> None:
        super().__init__()
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"distillation alpha must be in [0, 1] (the teacher's share of the loss), got {alpha}")
        if temperature <= 0:
            raise ValueError(f"distillation temperature must be > 0, got {temperature}")
        self.teacher = [teacher]  # a list: not a submodule, so it is not moved, trained or saved with the loss
        self.alpha, self.temperature = float(alpha), float(temperature)
        self.ce = nn.CrossEntropyLoss(label_smoothing=label_smoothing)

    def forward(self, logits: Tensor, labels: Tensor, inputs: Tensor) -> Tensor:
        teacher = self.teacher[0]
        was_training = teacher.training
        teacher.eval()
        with torch.no_grad():
            soft = teacher_logits(teacher, inputs)
        teacher.train(was_training)
        t = self.temperature
        kl = F.kl_div(F.log_softmax(logits / t, dim=1), F.log_softmax(soft / t, dim=1), log_target=True,
                      reduction="batchmean")
        return (1.0 - self.alpha) * self.ce(logits, labels) + self.alpha * t * t * kl
