"""What the model really does with each candidate layer: is it called, is its weight read elsewhere, is its
``forward`` the base class's own.

Decomposing a layer replaces the module. That only helps when the model *calls* the module: a model that reads
``layer.weight`` itself (torchvision's Swin ``F.linear(x, self.qkv.weight)``, HF T5's ``self.wo.weight.dtype``)
would read a :class:`~lrdlab.lowrank.layers.LowRankLayer`'s ``weight``, which multiplies the factors out on every
read: slower, and the factors are never trained by what they compute. A subclass whose ``forward`` differs from
its base class's (a weight-standardised conv, a scaled Linear) would be replaced by plain factors that compute
something else. :func:`usage_reasons` finds both and :func:`lrdlab.make_plan` keeps such layers, with the reason.

The check runs one *probe* forward (eval mode, no grad, restored afterwards) on the input the user gives
(``example_input=`` / ``input_shape=``), else the input :func:`lrdlab.get_model` recorded, else token ids for a
HuggingFace language model; without one it is skipped and the plan says so. During the probe each candidate
module's class is swapped for a subclass that counts calls and reads of ``.weight`` made outside its own forward.

Opting in: ``make_plan(model, policy, Layers(force=["name"]))`` decomposes a kept layer anyway;
:func:`register_safe_layer` marks a subclass whose forward computes what its base class computes.
"""

from __future__ import annotations

import inspect
import re
import weakref
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from lrdlab.lowrank import conv_kinds, hf
from lrdlab.lowrank.probe_inputs import inferred_input, random_input

SAFE_LAYERS: set[type] = set()  # subclasses registered as computing what their torch base class computes


def register_safe_layer(cls: type) -> type:
    """Mark a ``nn.Linear`` / ``nn.Conv2d`` subclass as decomposable although it overrides ``forward``
    (its forward must compute what the base class's does, e.g. only log). Usable as a class decorator."""
    if not (isinstance(cls, type) and issubclass(cls, (nn.Linear, nn.modules.conv._ConvNd))):
        raise ValueError(f"register_safe_layer takes a subclass of nn.Linear or nn.Conv2d (got {cls!r})")
    SAFE_LAYERS.add(cls)
    return cls


def _torch_base(cls: type) -> type:
    """The nearest class of ``cls``'s MRO defined in ``torch.nn`` (``nn.Conv2d`` for ``class StdConv(nn.Conv2d)``)."""
    return next(k for k in cls.__mro__ if k.__module__.startswith("torch.nn."))


def overridden_forward(module: nn.Module) -> str | None:
    """Why a layer subclass cannot be replaced by plain factors (its own ``forward``), or None."""
    cls = type(module)
    if (hf.is_conv1d(module) or cls in SAFE_LAYERS or conv_kinds.kind_of(module) is not None
            or not isinstance(module, (nn.Linear, nn.modules.conv._ConvNd))):
        return None
    base = _torch_base(cls)
    own = [f for f in ("forward", "_conv_forward") if getattr(cls, f, None) is not getattr(base, f, None)]
    if not own:
        return None
    return (f"kept: {cls.__name__} overrides {base.__name__}.{own[0]}, so plain factors would compute something "
            f"else; if it computes what {base.__name__} does, opt in with lrdlab.register_safe_layer({cls.__name__}) "
            f"or Layers(force=[name])")


# --- the probe forward ---------------------------------------------------------------------------


@dataclass
class _Record:
    calls: int = 0
    depth: int = 0
    reads: int = 0


_ACTIVE: dict[int, _Record] = {}
_SPIES: dict[type, type] = {}


def _class_weight(cls: type, module: nn.Module) -> Any:
    for klass in cls.__mro__:  # a parametrized layer's class defines ``weight`` as a property
        if "weight" in klass.__dict__:
            return klass.__dict__["weight"].__get__(module, cls)
    return nn.Module.__getattr__(module, "weight")


def _spy(cls: type) -> type:
    """A subclass of ``cls`` that counts calls and reads of ``.weight`` made outside its own forward."""
    if cls not in _SPIES:
        def forward(self: nn.Module, *args: Any, **kwargs: Any) -> Any:
            record = _ACTIVE[id(self)]
            record.calls += 1
            record.depth += 1
            try:
                return cls.forward(self, *args, **kwargs)  # type: ignore[attr-defined]
            finally:
                record.depth -= 1

        def weight(self: nn.Module) -> Any:
            record = _ACTIVE.get(id(self))
            if record is not None and record.depth == 0:
                record.reads += 1
            return _class_weight(cls, self)

        _SPIES[cls] = type(cls.__name__, (cls,), {"forward": forward, "weight": property(weight),
                                                  "__qualname__": cls.__qualname__, "__module__": cls.__module__})
    return _SPIES[cls]


@contextmanager
def _spying(modules: dict[str, nn.Module]) -> Iterator[dict[str, _Record]]:
    records = {name: _Record() for name in modules}
    classes = {name: type(m) for name, m in modules.items()}
    try:
        for name, m in modules.items():
            _ACTIVE[id(m)] = records[name]
            m.__class__ = _spy(classes[name])
        yield records
    finally:
        for name, m in modules.items():
            m.__class__ = classes[name]
            _ACTIVE.pop(id(m), None)


