"""One layer of a calibrated decomposition: streamed input moments and the fit they give.

:class:`Moments` accumulates, batch by batch in float64, what a layer's fit needs: the Gram matrix of the
inputs ``X̂`` it receives in the network decomposed so far and, for the upstream-correcting fit, the
cross-moment ``X X̂ᵀ`` with the inputs ``X`` the *original* network gives it. Only these ``D × D`` sums
are kept, never the activations. :func:`calibrated_layer` turns them into factors (see
:mod:`lrdlab.lowrank.calibration` for the objectives).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from lrdlab.lowrank.calibration_patches import patch_moment, shift_moment_applies, symmetric
from lrdlab.lowrank.data_aware import DEFAULT_RIDGE, add_ridge, corrected_weight, input_rows, position_step
from lrdlab.lowrank.layers import LowRankLayer, decompose_layer, dense_weight
from lrdlab.lowrank.methods import get_method
from lrdlab.lowrank.token_batches import run_model

MODES = ("auto", "corrected", "one-shot", "sequential", "loss-weighted")
# "auto": "loss-weighted" for a causal LM planned by SVD (data/lm_quality_smollm2.json), "corrected" otherwise
# (data/calibration_modes_mnist5k.json): both chosen by measurement
DEFAULT_MODE = "auto"


@dataclass
class Moments:
    """Streamed float64 sums over a layer's input rows: ``gram = Σ x̂ x̂ᵀ``, ``cross = Σ x x̂ᵀ`` (or None)."""

    gram: Tensor | None = None
    cross: Tensor | None = None
    rows: int = 0
    images: int = 0
    unpaired: bool = False  # the original and decomposed inputs differed in shape once: no cross-moment

    def add(self, module: nn.Module, x_hat: Tensor, x: Tensor | None = None, batches: int = 1) -> None:
        """Add one batch: ``x_hat`` the layer's input in the decomposed network, ``x`` in the original.

        When their shapes differ (the row count depends on the data: a selection ``h[h[:, 0] > 0]``, detection
        proposals, tokens routed to an expert) the rows cannot be paired: the cross-moment is dropped for good and
        the layer gets the fit on its own inputs (``unpaired``)."""
        if x is not None and x.shape != x_hat.shape:
            self.unpaired = True
        if self.unpaired:
            x, self.cross = None, None
        if _shifted(module, x_hat, batches):  # a stride-1 conv: the same sums without im2col (exact)
            assert isinstance(module, nn.Conv2d)
            gram, rows = patch_moment(module, x_hat, x_hat), _positions(module, x_hat)
            cross = patch_moment(module, x, x_hat) if x is not None else None
        else:
            cols_hat = input_rows(module, x_hat, batches)
            gram, rows = symmetric(cols_hat @ cols_hat.T), cols_hat.shape[1]
            cross = input_rows(module, x, batches) @ cols_hat.T if x is not None else None
        # summed in place: a long calibration then holds one buffer per sum, not a new one per batch
        self.gram = gram if self.gram is None else self.gram.add_(gram)
        if cross is not None:
            self.cross = cross if self.cross is None else self.cross.add_(cross)
        self.rows += rows
        self.images += x_hat.shape[0]


def _shifted(module: nn.Module, x: Tensor, batches: int) -> bool:
    """Whether a conv's patch moments come from :func:`patch_moment` (every position kept, stride 1, ...)."""
    if not isinstance(module, nn.Conv2d) or x.ndim != 4:
        return False
    dim = module.in_channels * module.kernel_size[0] * module.kernel_size[1]
    step = position_step(batches * x.shape[0] * x.shape[2] * x.shape[3], dim)
    return shift_moment_applies(module, step)


def _positions(module: nn.Conv2d, x: Tensor) -> int:
    """Output positions (patches) of a stride-1 conv over the batch ``x``."""
    assert not isinstance(module.padding, str)  # shift_moment_applies
    (kh, kw), (ph, pw) = module.kernel_size, module.padding
    return x.shape[0] * (x.shape[2] + 2 * ph - kh + 1) * (x.shape[3] + 2 * pw - kw + 1)


def feed(model: nn.Module, batch: Any) -> Any:
    """Run ``model`` (or a part of it) on one calibration batch (:func:`~lrdlab.lowrank.token_batches.run_model`)."""
    return run_model(model, batch)


class _Stop(Exception):
    """Raised by a hook to end a forward pass once the layer of interest has seen its input."""


def capture_input(runner: nn.Module, module: nn.Module, x: Tensor) -> Tensor | None:
    """``module``'s input when ``runner`` runs on ``x`` (the rest of the forward skipped); None if it did not
    run or its input is not one tensor."""
    got: list[Tensor] = []

    def hook(mod, args):
        if len(args) == 1 and isinstance(args[0], Tensor):
            got.append(args[0].detach())
        raise _Stop

    handle = module.register_forward_pre_hook(hook)
    try:
        feed(runner, x)
    except _Stop:
        pass
    finally:
        handle.remove()
    return got[0] if got else None


@torch.no_grad()
def layer_moments(runner: nn.Module, module: nn.Module, inputs: list[Tensor],
                  reference: tuple[nn.Module, nn.Module, list[Tensor]] | None = None) -> Moments:
    """``module``'s input moments, streamed batch by batch, when ``runner`` runs on ``inputs``.

    ``reference``: the original network's ``(runner, module, inputs)``, whose inputs to the same layer
    give the cross-moment of the upstream-correcting fit.
    """
    moments = Moments()
    for i, x in enumerate(inputs):
        x_hat = capture_input(runner, module, x)
        x_ref = capture_input(reference[0], reference[1], reference[2][i]) if reference is not None else None
        if x_hat is not None and (reference is None or x_ref is not None):
            moments.add(module, x_hat, x_ref, len(inputs))
    return moments


