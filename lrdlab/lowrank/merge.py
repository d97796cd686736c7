"""Layer merging (P1 §4): multiply consecutive linear maps into one layer.

Two tools:

- :func:`merge_linear` — two consecutive ``nn.Linear`` or (k×k then 1×1) ``nn.Conv2d`` layers with
  nothing between them become one layer. Exact (bias and stride included).
- :func:`merge_bottlenecks` — ResNet bottlenecks (``conv1`` 1×1 → bn1 → ReLU → ``conv2`` k×k → bn2 →
  ReLU → ``conv3`` 1×1 → bn3): Tucker-2 the k×k conv, then multiply ``conv1`` with Tucker's first 1×1
  and Tucker's last 1×1 with ``conv3``, so the block has 3 convs again: ``conv1`` C→R1, ``conv2`` the
  k×k core R1→R2, ``conv3`` R2→S.

BN + ReLU sit between the layers merged in a bottleneck, so that merge cannot be exact. What happens
to them is the ``bn`` option (:data:`BN_MODES`):

``"fresh"`` (default)
    bn1 is folded into conv1 and bn2 into Tucker's last 1×1 (exact in eval mode), then the products
    are taken *across* the ReLUs, which stay where the block's ``forward`` applies them: they now act
    on the rank-R1 and rank-R2 activations instead of the m-channel ones — the only change to the
    function. New ``BatchNorm2d`` layers sit on those rank-space activations, so the block keeps
    ResNet's conv-BN-ReLU form (narrower); their statistics come from ``calibration`` batches when
    given (else identity statistics), and their affine parameters make them the identity in eval
    mode: the merged model computes exactly what ``"fold"`` computes, and fine-tunes with batch
    normalisation on every conv.
``"fold"``
    The same products with no BN in the rank spaces (bn1/bn2 become ``nn.Identity``; conv1 carries
    the folded bias): the same function in train and eval mode, no data needed, fewest operations.
``"exact"``
    Merge only where nothing non-linear sits between. In a torchvision bottleneck a ReLU always does,
    so no block is merged: the result is the plain decomposition (5 convs per block).

Why ``"fresh"`` is the default: no merge across a ReLU is exact, so the merged model must be fine-tuned, and
``"fresh"`` with calibration recovers best of the merge options (``data/techniques_accuracy_mnist5k.json``;
vanilla LRD, = ``"exact"``, recovers more with more parameters and layers). Pass ``calibration`` (a few
training batches) for the best start; BN can be folded away again for deployment.

See :func:`merge_report` for what happens to each block and why.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import nn

from lrdlab.lowrank.apply import MERGED, check_plan, decompose_weights, set_module
from lrdlab.lowrank.layers import LowRankLayer, tensor_of, weight_of
from lrdlab.lowrank.methods import TUCKER2, get_method
from lrdlab.lowrank.plan import Plan
from lrdlab.lowrank.token_batches import model_call, run_model, samples

BN_MODES = ("fold", "fresh", "exact")
DEFAULT_BN = "fresh"


# --- exact primitives ----------------------------------------------------------------------------------


def _as_pair(value: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(value, (tuple, list)):
        return int(value[0]), int(value[1])
    return int(value), int(value)  # type: ignore[arg-type]


def _part(block: nn.Module, name: str) -> nn.Module:
    """A named child of ``block`` (``nn.Module`` types attributes as ``Tensor | Module``)."""
    return block.get_submodule(name)


def _bn_tensors(bn: nn.modules.batchnorm._BatchNorm) -> tuple[torch.Tensor, torch.Tensor]:
    """Running mean and variance of a BatchNorm that keeps them."""
    if bn.running_mean is None or bn.running_var is None:
        raise ValueError(f"{bn} keeps no running statistics; merge needs them")
    return bn.running_mean, bn.running_var


def _check_conv(conv: nn.Conv2d, what: str) -> None:
    if conv.groups != 1:
        raise ValueError(f"merge_linear: {what} is a grouped conv (groups={conv.groups}); only groups=1 merges")


@torch.no_grad()
def merge_linear(a: nn.Module, b: nn.Module) -> nn.Module:
    """One layer computing ``b(a(x))``, for two linear layers with nothing between them. Exact.

    Supported pairs: ``Linear → Linear``, and ``Conv2d (any kernel) → 1×1 Conv2d`` (groups 1; the
    1×1 must have no padding). The result keeps ``a``'s kernel, padding and dilation; its stride is
    the product of both strides; its bias is ``W_b·bias_a + bias_b`` (none if neither has one).
    Weights are multiplied in float64 and returned in ``a``'s dtype.
    """
    out: nn.Linear | nn.Conv2d
    if isinstance(a, nn.Linear) and isinstance(b, nn.Linear):
        if a.out_features != b.in_features:
            raise ValueError(f"merge_linear: {a} gives {a.out_features} features but {b} takes {b.in_features}")
        out = nn.Linear(a.in_features, b.out_features, bias=a.bias is not None or b.bias is not None)
        Wa, Wb = a.weight.double(), b.weight.double()
        weight = Wb @ Wa
    elif isinstance(a, nn.Conv2d) and isinstance(b, nn.Conv2d):
        _check_conv(a, "the first layer")
        _check_conv(b, "the second layer")
        if tuple(b.kernel_size) != (1, 1):
            raise ValueError(f"merge_linear: the second conv must be 1×1 (got {tuple(b.kernel_size)}); "
                             f"a k×k conv after another conv does not merge into one conv of the same form")
        if not isinstance(b.padding, str) and any(_as_pair(b.padding)):
            raise ValueError(f"merge_linear: the second (1×1) conv has padding {b.padding}; only padding 0 merges "
                             f"exactly (its zero border is not the first conv's output)")
        if a.out_channels != b.in_channels:
            raise ValueError(f"merge_linear: {a} gives {a.out_channels} channels but {b} takes {b.in_channels}")
        sa, sb = _as_pair(a.stride), _as_pair(b.stride)
        stride = (sa[0] * sb[0], sa[1] * sb[1])
        if a.padding == "same" and stride != (1, 1):
            raise ValueError("merge_linear: padding='same' cannot take the second conv's stride; "
                             "give the first conv explicit padding")
        padding = a.padding if isinstance(a.padding, str) else _as_pair(a.padding)
        out = nn.Conv2d(
            a.in_channels, b.out_channels, _as_pair(a.kernel_size), stride=stride, padding=padding,
            dilation=_as_pair(a.dilation), padding_mode=a.padding_mode, bias=a.bias is not None or b.bias is not None,
        )
        Wa, Wb = a.weight.double(), b.weight.double()[:, :, 0, 0]
        weight = torch.einsum("sm,mcij->scij", Wb, Wa)
    else:
        raise ValueError(f"merge_linear: cannot merge {type(a).__name__} → {type(b).__name__}; supported are "
                         f"Linear → Linear and Conv2d → 1×1 Conv2d")
    out = out.to(device=a.weight.device, dtype=a.weight.dtype)
    out.weight.copy_(weight.to(a.weight.dtype))
    if out.bias is not None:
        bias = torch.zeros(Wb.shape[0], dtype=torch.float64, device=Wb.device)
        if a.bias is not None:
            bias += Wb @ a.bias.double()
        if b.bias is not None:
            bias += b.bias.double()
        out.bias.copy_(bias.to(a.weight.dtype))
    return out


@torch.no_grad()
def fold_bn(layer: nn.Module, bn: nn.Module) -> nn.Module:
    """``layer`` (Conv2d / Linear) with the following eval-mode BatchNorm ``bn`` folded in. Exact in eval mode."""
    if isinstance(bn, nn.Identity):
        return copy.deepcopy(layer)
    if not isinstance(bn, nn.modules.batchnorm._BatchNorm) or bn.running_mean is None:
        raise ValueError(f"fold_bn: expected a BatchNorm with running statistics after {layer}, got {bn}")
    if not isinstance(layer, (nn.Conv2d, nn.Linear)):
        raise ValueError(f"fold_bn: cannot fold BatchNorm into a {type(layer).__name__}")
    mean, var = _bn_tensors(bn)
    scale = var.double().add(bn.eps).rsqrt()
    shift = -mean.double() * scale
    if bn.affine and bn.weight is not None and bn.bias is not None:
        scale, shift = scale * bn.weight.double(), shift * bn.weight.double() + bn.bias.double()
    out = copy.deepcopy(layer)
    if out.bias is None:
        out.bias = nn.Parameter(torch.zeros(out.weight.shape[0], dtype=out.weight.dtype, device=out.weight.device))
    shape = (-1,) + (1,) * (out.weight.dim() - 1)
    out.weight.copy_((layer.weight.double() * scale.view(shape)).to(layer.weight.dtype))
    old_bias = layer.bias.double() if layer.bias is not None else 0.0
    out.bias.copy_((old_bias * scale + shift).to(layer.weight.dtype))
    return out


# --- finding bottlenecks ------------------------------------------------------------------------------

PARTS = ("conv1", "bn1", "conv2", "bn2", "conv3", "bn3")


def bottleneck_reason(module: nn.Module) -> str | None:
    """Why ``module`` is not a mergeable bottleneck, or None when it is.

    A bottleneck is torchvision's ``Bottleneck`` or any module whose class name ends in
    ``Bottleneck`` with ``conv1``/``bn1``/``conv2``/``bn2``/``conv3``/``bn3`` and the forward
    conv1 → bn1 → ReLU → conv2 → bn2 → ReLU → conv3 → bn3 (lrdlab cannot check the forward itself).
    """
    if not type(module).__name__.endswith("Bottleneck"):
        return "not a Bottleneck"
    missing = [p for p in PARTS if not hasattr(module, p)]
    if missing:
        return f"a Bottleneck without {missing}"
    c1, c3 = module.conv1, module.conv3
    for name, conv in (("conv1", c1), ("conv3", c3)):
        if not isinstance(conv, nn.Conv2d) or tuple(conv.kernel_size) != (1, 1) or conv.groups != 1:
            return f"{name} is not a 1×1 conv with groups=1"
        if not isinstance(conv.padding, str) and any(_as_pair(conv.padding)):
            return f"{name} has padding {conv.padding}"
    for name in ("bn1", "bn2", "bn3"):
        bn = getattr(module, name)
        if not isinstance(bn, (nn.BatchNorm2d, nn.Identity)):
            return f"{name} is a {type(bn).__name__}, not BatchNorm2d"
        if isinstance(bn, nn.BatchNorm2d) and bn.running_mean is None:
            return f"{name} keeps no running statistics"
    if c3.stride not in (1, (1, 1)):
        return "conv3 is strided"
    return None


def find_bottlenecks(model: nn.Module) -> list[str]:
    """Names of the mergeable bottleneck blocks of ``model``, in module order."""
    return [name for name, m in model.named_modules() if bottleneck_reason(m) is None]


def merge_report(model: nn.Module, plan: Plan, bn: str = DEFAULT_BN) -> list[dict[str, Any]]:
    """One row per bottleneck: ``block``, ``merged`` (bool), ``ranks`` and ``reason``.

    Raises ``ValueError`` when ``model`` has no bottleneck at all or the plan decomposes a
    bottleneck's k×k conv in a form that cannot merge (not Tucker-2).
    """
    if bn not in BN_MODES:
        raise ValueError(f"bn must be one of {BN_MODES} (got {bn!r})")
    check_plan(model, plan)
    blocks = find_bottlenecks(model)
    if not blocks:
        raise ValueError(f"{type(model).__name__} has no bottleneck block (1×1 → k×k → 1×1 with BatchNorm); "
                         f"layer merging applies to ResNet-50/101/152-style models — use decompose() instead")
    rows = {r.name: r for r in plan.layers}
    report = []
    for block in blocks:
        name = f"{block}.conv2" if block else "conv2"
        row = rows.get(name)
        entry = {"block": block, "merged": False, "ranks": None, "reason": ""}
        if row is None or not row.decomposed:
            entry["reason"] = f"{name} is not decomposed by the plan ({row.reason if row else 'not in the plan'})"
        elif get_method(row.spec[0]) is not TUCKER2:
            raise ValueError(f"layer merging needs Tucker-2 on {name}, but the plan uses {row.method!r}; "
                             f"make the plan with method='tucker2' (or 'auto')")
        elif bn == "exact":
            entry["reason"] = "bn='exact': BN + ReLU sit between conv1 and conv2 (and conv2 and conv3)"
        else:
            entry.update(merged=True, ranks=list(row.spec[1]), reason=f"merged (bn={bn!r})")
        report.append(entry)
    return report


# --- merging one block ----------------------------------------------------------------------------------


def _identity_bn(like: nn.Module, channels: int, shift: torch.Tensor | None, weight: torch.Tensor) -> nn.BatchNorm2d:
    """A BatchNorm2d that is ``x + shift`` in eval mode (running stats 0 / 1), settings copied from ``like``."""
    bn = nn.BatchNorm2d(channels, device=weight.device, dtype=weight.dtype)
    if isinstance(like, nn.BatchNorm2d):
        bn.eps, bn.momentum = like.eps, like.momentum
    with torch.no_grad():
        bn.weight.fill_(float(bn.eps + 1.0) ** 0.5)
        if shift is not None:
            bn.bias.copy_(shift)
    return bn


@torch.no_grad()
def _merge_block(block: nn.Module, bn: str) -> dict[str, nn.Module]:
    """New modules for one bottleneck whose ``conv2`` is a Tucker-2 ``LowRankLayer``; the block is not changed."""
    low = _part(block, "conv2")
    if not isinstance(low, LowRankLayer) or low.decomposition is not TUCKER2:
        raise ValueError(f"expected a Tucker-2 LowRankLayer as conv2, got {type(low).__name__}")
    core = _part(low, "core")
    core_weight = weight_of(core)
    dtype, device = core_weight.dtype, core_weight.device
    conv1 = merge_linear(fold_bn(_part(block, "conv1"), _part(block, "bn1")), _part(low, "first"))
    conv3 = merge_linear(fold_bn(_part(low, "last"), _part(block, "bn2")), _part(block, "conv3"))
    bn3 = copy.deepcopy(_part(block, "bn3"))
    conv3_bias = tensor_of(conv3, "bias")
    if conv3_bias is not None and isinstance(bn3, nn.BatchNorm2d):  # a bias just before BN is its running mean
        running_mean, _ = _bn_tensors(bn3)
        running_mean.sub_(conv3_bias.to(running_mean.dtype))
        conv3.register_parameter("bias", None)
    parts: dict[str, nn.Module] = {"conv1": conv1, "conv2": copy.deepcopy(core), "conv3": conv3, "bn3": bn3}
    if bn == "fold":
        parts.update(bn1=nn.Identity(), bn2=nn.Identity())
    else:  # fresh: BN in the rank spaces, identity in eval mode; conv1's bias moves into bn1's shift
        conv1_bias = tensor_of(conv1, "bias")
        shift = None if conv1_bias is None else conv1_bias.detach().clone()
        conv1.register_parameter("bias", None)
        out1, out2 = weight_of(conv1).shape[0], core_weight.shape[0]
        parts.update(bn1=_identity_bn(_part(block, "bn1"), out1, shift, core_weight),
                     bn2=_identity_bn(_part(block, "bn2"), out2, None, core_weight))
    return {k: v.to(device=device, dtype=dtype) for k, v in parts.items()}


@torch.no_grad()
def calibrate_bn(model: nn.Module, bns: list[nn.BatchNorm2d], batches: Iterable[torch.Tensor]) -> int:
    """Give ``bns`` (identity-initialised, see ``"fresh"``) data statistics without changing the eval function.

    Runs ``model`` in eval mode on ``batches`` (input tensors, or ``(input, label)`` pairs), measures
    each BN's input mean and variance per channel, and sets running stats to them and the affine
    parameters so that BN stays ``x + shift`` in eval mode. Returns the number of images seen.
    """
    sums: dict[int, list[Any]] = {id(b): [0.0, 0.0, 0] for b in bns}

    def hook(mod: nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
        x = inputs[0].detach().double().transpose(0, 1).reshape(inputs[0].shape[1], -1)
        acc = sums[id(mod)]
        acc[0] = acc[0] + x.sum(1)
        acc[1] = acc[1] + (x * x).sum(1)
        acc[2] += x.shape[1]

    handles = [b.register_forward_pre_hook(hook) for b in bns]
    was_training = model.training
    model.eval()
    seen = 0
    try:
        for batch in batches:
            call = model_call(model, batch)
            run_model(model, call)
            seen += samples(call)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    if seen == 0:
        raise ValueError("calibrate_bn: no calibration batches")
    for b in bns:
        s, ss, n = sums[id(b)]
        mean = s / n
        var = (ss / n - mean * mean).clamp_min(0) * (n / max(n - 1, 1))
        running_mean, running_var = _bn_tensors(b)
        weight, bias = weight_of(b), tensor_of(b, "bias")
        if bias is None:
            raise ValueError(f"calibrate_bn: {b} has no affine parameters")
        shift = bias.double() - weight.double() * running_mean.double() / (running_var.double() + b.eps).sqrt()
        running_mean.copy_(mean.to(running_mean.dtype))
        running_var.copy_(var.to(running_var.dtype))
        weight.copy_((var + b.eps).sqrt().to(weight.dtype))
        bias.copy_((shift + mean).to(bias.dtype))
    return seen


# --- whole models ----------------------------------------------------------------------------------------


def merge_bottlenecks(
    model: nn.Module,
    plan: Plan,
    *,
    bn: str = DEFAULT_BN,
    inplace: bool = False,
    calibration: Iterable[torch.Tensor] | None = None,
    progress: bool | None = None,
) -> nn.Module:
    """Decompose ``model`` by ``plan`` with its bottlenecks merged back to 3 convs (P1 §4).

    ``model`` is the original (undecomposed) model; ``plan`` a :func:`lrdlab.make_plan` plan. Every
    bottleneck whose k×k ``conv2`` the plan Tucker-2 decomposes is merged (its ``conv1``/``conv3``
    rows are ignored: those convs are absorbed whole); every other planned layer (stem, fc,
    downsample, …) is decomposed as planned. ``bn`` is one of :data:`BN_MODES` (module docstring);
    ``calibration`` (batches of inputs) sets the new BN statistics of ``bn="fresh"``. BatchNorm is
    folded with its running statistics, so merge a trained model. Everything is computed before
    anything is replaced: on error the model is unchanged. Returns plain nn modules.
    """
    report = merge_report(model, plan, bn)
    if calibration is not None and bn != "fresh":
        raise ValueError(f"calibration batches are only used by bn='fresh' (got bn={bn!r})")
    merged_blocks = [r["block"] for r in report if r["merged"]]
    prefix = {b: f"{b}." if b else "" for b in merged_blocks}
    absorbed = {prefix[b] + p for b in merged_blocks for p in ("conv1", "conv3")}
    sub_plan = copy.deepcopy(plan)
    for row in sub_plan.layers:
        if row.name in absorbed and row.decomposed:
            row.keep("absorbed by layer merging")
    work = decompose_weights(model, sub_plan, inplace=False, progress=progress)
    replacements: dict[str, nn.Module] = {
        row.name: work.get_submodule(row.name) for row in sub_plan.decomposed_layers
        if not any(row.name == prefix[b] + "conv2" for b in merged_blocks)
    }
    new_bns: list[nn.BatchNorm2d] = []
    for b in merged_blocks:
        parts = _merge_block(work.get_submodule(b), bn)
        if bn == "fresh":
            new_bns += [m for m in (parts["bn1"], parts["bn2"]) if isinstance(m, nn.BatchNorm2d)]
        replacements.update({prefix[b] + k: v for k, v in parts.items()})
    if calibration is not None:
        for name, module in replacements.items():
            set_module(work, name, module)
        calibrate_bn(work, new_bns, calibration)
    target = model if inplace else work
    for name, module in replacements.items():
        set_module(target, name, module)
    for module in replacements.values():
        module.train(model.training)
    for b in merged_blocks:  # recorded, so that save_decomposed / load_decomposed can rebuild the merge
        setattr(target.get_submodule(b), MERGED, bn)
    return target


def merge_block_in_place(model: nn.Module, block: str, bn: str) -> None:
    """Merge one bottleneck of ``model`` whose ``conv2`` is already a Tucker-2 ``LowRankLayer`` (for reloading)."""
    module = model.get_submodule(block)
    prefix = f"{block}." if block else ""
    for name, part in _merge_block(module, bn).items():
        set_module(model, prefix + name, part)
    setattr(module, MERGED, bn)
