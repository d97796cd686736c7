"""Data-aware decomposition and BatchNorm re-estimation: a decomposed model that works before any training.

Two tools, both driven by a few *calibration batches* (input tensors, or ``(input, label)`` pairs):

- :func:`recalibrate_bn` re-estimates every BatchNorm's running statistics on the batches (stale BN
  statistics alone can drive a weight-only decomposed ResNet to chance level).
- :func:`calibrated_decompose` (``lrdlab.decompose(model, plan, calibration=batches)``) decomposes
  layer by layer, then re-estimates BN statistics. ``mode`` picks the objective of each layer's fit,
  with ``X`` its inputs in the original network and ``X̂`` in the network decomposed so far:

  - ``"corrected"`` (the default, ``"auto"``, for all but causal LMs): ``‖W X − W' X̂‖²``, the decomposed
    layer reproduces the *original* layer's output on the original inputs, so it also corrects the errors of
    the layers before it. The closed form needs the Gram ``X̂ X̂ᵀ`` and the cross-moment ``X X̂ᵀ``, streamed in float64
    (:func:`~lrdlab.lowrank.data_aware.corrected_weight`, then the reduced-rank fit below).
  - ``"one-shot"``: ``‖W X − W' X‖²`` from statistics collected in one pass of the original model
    (SVD-LLM's way; lrdlab's own implementation).
  - ``"sequential"``: ``‖W X̂ − W' X̂‖²``, each layer fitted to its own output on the inputs it sees.
  - ``"loss-weighted"`` (the default for a causal LM planned by SVD): ``‖D^½ (W − W') X‖²`` with ``D`` the
    next-token loss's output-channel Fisher ``E[(∂L/∂y)²]``, from one backward pass
    (:mod:`lrdlab.lowrank.loss_weighted`).

The per-layer maths needs only second moments ``Σ`` of the inputs (patches for a conv):

- SVD layers (Linear, 1×1 conv, ``channel_svd``): truncation-aware whitening of SVD-LLM (Wang et al.
  2024, arXiv:2403.07378): SVD of ``W L`` with ``L`` the Cholesky factor of ``Σ``, then undo ``L`` —
  the closed-form reduced-rank regression optimum (Izenman 1975), never worse on the calibration data
  than the weight-only SVD at the same rank.
- Tucker-2 (k×k conv): the input factor from the whitened mode-1 unfolding, then the core and output
  factor by reduced-rank regression of the layer's output on the projected input patches.

A small ridge (``ridge × mean eigenvalue`` added to ``Σ``) keeps the Cholesky factor defined for dead or
padded channels; with it the full-rank decomposition still reproduces the layer. Measured modes and
ablations: ``data/calibration_modes_mnist5k.json`` and ``data/accuracy_f11_mnist5k.json``.
"""

from __future__ import annotations

import math
import re
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from lrdlab.lowrank import attention
from lrdlab.lowrank.apply import check_plan, rewritten, set_module
from lrdlab.lowrank.calibration_blocks import (
    StackFit,
    calibrate_stack,
    capture_stack,
    find_stack,
    planned_only,
    shared_copy,
)
from lrdlab.lowrank.calibration_fit import (
    DEFAULT_MODE,
    MODES,
    Moments,
    calibrated_layer,
    child_of,
    feed,
    layer_moments,
    never_ran,
    one_shot_moments,
    sequential_unit,
)
from lrdlab.lowrank.calibration_walk import Walk, fit_layers, probe
from lrdlab.lowrank.data_aware import (
    DEFAULT_RIDGE,
    add_ridge,
    channel_covariance,
    input_gram,
    layer_inputs,
    output_error,
    reduced_rank_regression,
    whitened_tucker2,
)
from lrdlab.lowrank.layers import weight_of
from lrdlab.lowrank.plan import Plan
from lrdlab.lowrank.token_batches import (
    LM_KEYS,
    Batch,
    ModelCall,
    calibration_ids,
    head,
    model_call,
    samples,
    split_labels,
    takes_tokens,
)

# --- input statistics ------------------------------------------------------------------------------------