@torch.no_grad()
def one_shot_moments(model: nn.Module, names: list[str], xs: list) -> dict[str, Moments]:
    """Every named layer's input moments from one pass of ``model`` over ``xs`` (SVD-LLM's one-shot statistics)."""
    acc = {n: Moments() for n in names}
    handles = [model.get_submodule(n).register_forward_pre_hook(
        lambda mod, args, n=n: acc[n].add(mod, args[0].detach(), batches=len(xs))) for n in names]
    try:
        for x in xs:
            feed(model, x)
    finally:
        for h in handles:
            h.remove()
    return acc


def never_ran(names: list[str]) -> ValueError:
    """The error for planned layers that did not run on the calibration batches, with the ``exclude`` fix."""
    patterns = sorted({f"{n.split('.')[0]}.*" if "." in n else n for n in names})
    return ValueError(f"layer(s) {names} never ran on the calibration batches (with the model in eval mode, "
                      f"e.g. an auxiliary head used only in training), so they cannot be fitted; leave them out "
                      f"of the plan, e.g. make_plan(model, policy, Layers(exclude={patterns}))")


def _warn_if_few_rows(name: str, moments: Moments, dim: int) -> None:
    if moments.rows >= dim:
        return
    per_image = max(moments.rows / max(moments.images, 1), 1e-9)
    warnings.warn(f"layer {name!r} has {dim}-dimensional inputs but the calibration batches gave only "
                  f"{moments.rows} rows ({moments.images} images): its input Gram matrix is rank-deficient and "
                  f"the fit leans on the ridge; pass at least {math.ceil(dim / per_image)} calibration images",
                  stacklevel=4)


SMALL_LAPACK = 2048  # fits of layers up to this input size run their factorisations on one thread


@contextmanager
def _small_lapack(dim: int) -> Iterator[None]:
    """One torch thread for the factorisations of a small fit: LAPACK's SVD of a few-hundred-wide float64 matrix
    gains little from threads and loses up to 10x (in CPU time too) when the cores are shared with other jobs
    (measured: 576 x 1536 SVD 1.8 s on 1 thread, 17 s on 2, at load 10)."""
    threads = torch.get_num_threads()
    if dim > SMALL_LAPACK or threads == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@torch.no_grad()
def calibrated_layer(module: nn.Module, method: str, ranks: tuple[int, ...], moments: Moments | Tensor,
                     ridge: float = DEFAULT_RIDGE, branches: int = 1, name: str = "") -> LowRankLayer:
    """Decompose one layer from its input moments (or a second-moment matrix ``Σ``).

    With a cross-moment, the fit reproduces the original network's output (:func:`corrected_weight`);
    without, it minimises the layer's own output error on its inputs. The form's
    :meth:`~lrdlab.lowrank.methods.Method.data_aware` gives the factors; a form without one (branched
    Tucker, input-SVD) stays weight-only. Statistics are float64; factors take the layer's dtype.
    """
    layer = decompose_layer(module, method, ranks, branches=branches)  # checks ranks, copies bias and dtypes
    weight = dense_weight(module).detach()  # [out, in, ...]: HF's Conv1D stores [in, out]
    if isinstance(moments, Tensor):
        moments = Moments(gram=moments.double(), rows=-1)
    if moments.gram is None or moments.rows == 0:
        raise never_ran([name])
    dim = moments.gram.shape[0]
    if moments.rows > 0:
        _warn_if_few_rows(name, moments, dim)
    scale = max(moments.rows, 1)
    gram = moments.gram / scale
    try:
        with _small_lapack(dim):
            if moments.cross is None:
                target, cov = weight.double(), add_ridge(gram, ridge)
            else:
                flat, cov = corrected_weight(weight.reshape(weight.shape[0], -1), gram, moments.cross / scale, ridge)
                target = flat.reshape(weight.shape)
            factors = get_method(method).data_aware(target, cov, ranks, branches)
    except torch.linalg.LinAlgError as err:  # only non-finite activations get here: batches are checked
        raise ValueError(f"layer {name!r}: its calibration statistics are not finite ({err}); check the "
                         f"activations the calibration batches give (overflow in a low-precision model?)") from err
    for child, value in (factors or {}).items():  # None: this form has no data-aware fit, keep weight-only
        target_weight = getattr(layer, child).weight
        target_weight.copy_(value.reshape(target_weight.shape).to(target_weight.dtype))
    return layer


def _is_plain_sequential(module: nn.Module) -> bool:
    return isinstance(module, nn.Sequential) and type(module).forward is nn.Sequential.forward and len(module) > 1


def sequential_unit(model: nn.Module, name: str) -> str | None:
    """The outermost plain ``nn.Sequential`` holding layer ``name`` (``""``: the model itself), or None."""
    parts = name.split(".")
    for depth in range(len(parts) - 1):
        prefix = ".".join(parts[:depth])
        if _is_plain_sequential(model.get_submodule(prefix)):
            return prefix
    return None


def child_of(unit: str, name: str) -> str:
    """The child of the Sequential ``unit`` that holds layer ``name``."""
    rest = name[len(unit) + 1:] if unit else name
    return rest.split(".")[0]
