"""Block-wise calibration of a stack of repeated blocks (a transformer's decoder layers), as GPTQ and SVD-LLM do.

A language model runs its blocks one after another from a ``ModuleList``, each called with the previous block's
hidden states and keyword arguments (attention mask, position embeddings, ...) that :mod:`calibration_walk`'s
chains cannot follow. Here the network runs once, up to the last block, and a forward pre-hook on every block
captures its positional and keyword inputs (:func:`capture_stack`). :func:`calibrate_stack` then works block by
block on the captured inputs: the block's planned layers are fitted group by group in the order they run (layers
that take the very same input tensor, q/k/v or gate/up, form one group and share one set of moments), only that
block rerunning for each group, and the block's outputs are carried forward as the next block's inputs, in the
original network (for ``"corrected"`` and ``"one-shot"``) and in the decomposed one (``"corrected"``,
``"sequential"``). The cost is a fixed number of model passes whatever the depth; float64 moments exist only for
the group being fitted.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from lrdlab.lowrank.calibration_fit import Moments, feed


@dataclass(frozen=True)
class Stack:
    """A ``ModuleList`` of blocks of one type (``path``) and its blocks' paths, in order."""

    path: str
    blocks: tuple[str, ...]

    def holds(self, name: str) -> bool:
        """Whether the layer ``name`` sits inside one of the blocks."""
        return any(_inside(b, name) for b in self.blocks)


@dataclass
class BlockCall:
    """One block's inputs for one batch, without its hidden states: where they go (``slot``: an argument's
    position or a keyword's name), the other positional arguments and the keyword arguments."""

    slot: int | str
    args: tuple
    kwargs: dict[str, Any]

    def run(self, block: nn.Module, hidden: Tensor) -> Any:
        if isinstance(self.slot, int):
            args = (*self.args[:self.slot], hidden, *self.args[self.slot:])
            return block(*args, **self.kwargs)
        return block(*self.args, **{**self.kwargs, self.slot: hidden})


@dataclass
class Captured:
    """The stack's inputs for one batch: the first block's hidden states and every block's other inputs."""

    hidden: Tensor
    calls: list[BlockCall] = field(default_factory=list)


class _Stop(Exception):
    """Ends a forward pass once what was needed has been seen."""


def _inside(path: str, name: str) -> bool:
    return name == path or name.startswith(f"{path}.")


def find_stack(model: nn.Module, names: Sequence[str]) -> Stack | None:
    """The ``ModuleList`` of two or more blocks of one type that holds the most planned layers ``names``."""
    best: tuple[int, int, Stack] | None = None
    for path, module in model.named_modules():
        if not isinstance(module, nn.ModuleList) or len(module) < 2 or len({type(m) for m in module}) > 1:
            continue
        blocks = tuple(f"{path}.{i}" if path else str(i) for i in range(len(module)))
        held = sum(any(_inside(b, n) for b in blocks) for n in names)
        if held and (best is None or (held, -path.count(".")) > best[:2]):
            best = (held, -path.count("."), Stack(path, blocks))
    return best[2] if best else None


def hidden_of(output: Any) -> Tensor | None:
    """A block's output hidden states: the output itself or its first element."""
    if isinstance(output, Tensor):
        return output
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], Tensor):
        return output[0]
    return None


def _is_cache(value: Any) -> bool:
    return any(c.__name__.endswith("Cache") for c in type(value).__mro__)


def _split(args: tuple, kwargs: dict) -> tuple[Tensor, BlockCall] | None:
    """The hidden states (first positional argument, else ``hidden_states=``) and the rest of a block call.

    A key/value cache is left out (the blocks rerun, and must not append to it)."""
    kw = {k: (None if _is_cache(v) else v) for k, v in kwargs.items()}
    if "use_cache" in kw:
        kw["use_cache"] = False
    if args and isinstance(args[0], Tensor):
        return args[0], BlockCall(0, tuple(None if _is_cache(a) else a for a in args[1:]), kw)
    hidden = kw.pop("hidden_states", None)
    if isinstance(hidden, Tensor):
        return hidden, BlockCall("hidden_states", tuple(args), kw)
    return None


