"""The decomposed layer: a small ``nn.Sequential`` of plain ``nn.Linear`` / ``nn.Conv1d/2d/3d`` modules.

``LowRankLayer`` children are named by its method's ``factor_names`` (``first``, ``core``, ``last`` for
Tucker-2) — see docs/architecture.md.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from typing import Any, TypeGuard

import torch
from torch import nn
from torch.nn import functional as F
from torch.nn.modules import module as torch_module

from lrdlab.lowrank import conv_kinds, guards, hf, methods
from lrdlab.lowrank.methods import Method, MethodOptions, get_method


class LowRankLayer(nn.Sequential):
    """A layer replaced by a product of factors; carries what it replaced in ``original``.

    It answers the attributes code reads from the layer it replaced: ``in_features`` /
    ``out_features`` (Linear), ``in_channels`` / ``out_channels`` / ``kernel_size`` / ``stride`` /
    ``padding`` / ``dilation`` / ``groups`` / ``padding_mode`` (conv), and ``weight`` / ``bias``.
    ``weight`` is a *reconstruction*: a new tensor multiplied out of the factors on every read
    (differentiable, not a Parameter; writing to it changes nothing; ``[out, in]`` for a replaced HF ``Conv1D``).
    ``bias`` is ``last.bias``. A layer that replaced a TF-"same" conv (timm's ``Conv2dSame``) pads its input as
    that conv did before the first factor (:mod:`lrdlab.lowrank.conv_kinds`).
    """

    __jit_unused_properties__ = [
        "decomposition", "weight", "bias", "in_features", "out_features", "in_channels", "out_channels",
        "kernel_size", "stride", "padding", "dilation", "groups", "padding_mode",
    ]

    def __init__(
        self,
        factors: OrderedDict[str, nn.Module],
        method: str,
        ranks: Sequence[int],
        original: dict[str, Any],
        branches: int = 1,
    ) -> None:
        super().__init__(factors)
        self.method = method
        self.ranks = tuple(int(r) for r in ranks)
        self.original = dict(original)
        self.branches = int(branches)
        self.same_pad = (conv_kinds.same_pad_args(original["kernel_size"], original["stride"],
                                                             original["dilation"])
                                    if original.get("same_pad") else [])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Each factor in turn, as ``nn.Sequential``; a plain ``nn.Linear`` factor that no hook watches is applied
        as ``F.linear`` directly (at a one-token decode step the module calls cost a visible share of the GEMVs)."""
        if len(self.same_pad) > 0:
            x = conv_kinds.pad_same(x, self.same_pad)
        if torch.jit.is_scripting():
            for factor in self:
                x = factor(x)
        else:
            x = _apply_factors(self, x)
        return x

    def factor_names(self) -> list[str]:
        return [name for name, _ in self.named_children()]

    @property
    def decomposition(self) -> Method:
        """The :class:`~lrdlab.lowrank.methods.Method` object of this layer's form."""
        return get_method(self.method)

    @property
    def weight(self) -> torch.Tensor:
        """The dense weight the factors multiply to (a reconstruction, shaped as the original's weight)."""
        factors = {name: weight_of(m) for name, m in self.named_children()}
        return self.decomposition.reconstruct(factors, self.original)

    @property
    def bias(self) -> torch.Tensor | None:
        """The original layer's bias, which the last factor carries."""
        return tensor_of(self[-1], "bias")

    def _original(self, key: str, linear: bool = False) -> Any:
        is_linear = methods.linear_like(self.original)
        if key not in self.original or is_linear != linear:
            raise AttributeError(f"a LowRankLayer replacing a {self.original.get('type')} has no {key!r}")
        value = self.original[key]
        return tuple(value) if isinstance(value, list) else value

    in_features = property(lambda self: self._original("in_channels", linear=True),
                           doc="Input features of the replaced Linear.")
    out_features = property(lambda self: self._original("out_channels", linear=True),
                            doc="Output features of the replaced Linear.")
    in_channels = property(lambda self: self._original("in_channels"), doc="Input channels of the replaced conv.")
    out_channels = property(lambda self: self._original("out_channels"), doc="Output channels of the replaced conv.")
    kernel_size = property(lambda self: self._original("kernel_size"), doc="Kernel size of the replaced conv.")
    stride = property(lambda self: self._original("stride"), doc="Stride of the replaced conv.")
    padding = property(lambda self: self._original("padding"), doc="Padding of the replaced conv.")
    dilation = property(lambda self: self._original("dilation"), doc="Dilation of the replaced conv.")
    groups = property(lambda self: self._original("groups"), doc="Groups of the replaced conv (1).")
    padding_mode = property(lambda self: self._original("padding_mode"), doc="Padding mode of the replaced conv.")

    def extra_repr(self) -> str:
        extra = f", branches={self.branches}" if self.branches > 1 else ""
        return f"method={self.method}, ranks={self.ranks}{extra}"


# TF "same" padding's [k, s, d] per axis, empty for none: typed for TorchScript, which cannot infer an empty list's
# type and cannot read this module's postponed (string) annotations
LowRankLayer.__annotations__ = {**LowRankLayer.__annotations__, "same_pad": list[int]}


def _unwatched_linear(module: nn.Module) -> TypeGuard[nn.Linear]:
    """A plain ``nn.Linear`` (not a subclass, not parametrized) with no hook of its own."""
    return type(module) is nn.Linear and not (module._forward_hooks or module._forward_pre_hooks
                                              or module._backward_hooks or module._backward_pre_hooks)


def _global_hooks() -> bool:
    """Whether any module-wide hook is registered (``torch.nn.modules.module.register_module_forward_hook`` …)."""
    return bool(torch_module._global_forward_hooks or torch_module._global_forward_pre_hooks
                or torch_module._global_backward_hooks or torch_module._global_backward_pre_hooks)


def _apply_factors(layer: nn.Sequential, x: torch.Tensor) -> torch.Tensor:
    hooked = _global_hooks()
    for factor in layer:
        if not hooked and _unwatched_linear(factor):
            x = F.linear(x, factor.weight, factor.bias)
        else:
            x = factor(x)
    return x


def tensor_of(module: nn.Module, name: str = "weight") -> torch.Tensor | None:
    """A module's tensor attribute (``weight``, ``bias``, …), or None (``nn.Module`` types them ``Tensor | Module``)."""
    value = getattr(module, name, None)
    return value if isinstance(value, torch.Tensor) else None


def weight_of(module: nn.Module) -> torch.Tensor:
    """A layer's weight tensor, or a ValueError naming the layer type."""
    weight = tensor_of(module, "weight")
    if weight is None:
        raise ValueError(f"a {type(module).__name__} has no weight tensor; only Linear/Conv layers decompose")
    return weight


def dense_weight(module: nn.Module) -> torch.Tensor:
    """The weight as ``[S, C, ...]`` (out first), transposing HuggingFace's ``Conv1D`` (stored ``[in, out]``);
    a parametrized weight as its effective value in eval mode (no spectral-norm power step); a weight-standardised
    conv's as its forward standardises it (:func:`lrdlab.lowrank.conv_kinds.effective_weight`)."""
    if hf.is_conv1d(module):
        return hf.conv1d_weight(module)
    with guards.parametrizations_in_eval(module):
        return conv_kinds.effective_weight(module, weight_of(module))


def describe(module: nn.Module) -> dict[str, Any]:
    """What a Linear/Conv layer is, as plain JSON-able values."""
    info: dict[str, Any] = {"type": type(module).__name__, "bias": getattr(module, "bias", None) is not None}
    if isinstance(module, nn.Linear):
        info.update(in_channels=module.in_features, out_channels=module.out_features, kernel_size=[1, 1])
    elif hf.is_conv1d(module):  # HuggingFace Conv1D: a Linear with its weight stored [in, out]
        weight = weight_of(module)
        info.update(in_channels=weight.shape[0], out_channels=weight.shape[1], kernel_size=[1, 1])
    elif isinstance(module, nn.modules.conv._ConvNd):
        info.update(
            in_channels=module.in_channels,
            out_channels=module.out_channels,
            kernel_size=list(module.kernel_size),
            stride=list(module.stride),
            padding=module.padding if isinstance(module.padding, str) else list(module.padding),
            dilation=list(module.dilation),
            groups=module.groups,
            padding_mode=module.padding_mode,
        )
        if conv_kinds.dynamic_same(module):
            info["same_pad"] = True
    return info


def unsupported_reason(module: nn.Module) -> str | None:
    """Why ``module`` cannot be decomposed, or None when it can."""
    if (lazy := guards.lazy_reason(module)) is not None:
        return lazy
    if isinstance(module, nn.Linear) or hf.is_conv1d(module):
        return None
    if isinstance(module, (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)):
        return "skipped: transposed conv not supported"
    if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
        if module.groups > 1:
            kind = "depthwise" if module.groups == module.in_channels == module.out_channels else "grouped"
            return f"skipped: {kind} conv (groups={module.groups})"
        return None
    return f"skipped: {type(module).__name__} not supported"


def full_ranks(original: dict[str, Any], method: str) -> list[int]:
    """The largest ranks of a layer (``describe()`` dict): decomposing at these reproduces it exactly."""
    return get_method(method).full_ranks(original)


def build(original: dict[str, Any], method: str, ranks: Sequence[int], branches: int = 1) -> LowRankLayer:
    """An uninitialised ``LowRankLayer`` of the right shapes (used to reload a saved model)."""
    form = get_method(method)
    reason = form.unsupported(original)
    if reason:
        raise ValueError(reason)
    form.check_ranks(original, ranks, f"a {original['type']}")
    layer_ranks = tuple(int(r) for r in ranks)
    factors = form.build(original, layer_ranks, branches)
    return LowRankLayer(factors, form.name, layer_ranks, original, branches=branches if form.branchable else 1)


@torch.no_grad()
def decompose_layer(
    module: nn.Module, method: str | Method, ranks: Sequence[int], options: MethodOptions | None = None,
    branches: int = 1,
) -> LowRankLayer:
    """Decompose one ``nn.Linear`` / ``nn.Conv1d/2d/3d`` into a ``LowRankLayer`` with the given ranks.

    ``ranks`` is a sequence (one rank per :attr:`Method.rank_names`: ``(8,)`` for SVD, ``(8, 8)`` for
    Tucker-2). ``options``: the method's options (its ``options_type``, e.g. ``Tucker2Options(init="hooi")``;
    None: the defaults). A HuggingFace ``Conv1D`` is decomposed as the Linear it computes. The factors keep the
    original weight's dtype, device, ``requires_grad`` (a parametrized weight's: its originals'; a standardised
    weight's: the raw weight's) and memory format (``channels_last``). timm's weight-standardised and TF-"same" convs
    are decomposed as their forward computes (:mod:`lrdlab.lowrank.conv_kinds`).
    """
    reason = unsupported_reason(module)
    if reason:
        raise ValueError(reason)
    original = describe(module)
    form = get_method(method)
    options = form.options(options)
    weight = dense_weight(module)
    with torch.device("meta"):  # no point initialising weights that are overwritten below
        layer = build(original, form.name, ranks, branches)
    layer = layer.to_empty(device=weight.device).to(weight.dtype)
    if weight.dim() == 4 and not weight.is_contiguous() and weight.is_contiguous(memory_format=torch.channels_last):
        layer = layer.to(memory_format=torch.channels_last)
    trainable = guards.weight_requires_grad(module, weight_of(module) if conv_kinds.kind_of(module) else weight)
    for name, value in form.factorize(weight, layer.ranks, options, layer.branches).items():
        target = weight_of(layer.get_submodule(name))
        target.copy_(value.reshape(target.shape))
        target.requires_grad_(trainable)
    bias, new_bias = tensor_of(module, "bias"), tensor_of(layer[-1], "bias")
    if bias is not None and new_bias is not None:
        new_bias.copy_(bias)
        new_bias.requires_grad_(bias.requires_grad)
    return layer
