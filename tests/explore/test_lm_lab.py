"""Notebook 09's paired check: it ranks two models only where the same sequences say so."""

import math

import pytest
import torch
from torch import nn

from lrdlab.explore.lm_lab import paired_order, sequence_nll


def test_paired_order_ranks_a_clear_difference_and_not_noise():
    gen = torch.Generator().manual_seed(0)
    base = 1.5 + 0.3 * torch.rand(32, generator=gen)
    clear = paired_order(base - 0.1 + 0.01 * torch.randn(32, generator=gen), base)
    assert clear.verdict == "lower" and clear.ci_high < 1 and "lower than" in clear.text("a", "b")
    assert paired_order(base, base - 0.1).verdict == "higher"
    noise = paired_order(base + 0.05 * torch.randn(32, generator=gen), base)
    assert noise.verdict == "within noise" and noise.ci_low <= 1 <= noise.ci_high
    assert "cannot rank" in noise.text("a", "b")


def test_paired_order_refuses_unpaired_losses():
    with pytest.raises(ValueError, match="same sequences"):
        paired_order(torch.ones(4), torch.ones(5))


class _Uniform(nn.Module):
    """A causal LM that gives every one of ``vocab`` tokens the same probability."""

    def __init__(self, vocab: int) -> None:
        super().__init__()
        self.vocab = vocab

    def forward(self, input_ids):
        return type("Out", (), {"logits": torch.zeros(*input_ids.shape, self.vocab)})()


def test_sequence_nll_of_a_uniform_model_is_log_vocab():
    ids = torch.randint(0, 7, (5, 9))
    nll = sequence_nll(_Uniform(7), [{"input_ids": ids[:3]}, {"input_ids": ids[3:]}])
    assert nll.shape == (5,) and torch.allclose(nll, torch.full((5,), math.log(7)))
