"""The walk of a calibrated decomposition: which part of the network reruns to fit each layer.

A layer's fit needs its inputs in the network decomposed so far, so the layers are fitted in the order they run
and each fit reruns the network up to that layer, unless the inputs can be cached. A *chain* is a module whose
first children run one after another, each on the previous one's output: a plain ``nn.Sequential``, torchvision's
``IntermediateLayerGetter`` (DeepLab's backbone), the stem of most models' ``forward``. :func:`probe` finds the
chains in one forward pass, by the identity of the tensor each child hands to the next. :func:`fit_layers` caches
the inputs of a chain's children and moves them on child by child, descending into nested chains, so a layer's
fit reruns only the innermost module that holds it, and the whole network runs about once per part that sits
outside every chain (DeepLab's head), not once per layer.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from lrdlab.lowrank.calibration_fit import Moments, capture_input, feed, layer_moments


@dataclass
class Probe:
    """One forward pass, watched: the planned layers in the order they first ran, and the chains.

    ``chains`` maps a module's path (``""``: the model) to its children that ran as a chain, in order.
    """

    order: list[str]
    chains: dict[str, tuple[str, ...]]


@dataclass
class _Call:
    """One call of a watched module, kept as numbers only (the probe holds no activations)."""

    start: int  # its place in the log of calls; ``end``: the log's length when it returned
    single: bool  # called with one positional tensor and nothing else
    linked: bool  # that tensor is the one its parent's input or previous child's output was, unchanged
    entered: int  # the input's version counter on entry and on return (an in-place change shows)
    left: int = -1
    end: int = -1


def _ancestors(names: list[str]) -> set[str]:
    out = {""}
    for name in names:
        parts = name.split(".")
        out |= {".".join(parts[:i]) for i in range(1, len(parts))}
    return out


def _join(path: str, child: str) -> str:
    return f"{path}.{child}" if path else child


def _parent(path: str) -> str | None:
    return None if not path else path.rsplit(".", 1)[0] if "." in path else ""


def _single(args: tuple, kwargs: dict) -> Tensor | None:
    return args[0] if len(args) == 1 and not kwargs and isinstance(args[0], Tensor) else None


def _chain(path: str, calls: dict[str, list[_Call]], log: list[tuple[str, _Call]],
           planned: set[str]) -> tuple[str, ...]:
    """The children of ``path`` that ran as a chain: the longest run of calls, each child once, in which the first
    child takes the module's one input tensor and every next child the tensor the previous one returned, unchanged.

    A child that changes its input in place ends the chain if it is the first or holds a planned layer: its
    cached inputs would change under it (later children, e.g. ``ReLU(inplace=True)``, only run once each).
    """
    own = calls.get(path, [])
    if len(own) != 1 or not own[0].single:
        return ()
    chain: list[str] = []
    for child, kid in log[own[0].start + 1:own[0].end]:
        if _parent(child) != path:
            continue
        name = child.rsplit(".", 1)[-1]
        mutates = kid.left != kid.entered and (not chain or any(_inside(child, n) for n in planned))
        if not (kid.single and kid.linked) or name in chain or mutates:
            break
        chain.append(name)
    return tuple(chain)


@torch.no_grad()
def probe(model: nn.Module, names: list[str], x: Any) -> Probe:
    """Run ``model`` once on ``x`` and watch the planned layers ``names`` and every module that holds one."""
    ancestors, planned = _ancestors(names), set(names)
    modules = dict(model.named_modules())
    watched = {p for p in modules if p in ancestors or _parent(p) in ancestors}
    log: list[tuple[str, _Call]] = []
    calls: dict[str, list[_Call]] = {}
    handed: dict[str, tuple[Callable[[], Tensor | None], int]] = {}  # parent -> the tensor its next child must take

    def before(path: str) -> Callable:
        def hook(mod: nn.Module, args: tuple, kwargs: dict) -> None:
            arg = _single(args, kwargs)
            parent = _parent(path)
            ref, version = handed.get(parent, (lambda: None, -1)) if parent is not None else (lambda: None, -1)
            call = _Call(len(log), arg is not None, arg is not None and ref() is arg and arg._version == version,
                         arg._version if arg is not None else -1)
            log.append((path, call))
            calls.setdefault(path, []).append(call)
            handed[path] = (weakref.ref(arg), arg._version) if arg is not None else (lambda: None, -1)
        return hook

    def after(path: str) -> Callable:
        def hook(mod: nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
            call = calls[path][-1]
            arg = _single(args, kwargs)
            call.end, call.left = len(log), arg._version if arg is not None else -1
            parent = _parent(path)
            if parent is not None:
                handed[parent] = ((weakref.ref(output), output._version) if isinstance(output, Tensor)
                                  else (lambda: None, -1))
        return hook

    handles = []
    try:
        for path in sorted(watched):
            handles.append(modules[path].register_forward_pre_hook(before(path), with_kwargs=True))
            handles.append(modules[path].register_forward_hook(after(path), with_kwargs=True))
        feed(model, x)
    finally:
        for h in handles:
            h.remove()
    order = list(dict.fromkeys(p for p, _ in log if p in planned))
    chains = {p: c for p in ancestors if p in modules and (c := _chain(p, calls, log, planned))}
    return Probe(order, chains)


def _inside(path: str, name: str) -> bool:
    return not path or name == path or name.startswith(f"{path}.")


@torch.no_grad()
def captured_inputs(model: nn.Module, module: nn.Module, xs: list) -> list[Tensor] | None:
    """``module``'s input tensor for each batch when ``model`` runs on ``xs``; None if it is not one tensor."""
    got = [capture_input(model, module, x) for x in xs]
    return [g for g in got if g is not None] if all(g is not None for g in got) else None