@torch.no_grad()
def input_covariance(model: nn.Module, layer: nn.Module, inputs: list[Tensor]) -> Tensor:
    """Second moment ``Σ = X Xᵀ / n`` (float64) of ``layer``'s input rows when ``model`` runs on ``inputs``."""
    moments = layer_moments(model, layer, inputs)
    if moments.gram is None:
        raise never_ran([type(layer).__name__])
    return moments.gram / moments.rows


# --- calibration batches: checked before anything happens ----------------------------------------------------


def expected_input(model: nn.Module, plan: Plan | None = None) -> str:
    """Words for the input ``model`` expects, from its first layer, e.g. ``(N, 3, H, W)`` or ``(N, ..., 64)``."""
    size = getattr(model, "lrdlab_input_size", None)  # set by lrdlab.get_model
    if size is not None:
        return "(N, {}, {}, {})".format(*size)
    for m in model.modules():
        if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
            return "(N, {}, {})".format(m.in_channels, ", ".join(("L",) if isinstance(m, nn.Conv1d) else
                                                                  ("D", "H", "W")[-len(m.kernel_size):]))
        if isinstance(m, nn.Linear):
            return f"(N, ..., {m.in_features})"
    return "the model's input"


def _first_layer(model: nn.Module) -> nn.Module | None:
    return next((m for m in model.modules() if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear))), None)


def check_batches(model: nn.Module, batches: Iterable, plan: Plan | None = None) -> list[Batch]:
    """The inputs of ``batches``, checked against ``model``: each batch as
    :func:`~lrdlab.lowrank.token_batches.model_call` reads it (a tensor or ``(x, y)`` pair; a dict of tensors passed
    as keyword arguments; a tuple of positional arguments; a list of images for torchvision detection).

    Raises ``ValueError`` naming the expected input shape for: no batches, a non-tensor, a non-float or
    wrong dtype, a device other than the model's, the wrong rank or channels for the first layer, or
    batches of different shapes. Reads ``batches`` once (an iterator is consumed).
    """
    if batches is None or isinstance(batches, (Tensor, Mapping)) or not isinstance(batches, Iterable):
        expect = expected_input(model, plan)
        raise ValueError(f"calibration takes an iterable of batches (e.g. [x] or a DataLoader), not one "
                         f"{type(batches).__name__}; each batch shaped {expect}")
    batches = list(batches)
    several = any(isinstance(b, Mapping) and not set(b) <= LM_KEYS for b in batches)
    if takes_tokens(model) and not several:  # token batches, checked as such (lowrank/token_batches.py)
        return list(calibration_ids(model, batches, plan))
    expect = expected_input(model, plan)
    param = next(model.parameters(), None)
    dtype = param.dtype if param is not None else torch.float32
    device = param.device if param is not None else torch.device("cpu")
    first = _first_layer(model)
    xs: list[Batch] = []
    for i, batch in enumerate(batches):
        x = model_call(model, batch)
        where = f"calibration batch {i}"
        if isinstance(x, ModelCall):  # keyword arguments, several positional ones, a list of images
            xs.append(_checked_call(x, f"{where} (a {type(batch).__name__})", dtype, device, expect))
            continue
        if x.dtype != dtype:
            raise ValueError(f"{where} has dtype {x.dtype}, the model {dtype}; expected {dtype} inputs shaped {expect}")
        if x.device != device:
            raise ValueError(f"{where} is on {x.device}, the model on {device}; move the batches "
                             f"(inputs shaped {expect}) to {device}")
        if (isinstance(first, (nn.Conv1d, nn.Conv2d, nn.Conv3d))
                and (x.ndim != len(first.kernel_size) + 2 or x.shape[1] != first.in_channels)):
            raise ValueError(f"{where} has shape {tuple(x.shape)}; expected {expect}")
        if isinstance(first, nn.Linear) and (x.ndim < 2 or x.shape[-1] != first.in_features):
            raise ValueError(f"{where} has shape {tuple(x.shape)}; expected {expect}")
        if xs and isinstance(xs[0], Tensor) and x.shape[1:] != xs[0].shape[1:]:
            raise ValueError(f"{where} has shape {tuple(x.shape)} but batch 0 {tuple(xs[0].shape)}; "
                             f"all batches must be shaped {expect}")
        if x.shape[0] == 0:
            raise ValueError(f"{where} is empty; expected inputs shaped {expect}")
        if x.is_floating_point() and not torch.isfinite(x).all():
            raise ValueError(f"{where} holds NaN or infinite values; calibrate on finite inputs shaped {expect}")
        xs.append(x.detach())
    if not xs:
        raise ValueError(f"calibration got no batches; pass a few batches of inputs shaped {expect}")
    return xs