def probe_input(model: nn.Module, example_input: Any = None,
                input_shape: Sequence[int] | None = None) -> tuple[tuple, dict[str, Any], str, bool] | None:
    """``(args, kwargs, description, given)`` for the probe forward, or None when no input is known
    (the user's input, else what the model's metadata gives: :mod:`lrdlab.lowrank.probe_inputs`)."""
    if example_input is not None and input_shape is not None:
        raise ValueError("pass example_input= or input_shape=, not both")
    if example_input is not None:
        if isinstance(example_input, dict):
            return (), dict(example_input), "example_input", True
        args = tuple(example_input) if isinstance(example_input, tuple) else (example_input,)
        return args, {}, "example_input", True
    if input_shape is not None:
        shape = tuple(input_shape)
        if not shape or not all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in shape):
            raise ValueError(f"input_shape must be positive ints, e.g. (1, 3, 224, 224) (got {input_shape!r})")
        return (random_input(model, shape),), {}, f"input_shape {list(shape)}", True
    found = inferred_input(model)
    return None if found is None else (found.args, found.kwargs, found.source, False)


_CACHE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _signature(model: nn.Module, where: str) -> tuple:
    return (where, tuple((n, id(m), type(m)) for n, m in model.named_modules()))


@torch.no_grad()
def probe(model: nn.Module, modules: dict[str, nn.Module], example_input: Any = None,
          input_shape: Sequence[int] | None = None) -> tuple[dict[str, _Record] | None, str]:
    """Run the probe forward: ``({name: calls and outside reads}, note)``, or ``(None, why not)``."""
    found = probe_input(model, example_input, input_shape)
    if found is None:
        return None, ("not probed: no input known; pass Layers(input_shape=...) or Layers(example_input=...) so "
                      "layers the forward never calls are kept")
    args, kwargs, where, given = found
    if any(isinstance(p, nn.parameter.UninitializedParameter) for p in model.parameters()):
        return None, "not probed: the model has lazy layers not materialised yet (run a forward first)"
    key = _signature(model, where) if example_input is None else None
    cached = _CACHE.get(model)
    if key is not None and cached is not None and cached[0] == key and set(cached[1]) >= set(modules):
        return {n: cached[1][n] for n in modules}, cached[2]
    training = {m: m.training for m in model.modules()}
    try:
        model.eval()
        with torch.random.fork_rng(devices=[]), _spying(modules) as records:
            model(*args, **kwargs)
    except Exception as err:  # noqa: BLE001 - any failure of the user's forward is reported, never swallowed silently
        if given:
            raise ValueError(f"the probe forward on {where} failed ({type(err).__name__}: {err}); give the input "
                             f"the model takes as Layers(example_input=...)") from err
        return None, f"not probed: the forward on {where} failed ({type(err).__name__}); pass example_input="
    finally:
        for m, mode in training.items():
            m.training = mode
    note = f"probed on {where}"
    if key is not None:
        _CACHE[model] = (key, records, note)
    return records, note


NOT_CALLED_READ = ("kept: never called in the probe forward: the model reads its .weight directly (e.g. F.linear(x, "
                   "layer.weight)), so factors would be multiplied back on every forward")
NOT_CALLED = "kept: not called in the probe forward (eval mode; e.g. a training-only branch)"
READ_OUTSIDE = ("kept: the model reads its .weight outside its forward (e.g. weight.dtype), and a decomposed "
                "layer's weight is multiplied out on every read")


def _why(record: _Record) -> str | None:
    if record.calls == 0:
        return NOT_CALLED_READ if record.reads else NOT_CALLED
    return READ_OUTSIDE if record.reads else None


def _forward_source(cls: type[nn.Module]) -> tuple[str, str]:
    """``(source of cls.forward, its first parameter's name)``; empty when the source is not available."""
    try:
        forward = cls.forward
        own = next(iter(inspect.signature(forward).parameters), "self")
        return inspect.getsource(forward), own
    except (OSError, TypeError, ValueError):
        return "", "self"


def read_in_source(model: nn.Module, name: str) -> str | None:
    """The class whose ``forward`` source reads ``self.<child>.weight`` of layer ``name`` (a static check for a
    model that could not be probed), or None."""
    parent, _, child = name.rpartition(".")
    try:
        holder = model.get_submodule(parent)
    except AttributeError:
        return None
    source, own = _forward_source(type(holder))
    if re.search(rf"\b{re.escape(own)}\.{re.escape(child)}\.weight\b", source):
        return type(holder).__name__
    return None


def usage_reasons(model: nn.Module, layers: Sequence[tuple[str, nn.Module]], exempt: set[str],
                  example_input: Any = None, input_shape: Sequence[int] | None = None) -> tuple[dict[str, str], str]:
    """``({layer name: why it is kept}, probe note)``; ``exempt`` names (attention projections lrdlab rewrites
    itself) are not probed. Without a probe, layers whose parent's ``forward`` source reads their weight
    (``F.linear(x, self.qkv.weight)``) are kept by a static check, and the note starts with "not probed"."""
    reasons = {name: why.replace("[name]", f"[{name!r}]") for name, m in layers if (why := overridden_forward(m))}
    modules = dict(model.named_modules())
    spied = {n: m for n, m in layers if n not in exempt and modules.get(n) is m and n not in reasons}
    records, note = probe(model, spied, example_input, input_shape)
    for name, record in (records or {}).items():
        if (why := _why(record)) is not None:
            reasons[name] = f"{why}; opt in with Layers(force=[{name!r}])"
    if records is None:
        for name in spied:
            if (owner := read_in_source(model, name)) is not None:
                reasons[name] = (f"kept: not probed, and {owner}.forward reads its .weight directly (a decomposed "
                                 f"layer's weight is multiplied out on every read); give an input, "
                                 f"Layers(example_input=...), or opt in with Layers(force=[{name!r}])")
    return reasons, note
