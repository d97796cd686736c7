"""Notebook 09's live perplexity check: per-sequence losses, and whether a small sample can rank two models.

A perplexity measured on a few sequences moves with the sample; two decompositions are ranked only where a
paired bootstrap over the same sequences puts the ratio of their perplexities clear of 1.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import Tensor, nn


@torch.no_grad()
def sequence_nll(model: nn.Module, loader: Iterable) -> Tensor:
    """Mean next-token negative log-likelihood of every sequence of ``loader`` (batches of ``input_ids``), in order.

    With sequences of equal length, ``exp(sequence_nll(...).mean())`` is the loader's perplexity.
    """
    was_training = model.training
    model.eval()
    out = []
    try:
        for batch in loader:
            ids = batch["input_ids"] if isinstance(batch, dict) else batch[0]
            logits = model(input_ids=ids).logits[:, :-1]
            nll = nn.functional.cross_entropy(logits.transpose(1, 2), ids[:, 1:], reduction="none")
            out.append(nll.mean(1))
    finally:
        model.train(was_training)
    return torch.cat(out)


@dataclass(frozen=True)
class PairedOrder:
    """Model A's perplexity over model B's on the same sequences, with its 95% bootstrap interval."""

    ratio: float
    ci_low: float
    ci_high: float
    sequences: int

    @property
    def verdict(self) -> str:
        """``"lower"`` (A's perplexity is lower with 95% confidence), ``"higher"``, or ``"within noise"``."""
        return "lower" if self.ci_high < 1 else "higher" if self.ci_low > 1 else "within noise"

    def text(self, a: str, b: str) -> str:
        """One line naming the ratio, its interval and the verdict."""
        head = (f"{a} / {b} perplexity ×{self.ratio:.3f} [{self.ci_low:.3f}, {self.ci_high:.3f}] "
                f"on {self.sequences} sequences")
        if self.verdict == "within noise":
            return f"{head}: within noise, this sample cannot rank them"
        return f"{head}: {a} is {self.verdict} than {b}"


def paired_order(nll_a: Tensor, nll_b: Tensor, *, resamples: int = 2000, seed: int = 0) -> PairedOrder:
    """Compare two models' per-sequence losses on the same sequences (a paired bootstrap over sequences)."""
    if nll_a.shape != nll_b.shape or nll_a.ndim != 1 or len(nll_a) < 2:
        raise ValueError(f"paired_order needs two 1-D loss vectors of the same sequences (at least 2), got shapes "
                         f"{tuple(nll_a.shape)} and {tuple(nll_b.shape)}: pass sequence_nll of both models on one "
                         "loader")
    diff = (nll_a - nll_b).double()
    gen = torch.Generator().manual_seed(seed)
    idx = torch.randint(len(diff), (resamples, len(diff)), generator=gen)
    means = diff[idx].mean(1)
    low, high = torch.quantile(means, torch.tensor([0.025, 0.975], dtype=means.dtype)).tolist()
    return PairedOrder(float(diff.mean().exp()), float(torch.tensor(low).exp()), float(torch.tensor(high).exp()),
                       len(diff))