def _checked_call(call: ModelCall, where: str, dtype: torch.dtype, device: torch.device, expect: str) -> ModelCall:
    """A batch that is not one tensor (a dict passed as keyword arguments, a tuple, a list of images), checked:
    its tensors on the model's device, floating ones in its dtype and finite, and at least one sample."""
    tensors = call.tensors()
    if not tensors or call.size == 0:
        raise ValueError(f"{where} holds no input tensor; expected inputs shaped {expect}, or the model's forward "
                         f"arguments (a dict of tensors, a tuple, or a list of images)")
    for t in tensors:
        if t.device != device:
            raise ValueError(f"{where} has a tensor on {t.device}, the model on {device}; move the batches to {device}")
        if t.is_floating_point() and t.dtype != dtype:
            raise ValueError(f"{where} has a {t.dtype} tensor, the model {dtype}; cast the inputs to {dtype}")
        if t.is_floating_point() and not torch.isfinite(t).all():
            raise ValueError(f"{where} holds NaN or infinite values; calibrate on finite inputs")
    return call


def _trial_forward(model: nn.Module, x: Tensor | ModelCall, expect: str) -> None:
    try:
        with torch.no_grad():
            feed(model, head(x, 2))
    except (RuntimeError, AssertionError, ValueError, IndexError, TypeError, KeyError) as err:
        shape = f"shaped {tuple(x.shape)}" if isinstance(x, Tensor) else f"of {_described(x)}"
        raise ValueError(f"the model cannot run on calibration batches {shape} (expected {expect}): "
                         f"{type(err).__name__}: {err}") from err


def _described(call: ModelCall) -> str:
    args = [f"list of {len(a)}" if isinstance(a, list) else tuple(getattr(a, "shape", ())) for a in call.args]
    return ", ".join([*map(str, args), *(f"{k}={tuple(getattr(v, 'shape', ()))}" for k, v in call.kwargs.items())])


def calibration_batches(loader: Iterable, images: int = 512) -> list:
    """The first ``images`` inputs of ``loader`` (any batch :func:`~lrdlab.lowrank.token_batches.model_call`
    reads; labels left out) as a list of input batches."""
    out: list = []
    seen = 0
    for batch in loader:
        x = head(split_labels(batch)[0], images - seen)
        out.append(x)
        seen += samples(x)
        if seen >= images:
            break
    return out


# --- whole models ----------------------------------------------------------------------------------------


def _bn_layers(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]


@torch.no_grad()
def recalibrate_bn(model: nn.Module, batches: Iterable) -> nn.Module:
    """Re-estimate every BatchNorm's running mean and variance on ``batches``; returns ``model`` in eval mode.

    ``batches``: input tensors or ``(x, y)`` pairs. BN layers normalise with the batch's statistics
    while the batches run (as in training), and their running statistics become the cumulative average
    over all calibration samples: the exact mean and unbiased variance of each BN's inputs (what
    ``momentum=None`` gives for equal batches, weighted by batch size here). Other layers stay in eval
    mode (no dropout). A model without BatchNorm is returned unchanged (in eval mode). Bad batches
    raise ``ValueError`` naming the expected input shape; on any error the statistics are restored.
    """
    xs = check_batches(model, batches)
    model.eval()
    if _bn_layers(model):
        _trial_forward(model, xs[0], expected_input(model))
        _reestimate_bn(model, xs)
    return model


