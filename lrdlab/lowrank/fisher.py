"""Per-output-channel loss sensitivity of Linear layers, from one forward and backward pass of a language model.

``fisher = output_fisher(model, batches, names)`` runs the model on each batch, takes the summed next-token
cross-entropy and its gradient with respect to every named layer's output ``y`` (``torch.autograd.grad``: no
parameter's ``.grad`` is touched and ``requires_grad`` stays as the user set it), and keeps, per layer and output
channel, ``Σ_t (∂ℓ/∂y_{t,c})²`` over the tokens (and, with ``full=True``, the ``[S, S]`` sums ``Σ_t g_t g_tᵀ``).
:mod:`lrdlab.lowrank.output_weighted` turns them into a loss-weighted fit and a loss estimate comparable across
layers; the input moments may come from the same pass (``moments=``).
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.nn import functional as F
from tqdm.auto import tqdm

from lrdlab.lowrank.calibration_fit import Moments
from lrdlab.lowrank.token_batches import ModelCall, TokenBatch, token_batch


@dataclass
class OutputFisher:
    """Streamed float64 sums of one layer's output gradients: ``sq = Σ g²`` per channel, ``gram = Σ g gᵀ`` (or
    None), over ``rows`` tokens."""

    sq: Tensor | None = None
    gram: Tensor | None = None
    rows: int = 0

    def add(self, grad: Tensor, full: bool) -> None:
        g = grad.detach().reshape(-1, grad.shape[-1]).double()
        sq = (g * g).sum(0)
        self.sq = sq if self.sq is None else self.sq.add_(sq)
        if full:
            gram = g.T @ g
            self.gram = gram if self.gram is None else self.gram.add_(gram)
        self.rows += g.shape[0]

    def diagonal(self, ridge: float = 1e-3) -> Tensor:
        """``E[g²]`` per channel plus ``ridge`` times its mean (positive, so every channel keeps some weight)."""
        if self.sq is None or self.rows == 0:
            raise ValueError("this layer's outputs never received a gradient; leave it out of the plan")
        d = self.sq / self.rows
        return d + ridge * float(d.mean()) + torch.finfo(torch.float64).tiny

    def full(self, ridge: float = 1e-3) -> Tensor:
        """``E[g gᵀ]`` plus ``ridge`` times its mean diagonal on the diagonal (positive definite)."""
        if self.gram is None or self.rows == 0:
            raise ValueError("no full output second moment was kept; measure with full=True")
        g = self.gram / self.rows
        out = g.clone()
        out.diagonal().add_(ridge * float(g.diagonal().mean()) + torch.finfo(torch.float64).tiny)
        return out


def _token_batch(batch: object) -> TokenBatch:
    """A calibration batch (ids, a dict with ``input_ids``, or a checked call) as a :class:`TokenBatch`."""
    if isinstance(batch, ModelCall):  # a checked dict batch: its keyword arguments
        batch = batch.kwargs
    return token_batch(batch, None, "calibration batch")


def _lm_loss(model: nn.Module, tb: TokenBatch) -> Tensor:
    """The summed next-token cross-entropy of a causal LM on one batch."""
    out = model(**tb.kwargs())
    logits = out.logits if hasattr(out, "logits") else out
    scored, target = tb.scored(logits)
    if scored.dtype in (torch.float16, torch.bfloat16):
        scored = scored.float()
    return F.cross_entropy(scored, target, reduction="sum")


def output_fisher(model: nn.Module, batches: Iterable, names: Sequence[str], *, full: bool = False,
                  moments: bool | Collection[str] = True,
                  progress: bool = True) -> tuple[dict[str, OutputFisher], dict[str, Moments]]:
    """Each named layer's output-gradient sums (:class:`OutputFisher`) and the input moments
    (:class:`~lrdlab.lowrank.calibration_fit.Moments`, as SVD-LLM's statistics) of every named layer
    (``moments=True``), of none (``False``) or of those named in ``moments``, from one forward and backward pass
    of the causal LM ``model`` per sequence. The model runs in eval mode and is left as it was."""
    missing = [n for n in names if not isinstance(_get(model, n), nn.Module)]
    if missing:
        raise ValueError(f"output_fisher: no layer named {missing[0]!r} in {type(model).__name__}")
    fisher = {n: OutputFisher() for n in names}
    keep = set(names) if moments is True else set() if isinstance(moments, bool) else set(moments)
    inputs = {n: Moments() for n in names if n in keep}
    batches = list(batches)
    leaves: list[Tensor] = []

    def hook(mod: nn.Module, args: tuple, out: Tensor, name: str) -> Tensor:
        if name in inputs:
            inputs[name].add(mod, args[0].detach(), batches=len(batches))
        # a zero leaf of its own puts this output on the backward path whatever requires grad upstream; the
        # tensor hook adds its gradient to the sums as the backward pass reaches it, then lets it go
        leaf = torch.zeros((), dtype=out.dtype, device=out.device, requires_grad=True)
        out = out + leaf
        out.register_hook(lambda g: fisher[name].add(g, full))
        leaves.append(leaf)
        return out

    handles = [model.get_submodule(n).register_forward_hook(
        lambda mod, args, out, n=n: hook(mod, args, out, n)) for n in names]
    was_training = model.training
    model.eval()
    try:
        for batch in tqdm(batches, desc="output Fisher", leave=False, disable=not progress):
            tb = _token_batch(batch)
            for row in range(tb.input_ids.shape[0]):  # one sequence a pass: the sums are the same, the graph smaller
                leaves.clear()
                with torch.enable_grad():
                    loss = _lm_loss(model, tb.rows(row, row + 1))
                    if leaves:
                        torch.autograd.grad(loss, leaves, allow_unused=True)
                leaves.clear()
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return fisher, inputs


def _get(model: nn.Module, name: str) -> nn.Module | None:
    try:
        return model.get_submodule(name)
    except AttributeError:
        return None
