"""Conv subclasses whose own ``forward`` lrdlab knows: a fixed function of their weight, and of the input's size.

- timm's weight-standardised convs (``StdConv2d``, ``ScaledStdConv2d`` and their ``…Same`` variants, BiT and
  NFNet): the forward convolves with a standardised (and, scaled, gained) copy of the weight. That copy is a
  function of the weight alone, as a parametrization is, so :func:`effective_weight` is what gets decomposed into
  plain factors, exact at full rank.
- timm's ``Conv2dSame`` (the EfficientNet "tf_" family) and the ``…Same`` variants with dynamic padding: TF's
  "same" padding, computed from the input's size on every call. The decomposed layer keeps it: it pads its input
  (:func:`pad_same`) before the first factor, which is exact because every factor before the spatial one is a
  bias-free pointwise conv (zeros stay zeros).

Classes are matched exactly (by module and name, so timm is not imported): a further subclass may compute
something else and is kept as any other overriding layer is.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor, nn


@dataclass(frozen=True)
class ConvKind:
    """What a known conv subclass's forward does beyond ``nn.Conv2d``'s."""

    standardised: bool = False  # the weight is standardised per output channel (F.batch_norm over its fan-in)
    scaled: bool = False  # ... and multiplied by ``gain * scale`` (ScaledStdConv2d)
    same: bool = False  # TF "same" padding from the input size (Conv2dSame; the …Same variants when ``same_pad``)


_TIMM = "timm.layers."
KINDS: dict[str, ConvKind] = {
    "std_conv.StdConv2d": ConvKind(standardised=True),
    "std_conv.StdConv2dSame": ConvKind(standardised=True, same=True),
    "std_conv.ScaledStdConv2d": ConvKind(standardised=True, scaled=True),
    "std_conv.ScaledStdConv2dSame": ConvKind(standardised=True, scaled=True, same=True),
    "conv2d_same.Conv2dSame": ConvKind(same=True),
}


def kind_of(module: nn.Module) -> ConvKind | None:
    """The :class:`ConvKind` of a known conv subclass (exactly that class), or None."""
    cls = type(module)
    if not cls.__module__.startswith(_TIMM):
        return None
    return KINDS.get(f"{cls.__module__[len(_TIMM):]}.{cls.__qualname__}")


def dynamic_same(module: nn.Module) -> bool:
    """Whether the layer pads its input TF-"same" at run time (the ``…Same`` variants only when ``same_pad``)."""
    kind = kind_of(module)
    if kind is None or not kind.same:
        return False
    return bool(getattr(module, "same_pad", True))


def effective_weight(module: nn.Module, weight: Tensor) -> Tensor:
    """The weight the layer's forward convolves with (``weight`` itself unless it is standardised)."""
    kind = kind_of(module)
    if kind is None or not kind.standardised:
        return weight
    plain = vars(module)  # timm keeps ``scale`` and ``eps`` as plain float attributes, ``gain`` as a parameter
    gain = (module.get_parameter("gain") * float(plain["scale"])).reshape(-1) if kind.scaled else None
    out = weight.shape[0]
    return F.batch_norm(weight.reshape(1, out, -1), None, None, weight=gain, training=True, momentum=0.0,
                        eps=float(plain["eps"])).reshape_as(weight)


def note(module: nn.Module) -> str | None:
    """A note for the plan row of a known conv subclass, or None."""
    kind = kind_of(module)
    if kind is None:
        return None
    parts = []
    if kind.standardised:
        parts.append("its standardised weight is decomposed into plain factors")
    if dynamic_same(module):
        parts.append("its TF 'same' padding is applied before the first factor")
    return f"{type(module).__name__}: {'; '.join(parts)}" if parts else None


def same_pad_args(kernel: list[int], stride: list[int], dilation: list[int]) -> list[int]:
    """``[k, s, d]`` per spatial axis, flat (what :func:`pad_same` takes; a TorchScript-friendly attribute)."""
    return [v for k, s, d in zip(kernel, stride, dilation) for v in (int(k), int(s), int(d))]


def pad_same(x: Tensor, args: list[int]) -> Tensor:
    """``x`` zero-padded as TF's "same" does for a conv of ``args`` (:func:`same_pad_args`): the output has
    ``ceil(size / stride)`` positions, the odd pixel on the far side (timm's ``pad_same``)."""
    pads: list[int] = []
    axes = len(args) // 3
    for axis in range(axes):
        k, s, d = args[3 * axis], args[3 * axis + 1], args[3 * axis + 2]
        size = x.shape[x.dim() - axes + axis]
        total = max((-(-size // s) - 1) * s + (k - 1) * d + 1 - size, 0)
        pads = [total // 2, total - total // 2] + pads  # F.pad lists the last axis first
    if sum(pads) == 0:
        return x
    return F.pad(x, pads)