@torch.no_grad()
def _reestimate_bn(model: nn.Module, xs: list[Batch]) -> None:
    """:func:`recalibrate_bn` without the checks (``xs``: input tensors known to fit ``model``)."""
    bns = _bn_layers(model)
    if not bns:
        return
    saved = [{k: v.clone() for k, v in bn.state_dict().items()} for bn in bns]
    sums: dict[int, list] = {id(bn): [0.0, 0.0, 0] for bn in bns}

    def hook(mod, args):
        x = args[0].detach().double().transpose(0, 1).reshape(mod.num_features, -1)
        acc = sums[id(mod)]
        acc[0], acc[1], acc[2] = acc[0] + x.sum(1), acc[1] + (x * x).sum(1), acc[2] + x.shape[1]

    handles = [bn.register_forward_pre_hook(hook) for bn in bns]
    try:
        for bn in bns:
            bn.train()
        for x in xs:
            feed(model, x)
        for bn in bns:
            s, ss, n = sums[id(bn)]
            if not n:  # this BN never ran on these inputs
                continue
            mean = s / n
            var = ((ss - n * mean * mean) / max(n - 1, 1)).clamp_min(0)
            assert bn.running_mean is not None and bn.running_var is not None  # _bn_layers keeps tracking BNs
            assert bn.num_batches_tracked is not None
            bn.running_mean.copy_(mean.to(bn.running_mean.dtype))
            bn.running_var.copy_(var.to(bn.running_var.dtype))
            bn.num_batches_tracked.fill_(len(xs))
    except BaseException:
        for bn, state in zip(bns, saved):
            bn.load_state_dict(state)
        raise
    finally:
        for h in handles:
            h.remove()
        for bn in bns:
            bn.eval()


def _run_order(model: nn.Module, names: list[str], x: Tensor) -> list[str]:
    """The layers of ``names`` that run on ``x``, in the order they first run."""
    seen: list[str] = []
    handles = [model.get_submodule(n).register_forward_pre_hook(
        lambda mod, args, n=n: seen.append(n) if n not in seen else None) for n in names]
    try:
        with torch.no_grad():
            feed(model, x)
    finally:
        for h in handles:
            h.remove()
    return seen


def _ran_order(model: nn.Module, names: list[str], xs: list[Batch]) -> list[str]:
    """The layers of ``names`` that run on any of the batches ``xs``, in the order they first run (a routed
    expert may get no token of the first batch)."""
    seen: dict[str, None] = {}
    for x in tqdm(xs, desc="which layers run", leave=False, disable=len(xs) < 20):
        seen.update(dict.fromkeys(_run_order(model, names, x)))
        if len(seen) == len(names):
            break
    return list(seen)


def _unrouted(plan: Plan, missing: list[str], ran: list[str]) -> list[str]:
    """The planned layers that never ran on any batch but whose siblings did (``experts.7.w1`` beside a running
    ``experts.0.w1``: an expert the router sent no calibration token): their rows keep them, saying so.
    Any other layer that never ran is a ``ValueError`` (:func:`never_ran`), raised before anything changes."""
    def shape(name: str) -> str:
        return re.sub(r"(^|\.)\d+(?=\.|$)", r"\1#", name)

    shapes = {shape(n) for n in ran}
    others = [n for n in missing if shape(n) not in shapes]
    if others:
        raise never_ran(others)
    for name in missing:
        plan[name].keep("kept: never ran on any calibration batch (an expert the router sent none of their "
                        "tokens), so it cannot be fitted; calibrate on more data or decompose it without calibration")
    return missing


def _say_fallbacks(plan: Plan, unpaired: list[str], kept: list[str], mode: str) -> None:
    """Note in the plan's rows (and a warning) the layers fitted without row pairing, and the experts kept."""
    note = ("calibrated on its own inputs (sequential fit): its row count depends on the data, so the original "
            "and decomposed inputs cannot be paired")
    for name in unpaired:
        if note not in plan[name].reason:
            plan[name].reason += f"; {note}"
    if unpaired:
        warnings.warn(f"calibration mode {mode!r}: layer(s) {unpaired} see a data-dependent number of rows; each was "
                      f"{note.split(':')[0]} (said in the plan's rows)", stacklevel=3)
    if kept:
        warnings.warn(f"layer(s) {kept} never ran on any calibration batch and are kept whole (said in the "
                      f"plan's rows)", stacklevel=3)


def forward_order(model: nn.Module, names: list[str], x: Tensor) -> list[str]:
    """``names`` sorted by when the layers first run on ``x``; layers that never run come last."""
    seen = _run_order(model, names, x)
    return seen + [n for n in names if n not in seen]


def _bn_scope(model: nn.Module, name: str) -> str | None:
    """Where progressive BN re-estimation acts for layer ``name``: the child of its outermost plain Sequential."""
    unit = sequential_unit(model, name)
    return None if unit is None else (f"{unit}." if unit else "") + child_of(unit, name)