@dataclass
class Walk:
    """What :func:`fit_layers` works on: the network being decomposed, the original one (None: no cross-moments),
    the chains of a :class:`Probe`, and ``fit(name, moments)`` that replaces a layer.

    ``settle(module, inputs)`` (progressive BN) runs after each fit on the module ``scope(name)`` names; inside
    that module each layer is fitted by rerunning the module itself, so later layers see the settled statistics.
    """

    work: nn.Module
    reference: nn.Module | None
    chains: dict[str, tuple[str, ...]]
    fit: Callable[[str, Moments], None]
    scope: Callable[[str], str | None] = lambda name: None
    settle: Callable[[nn.Module, list], None] | None = None
    _failed: set[str] = field(default_factory=set, init=False, repr=False)  # chains whose inputs are no tensor


@dataclass
class _At:
    """A module of the network (``path``) and its inputs, cached, in the decomposed and in the original network."""

    path: str
    inputs: list
    ref_inputs: list | None


def fit_layers(walk: Walk, names: list[str], xs: list) -> None:
    """Fit the planned layers ``names`` (in the order they run) on the calibration batches ``xs``."""
    _fit_under(walk, _At("", xs, xs if walk.reference is not None else None), names)


def _fit_under(walk: Walk, at: _At, names: list[str]) -> None:
    """Fit ``names``, layers inside the module at ``at.path``, from that module's cached inputs."""
    if walk.settle is not None and any(walk.scope(n) == at.path for n in names):
        for name in names:  # progressive BN: rerun the scope for each layer, as its statistics move
            _fit_one(walk, at, name)
        return
    names = _walk_chain(walk, at, list(names))
    while names:
        name = names[0]
        sub = _outer_chain(walk, at.path, name)
        inner = _capture(walk, at, sub) if sub is not None else None
        if inner is None:
            _fit_one(walk, at, name)
            names.pop(0)
            continue
        inside = [n for n in names if _inside(inner.path, n)]
        _fit_under(walk, inner, inside)
        names = [n for n in names if n not in inside]


def _walk_chain(walk: Walk, at: _At, names: list[str]) -> list[str]:
    """Fit the layers inside the chain children of ``at`` child by child; returns the layers left."""
    children = [_join(at.path, c) for c in walk.chains.get(at.path, ())]
    inputs, ref_inputs = at.inputs, at.ref_inputs
    for i, path in enumerate(children):
        inside = [n for n in names if _inside(path, n)]
        if inside:
            _fit_under(walk, _At(path, inputs, ref_inputs), inside)
            names = [n for n in names if n not in inside]
        if not any(_inside(later, n) for later in children[i + 1:] for n in names):
            break
        inputs = [feed(walk.work.get_submodule(path), x) for x in inputs]
        if walk.reference is not None and ref_inputs is not None:
            ref_inputs = [feed(walk.reference.get_submodule(path), x) for x in ref_inputs]
    return names


def _outer_chain(walk: Walk, path: str, name: str) -> str | None:
    """The outermost chain strictly inside the module ``path`` that holds layer ``name`` (not the layer itself)."""
    parts = name.split(".")
    start = path.count(".") + 2 if path else 1
    for depth in range(start, len(parts)):
        sub = ".".join(parts[:depth])
        if sub in walk.chains and sub not in walk._failed:
            return sub
    return None


def _capture(walk: Walk, at: _At, sub: str) -> _At | None:
    """The chain ``sub``'s inputs, from one run of the module at ``at`` (None if they are not one tensor)."""
    got = captured_inputs(walk.work.get_submodule(at.path), walk.work.get_submodule(sub), at.inputs)
    ref_got = None
    if walk.reference is not None and at.ref_inputs is not None:
        ref_got = captured_inputs(walk.reference.get_submodule(at.path), walk.reference.get_submodule(sub),
                                  at.ref_inputs)
    if got is None or (walk.reference is not None and ref_got is None):
        walk._failed.add(sub)
        return None
    return _At(sub, got, ref_got)


def _fit_one(walk: Walk, at: _At, name: str) -> None:
    """Fit one layer from the moments of its inputs when the module at ``at`` reruns on its cached inputs."""
    ref = None
    if walk.reference is not None and at.ref_inputs is not None:
        ref = (walk.reference.get_submodule(at.path), walk.reference.get_submodule(name), at.ref_inputs)
    walk.fit(name, layer_moments(walk.work.get_submodule(at.path), walk.work.get_submodule(name), at.inputs, ref))
    if walk.settle is not None and walk.scope(name) == at.path:
        walk.settle(walk.work.get_submodule(at.path), at.inputs)