@contextmanager
def _no_cache(model: nn.Module):
    """Hugging Face models run without building a key/value cache."""
    config = getattr(model, "config", None)
    saved = getattr(config, "use_cache", None)
    if saved:
        config.use_cache = False  # type: ignore[union-attr]
    try:
        yield
    finally:
        if saved:
            config.use_cache = saved  # type: ignore[union-attr]


@torch.no_grad()
def capture_stack(model: nn.Module, stack: Stack, xs: list) -> list[Captured] | None:
    """Every block's inputs for each batch of ``xs``, from one pass of ``model`` up to its last block.

    None where the blocks do not run as a chain: each block once, in order, each taking the hidden states the
    previous one returned."""
    blocks = [model.get_submodule(p) for p in stack.blocks]
    out: list[Captured] = []
    state: dict[str, Any] = {}

    def before(i: int) -> Callable:
        def hook(mod: nn.Module, args: tuple, kwargs: dict) -> None:
            split = _split(args, kwargs)
            if split is None or state["next"] != i or (i and split[0] is not state["handed"]):
                state["broken"] = True
                raise _Stop
            if i == 0:
                state["got"] = Captured(split[0])
            state["got"].calls.append(split[1])
            state["next"] = i + 1
            if i == len(blocks) - 1:
                raise _Stop
        return hook

    def after(i: int) -> Callable:
        def hook(mod: nn.Module, args: tuple, output: Any) -> None:
            state["handed"] = hidden_of(output)
        return hook

    handles = [b.register_forward_pre_hook(before(i), with_kwargs=True) for i, b in enumerate(blocks)]
    handles += [b.register_forward_hook(after(i)) for i, b in enumerate(blocks)]
    try:
        with _no_cache(model):
            for x in xs:
                state.update(next=0, broken=False, handed=None, got=None)
                try:
                    feed(model, x)
                except _Stop:
                    pass
                if state["broken"] or state["next"] != len(blocks):
                    return None
                out.append(state["got"])
    finally:
        for h in handles:
            h.remove()
    return out


def shared_copy(module: nn.Module, share: Callable[[nn.Parameter], bool] = lambda p: True) -> nn.Module:
    """A deep copy of ``module`` that shares (does not copy) the parameters ``share`` picks: a frozen reference
    costs its structure and buffers only, as long as nobody changes those parameters in place."""
    memo = {id(p): p for p in module.parameters() if share(p)}
    return copy.deepcopy(module, memo)


def planned_only(model: nn.Module, names: list[str]) -> Callable[[nn.Parameter], bool]:
    """Whether a parameter belongs to the planned layers ``names`` only (they are replaced, not changed, so a
    :func:`shared_copy` may share it; a tied parameter that another module also holds is copied)."""
    owners: dict[int, set[str]] = {}
    for path, module in model.named_modules(remove_duplicate=False):
        for p in module.parameters(recurse=False):
            owners.setdefault(id(p), set()).add(path)
    planned = set(names)
    return lambda p: owners.get(id(p), {""}) <= planned


@dataclass
class StackFit:
    """What :func:`calibrate_stack` works on: the network being decomposed, its mode, and ``fit(name, moments)``
    that replaces a layer of ``work``."""

    work: nn.Module
    mode: str
    fit: Callable[[str, Moments], None]