@dataclass(frozen=True, eq=False)
class Calibration:
    """A data-aware decomposition's settings: ``decompose(model, plan, calibration=Calibration(batches, ...))``.

    ``batches``: input tensors or ``(x, y)`` pairs (images), token-id tensors or dicts (language models), on the
    model's device; read once, and checked when the decomposition starts (the error names the input shape the
    model expects). ``mode``: the objective of each layer's fit (:mod:`lrdlab.lowrank.calibration`):
    ``"auto"`` (default: ``"loss-weighted"`` for a causal LM planned by SVD, ``"corrected"`` otherwise),
    ``"corrected"``, ``"one-shot"``, ``"sequential"`` or ``"loss-weighted"`` (each Linear's output channels weighted
    by the next-token loss's sensitivity, :func:`lrdlab.lowrank.loss_weighted.fit_plan`). ``bn``: ``True``
    (= ``"end"``) re-estimates BatchNorm statistics at the end, ``"progressive"`` also after each part, ``False``
    never. ``ridge``: added to each input second moment, times its mean eigenvalue (``>= 0``). A plain iterable
    of batches given as ``calibration`` means ``Calibration(batches)``.
    """

    batches: Iterable = field(repr=False)
    mode: str = DEFAULT_MODE
    bn: bool | str = True
    ridge: float = DEFAULT_RIDGE

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"Calibration mode must be one of {MODES} (got {self.mode!r})")
        if self.bn not in (True, False, "progressive", "end") or not isinstance(self.bn, (bool, str)):
            raise ValueError(f"Calibration bn must be True, False, 'progressive' or 'end' (got {self.bn!r})")
        if isinstance(self.ridge, bool) or not isinstance(self.ridge, (int, float)) or not (
                math.isfinite(self.ridge) and self.ridge >= 0):
            raise ValueError(f"Calibration ridge must be a finite number >= 0 (got {self.ridge!r}); "
                             f"the default is {DEFAULT_RIDGE}")

    @classmethod
    def of(cls, calibration: Calibration | Iterable) -> Calibration:
        """``calibration`` as a :class:`Calibration` (a plain iterable of batches: the default settings)."""
        return calibration if isinstance(calibration, Calibration) else cls(calibration)


