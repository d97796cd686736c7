"""The input shape each layer of a model really receives, found by one forward pass."""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
from torch import nn

from lrdlab.lowrank.plan import named_layers
from lrdlab.measure import timing as measure

INPUT_OF = {"q_proj": 0, "k_proj": 1, "v_proj": 2, "out_proj": 0}  # an MHA projection's input (forward arg)


# --- inputs of layers --------------------------------------------------------------------------------


def layer_input_shapes(model: nn.Module, names: Sequence[str], example_input_shape: Sequence[int]) -> dict:
    """The input shape each named layer sees on an example input (forward hooks; meta device, no compute).

    An ``nn.MultiheadAttention``'s projections (used by weight, never called) see its query/key/value input.
    """
    shape = measure.check_shape(example_input_shape, "example_input_shape")
    seen: dict[str, tuple[int, ...]] = {}

    def run(net: nn.Module, x: torch.Tensor) -> None:
        hooks = []
        modules = named_layers(net)
        for name in names:
            parent, _, child = name.rpartition(".")
            if child in INPUT_OF and isinstance(modules.get(parent), nn.MultiheadAttention):
                # used by weight, never called: q/k/v see the query/key/value, out_proj a query-shaped input
                i = INPUT_OF[child]

                def attn_hook(mod, args, kwargs, name=name, i=i):
                    x = args[i] if len(args) > i else kwargs[("query", "key", "value")[i]]
                    seen.setdefault(name, tuple(x.shape))
                hooks.append(modules[parent].register_forward_pre_hook(attn_hook, with_kwargs=True))
                continue

            def hook(mod, args, name=name):
                seen.setdefault(name, tuple(args[0].shape))
            hooks.append(net.get_submodule(name).register_forward_pre_hook(hook))
        try:
            with torch.no_grad():
                net.eval()(x)
        finally:
            for h in hooks:
                h.remove()

    try:
        run(copy.deepcopy(model).to("meta"), torch.empty(shape, device="meta"))
    except (NotImplementedError, RuntimeError, ValueError):  # an op without a meta kernel (or a bad shape): for real
        seen.clear()
        try:
            run(copy.deepcopy(model).cpu(), torch.randn(shape))
        except (RuntimeError, ValueError) as err:
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise ValueError(f"the model does not run on example_input_shape={shape} ({first}); does it lack the "
                             f"batch dimension? e.g. {(1, *shape)}") from err
    missing = [n for n in names if n not in seen]
    if missing:
        raise ValueError(f"layers {missing[:3]} were not called on an input of shape {shape}; "
                         f"they cannot be timed (unused layers: exclude them from the plan)")
    return seen