@torch.no_grad()
def calibrate_stack(job: StackFit, stack: Stack, names: list[str], captured: list[Captured]) -> None:
    """Fit the planned layers ``names`` (in run order, all inside ``stack``) block by block."""
    calls = [[c.calls[i] for c in captured] for i in range(len(stack.blocks))]
    work_in: list[Tensor] | None = None if job.mode == "one-shot" else [c.hidden for c in captured]
    ref_in: list[Tensor] | None = None if job.mode == "sequential" else [c.hidden for c in captured]
    last = max(i for i, p in enumerate(stack.blocks) if any(_inside(p, n) for n in names))
    for i, path in enumerate(stack.blocks[:last + 1]):
        block = job.work.get_submodule(path)
        inside = [n[len(path) + 1:] for n in names if _inside(path, n)]
        ref_seen: dict[str, list[Tensor]] | None = None
        if ref_in is not None:  # the block as it was, on the original network's inputs: one pass, before any fit
            if job.mode == "one-shot":
                stats = {n: Moments() for n in inside}
                ref_in = _run_watched(block, inside, ref_in, calls[i],
                                      _accumulate(stats, len(captured)))
                for name in inside:
                    job.fit(f"{path}.{name}", stats[name])
                continue
            ref_seen = {n: [] for n in inside}
            ref_in = _run_watched(block, inside, ref_in, calls[i],
                                  _keep(ref_seen))
        assert work_in is not None
        left = inside
        while left:
            group, moments = _group_moments(block, left, work_in, calls[i], ref_seen)
            for name in group:
                job.fit(f"{path}.{name}", moments)
            left = [n for n in left if n not in group]
        if i < last:
            work_in = [_hidden(call.run(block, h)) for h, call in zip(work_in, calls[i])]


@torch.no_grad()
def stack_moments(model: nn.Module, stack: Stack, names: list[str],
                  captured: list[Captured]) -> Iterator[tuple[str, dict[str, Moments]]]:
    """Block by block, in order, each block's path and the input moments of its planned layers ``names`` on the
    original network (``model`` as it is), from the captured inputs carried forward: one run of each block per
    batch. Layers that take the very same input tensors on every batch (q/k/v, gate/up) share one
    :class:`Moments`; a layer that never ran is left out. Only one block's moments exist at a time, as long as
    the caller lets each block's go before asking for the next."""
    calls = [[c.calls[i] for c in captured] for i in range(len(stack.blocks))]
    hidden = [c.hidden for c in captured]
    held = [i for i, p in enumerate(stack.blocks) if any(_inside(p, n) for n in names)]
    for i, path in enumerate(stack.blocks[:held[-1] + 1] if held else ()):
        inside = [n[len(path) + 1:] for n in names if _inside(path, n)]
        hidden, stats = _shared_moments(model.get_submodule(path), inside, hidden, calls[i])
        out = {f"{path}.{n}": m for n, m in stats.items()}
        del stats
        yield path, out
        del out


def _shared_moments(block: nn.Module, names: list[str], inputs: list[Tensor],
                    calls: list[BlockCall]) -> tuple[list[Tensor], dict[str, Moments]]:
    """``block``'s outputs on ``inputs`` and its layers' ``names`` input moments (every call of a layer counted,
    layers given the same tensors on every batch sharing one :class:`Moments`)."""
    seen: dict[str, list[Tensor]] = {}
    moments: dict[str, Moments] = {}
    owner: dict[str, str] = {}  # layer -> the layer whose moments it shares (itself if its own)
    handles = [block.get_submodule(n).register_forward_pre_hook(  # the tensors themselves: shared ones are the same
        lambda mod, args, n=n: seen.setdefault(n, []).append(args[0])) for n in names]
    outputs = []
    try:
        for b, (h, call) in enumerate(zip(inputs, calls)):
            seen.clear()
            outputs.append(_hidden(call.run(block, h)))
            _add_batch(block, seen, moments, owner, first=b == 0, batches=len(inputs))
    finally:
        for handle in handles:
            handle.remove()
    return outputs, {n: moments[o] for n, o in owner.items()}


def _add_batch(block: nn.Module, seen: dict[str, list[Tensor]], moments: dict[str, Moments], owner: dict[str, str],
               first: bool, batches: int) -> None:
    """Add one batch's layer inputs ``seen`` (in run order) to the moments; a layer whose inputs are no longer
    its owner's gets a copy of the shared sums first."""
    def same(a: str, b: str) -> bool:
        xs, ys = seen.get(a), seen.get(b)
        return (xs is not None and ys is not None and len(xs) == len(ys) and all(x is y for x, y in zip(xs, ys))
                and type(block.get_submodule(a)) is type(block.get_submodule(b)))

    for name, own in list(owner.items()):
        if own != name and not same(name, own):  # split off, with the sums of the batches it did share
            moments[name], owner[name] = copy.deepcopy(moments[own]), name
    for name in seen:
        if name not in owner:
            own = next(n for n in seen if same(n, name)) if first else name
            owner[name] = own
            if own == name:
                moments[name] = Moments()
    for name, xs in seen.items():
        if owner[name] == name:
            module = block.get_submodule(name)
            for x in xs:
                moments[name].add(module, x.detach(), batches=batches)