@torch.no_grad()
def calibrated_decompose(model: nn.Module, plan: Plan, batches: Iterable, *, mode: str = "corrected",
                         bn: bool | str = True, ridge: float = DEFAULT_RIDGE, inplace: bool = False,
                         progress: bool | None = None) -> nn.Module:
    """Data-aware decomposition of ``model`` by ``plan`` with BN re-estimation; returns a model in eval mode.

    The engine behind ``decompose(model, plan, calibration=Calibration(batches, mode=..., bn=..., ridge=...))``.
    ``mode`` (see the module docstring; ``decompose`` resolves ``"auto"`` and runs ``"loss-weighted"`` itself):
    ``"corrected"`` (default) fits each layer, in the order the
    layers run, so that it reproduces the *original* network's output from the inputs of the network
    decomposed so far; ``"sequential"`` fits each layer to its own output on those inputs;
    ``"one-shot"`` fits every layer to statistics of the original model. A stack of repeated blocks (a
    ``ModuleList``: a transformer's layers) is calibrated block by block from inputs captured once and carried
    forward (:mod:`~lrdlab.lowrank.calibration_blocks`), a few model passes whatever the depth. Inside a
    *chain* (a module whose children each take the previous one's output: ``nn.Sequential``, ResNet stages,
    DeepLab's backbone) the inputs of each child are cached, so only the innermost
    module holding a layer reruns for it and the network
    runs about once per part outside the chains (:mod:`~lrdlab.lowrank.calibration_walk`). ``bn``:
    ``True`` (= ``"end"``) re-estimates all BatchNorms at the end; ``"progressive"`` also re-estimates a
    child's BNs right after its layers are replaced; ``False`` never. ``batches`` are input tensors or
    ``(x, y)`` pairs on the model's device (512 images suffice for ResNet-20). Bad input raises
    ``ValueError`` before anything changes; ``model`` itself only changes with ``inplace=True``.
    """
    settings = Calibration((), mode=mode, bn=bn, ridge=ridge)  # checks the settings; the batches come next
    if mode in ("auto", "loss-weighted"):
        raise ValueError(f"calibrated_decompose runs the modes 'corrected', 'one-shot' and 'sequential' (got "
                         f"{mode!r}); for {mode!r} use decompose(model, plan, calibration=Calibration(batches, "
                         f"mode={mode!r}))")
    check_plan(model, plan)
    xs = check_batches(model, batches, plan)
    rows = {row.name: row for row in plan.decomposed_layers}
    # the planned layers' own weights are shared, not copied: they are replaced, and only read until then
    work = shared_copy(model, planned_only(model, list(rows))).eval()
    # attention modules with planned projections become an exact dense FactorizedMultiheadAttention first, so
    # q/k/v/out are real Linear modules that see their own inputs and are fitted to them like any layer
    attention.attach(work, rewritten(work, list(rows)))
    for name in rows:
        if not torch.isfinite(weight_of(work.get_submodule(name))).all():
            raise ValueError(f"layer {name!r} has NaN or infinite weights; fix or exclude it")
    _trial_forward(work, xs[0], expected_input(model, plan))
    watched = probe(work, list(rows), head(xs[0], 2))
    pending = watched.order if len(watched.order) == len(rows) else _ran_order(work, list(rows), xs)
    kept = _unrouted(plan, [n for n in rows if n not in pending], pending)
    # the original network, never changed: it shares every parameter with ``work`` (whose layers are replaced,
    # never changed in place), so it costs its structure and buffers only
    reference = shared_copy(work) if mode != "sequential" else None
    bar = tqdm(total=len(pending), desc=f"calibrated decompose ({mode})", leave=False,
               disable=(len(pending) < 20) if progress is None else not progress)

    def replace(name: str, moments: Moments) -> None:
        method, layer_ranks = rows[name].spec
        module = work.get_submodule(name)
        set_module(work, name, calibrated_layer(module, method, tuple(layer_ranks), moments, settings.ridge,
                                                 rows[name].branches, name))
        if moments.unpaired:
            unpaired.append(name)
        bar.update()

    unpaired: list[str] = []
    walk = Walk(work, reference, watched.chains, replace, lambda name: _bn_scope(work, name),
                _reestimate_bn if bn == "progressive" else None)

    def outside(names: list[str]) -> None:
        if mode == "one-shot":
            assert reference is not None
            for name, moments in one_shot_moments(reference, names, xs).items():
                replace(name, moments)
        else:
            fit_layers(walk, names, xs)

    rest = _by_blocks(work, pending, xs, StackFit(work, mode, replace), bn == "progressive")
    if rest:
        outside(rest)
    bar.close()
    _say_fallbacks(plan, unpaired, kept, mode)
    if bn:
        _reestimate_bn(work, xs)
    work.eval()
    if not inplace:
        return work
    for child, module in work.named_children():
        setattr(model, child, module)
    return model.eval()


def _by_blocks(work: nn.Module, pending: list[str], xs: list, job: StackFit, progressive: bool) -> list[str]:
    """Fit the layers of ``pending`` that sit in a stack of blocks, block by block, if the stack runs as one
    (:mod:`~lrdlab.lowrank.calibration_blocks`); returns the layers left for the walk."""
    stack = find_stack(work, pending)
    if stack is None:
        return pending
    if progressive and any(_bn_layers(work.get_submodule(stack.path))):
        return pending  # progressive BN acts inside the blocks: the walk settles them as it goes
    inside = [n for n in pending if any(n.startswith(f"{b}.") for b in stack.blocks)]
    if pending.index(inside[0]) > 0:
        return pending  # a planned layer runs before the stack: its inputs would change under the capture
    captured = capture_stack(work, stack, xs)
    if captured is None:
        return pending
    calibrate_stack(job, stack, inside, captured)
    return [n for n in pending if n not in inside]


__all__ = [
    "Calibration", "DEFAULT_MODE", "DEFAULT_RIDGE", "MODES", "Moments", "add_ridge", "calibrated_decompose",
    "calibrated_layer", "calibration_batches", "channel_covariance", "check_batches", "expected_input", "feed",
    "forward_order",
    "input_covariance", "input_gram", "layer_inputs", "layer_moments", "one_shot_moments", "output_error",
    "recalibrate_bn", "reduced_rank_regression", "sequential_unit", "whitened_tucker2",
]