def _hidden(output: Any) -> Tensor:
    hidden = hidden_of(output)
    assert hidden is not None  # capture_stack checked that the blocks hand hidden states on
    return hidden


Seen = Callable[[str, int, nn.Module, Tensor], None]  # (layer name, batch index, layer, its input)


def _accumulate(stats: dict[str, Moments], batches: int) -> Seen:
    def seen(name: str, b: int, layer: nn.Module, x: Tensor) -> None:
        stats[name].add(layer, x, batches=batches)
    return seen


def _keep(store: dict[str, list[Tensor]]) -> Seen:
    def seen(name: str, b: int, layer: nn.Module, x: Tensor) -> None:
        if len(store[name]) == b:  # a layer that runs twice in a block: its first input
            store[name].append(x)
    return seen


def _run_watched(block: nn.Module, names: list[str], inputs: list[Tensor], calls: list[BlockCall],
                 seen: Seen) -> list[Tensor]:
    """``block``'s outputs on ``inputs``, with ``seen(name, batch, layer, x)`` called on each named layer's input."""
    batch = [0]
    handles = [block.get_submodule(n).register_forward_pre_hook(
        lambda mod, args, n=n: seen(n, batch[0], mod, args[0].detach())) for n in names]
    outputs = []
    try:
        for b, (h, call) in enumerate(zip(inputs, calls)):
            batch[0] = b
            outputs.append(_hidden(call.run(block, h)))
    finally:
        for handle in handles:
            handle.remove()
    return outputs


def _run_until(block: nn.Module, names: list[str], hidden: Tensor, call: BlockCall,
               members: list[str] | None) -> dict[str, Tensor]:
    """The inputs of the first group of ``names`` (layers taking the very input the first of them takes) when
    ``block`` runs; with ``members`` given, the inputs of those layers. The block stops once they are seen."""
    seen: dict[str, Tensor] = {}

    def hook(name: str) -> Callable:
        def pre(mod: nn.Module, args: tuple) -> None:
            x = args[0] if args and isinstance(args[0], Tensor) else None
            first = next(iter(seen.values()), None)
            joins = (name in members) if members is not None else (
                x is not None and (first is None or (x is first and type(mod) is type(block.get_submodule(
                    next(iter(seen)))))))
            if not joins or x is None:
                raise _Stop
            seen.setdefault(name, x.detach())
            done = set(members) if members is not None else {names[-1]}
            if done <= set(seen) or name == names[-1]:
                raise _Stop
        return pre

    handles = [block.get_submodule(n).register_forward_pre_hook(hook(n)) for n in names]
    try:
        call.run(block, hidden)
    except _Stop:
        pass
    finally:
        for h in handles:
            h.remove()
    return seen


def _group_moments(block: nn.Module, names: list[str], work_in: list[Tensor], calls: list[BlockCall],
                   ref_seen: dict[str, list[Tensor]] | None) -> tuple[list[str], Moments]:
    """The first group of ``names`` in ``block`` and its moments over all batches (cross-moments with the
    original network's inputs ``ref_seen`` of each layer and batch, where given)."""
    moments = Moments()
    group: list[str] | None = None
    for b, (hidden, call) in enumerate(zip(work_in, calls)):
        seen = _run_until(block, names, hidden, call, group)
        if group is None:
            group = list(seen)
            if not group:
                raise ValueError(f"layer {names[0]!r} did not run on its block's calibration inputs")
        if not seen:
            continue
        x_hat = next(iter(seen.values()))
        x_ref = None
        if ref_seen is not None:
            refs = ref_seen[group[0]]
            if b >= len(refs):
                continue
            x_ref = refs[b]
        moments.add(block.get_submodule(group[0]), x_hat, x_ref, len(work_in))
    assert group is not None
    return group, moments
