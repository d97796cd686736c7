"""Freezing the factors of decomposed layers while fine-tuning (paper §3).

Everything per layer comes from its method object (:mod:`lrdlab.lowrank.methods`): the factor names, the
factor regular freezing trains (``regular_factor``) and the default rotation (``sequential_order``).

- ``regular`` (P1): in each :class:`~lrdlab.lowrank.layers.LowRankLayer` train only the method's regular factor
  (``core`` of Tucker-2, ``last`` of SVD and channel-SVD) and freeze the other factors, for the whole run.
- ``sequential`` (P2; its schedule is not published — this is lrdlab's reading): at any time exactly
  one factor of each decomposed layer is trainable, and which one rotates every ``period`` units of
  training progress (epochs or iterations). Phase ``p = floor(progress / period)`` trains factor
  ``order[p mod len(order)]``. Default order: the method's (SVD ``last → first``, Tucker-2
  ``core → first → last``). Every layer switches at the same moment.
- ``none``: every factor trainable (plain fine-tuning).

Transformers: attention projections (``q_proj``/``k_proj``/``v_proj``/``out_proj`` of
:class:`~lrdlab.lowrank.attention.FactorizedMultiheadAttention`), MLP Linears and HF ``Conv1D`` are SVD
layers and follow the SVD rule: regular trains ``last`` (U√Σ, with the bias; the input subspace √ΣVᵀ of
the pretrained weight stays fixed), sequential rotates ``last → first``, all projections switching together.
LayerNorms, embeddings, the class token and position embeddings are "others" (trainable unless
``freeze_others``).

Non-decomposed layers, biases outside the factors, and BatchNorm stay trainable (``freeze_others``
freezes them too). A factor is frozen as a whole (``last`` with its bias). Frozen parameters get
``requires_grad=False`` and ``.grad = None``: autograd computes no weight gradient for them, and
SGD / AdamW skip parameters whose gradient is ``None``, so neither weight decay nor momentum moves
them. The phase depends only on ``progress``, so a resumed run lands in the same phase.

Parameters the user froze before building the Freezer stay frozen in every mode and phase. When a
factor becomes trainable again (sequential), its optimizer state (momentum, Adam moments) is dropped so
its first step is a fresh one (``reset_optimizer_state``; ``fit`` attaches its optimizer).
"""

from __future__ import annotations

import numbers
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from lrdlab.lowrank.layers import LowRankLayer
from lrdlab.lowrank.methods import get_method, method_names

MODES = ("none", "regular", "sequential")
_MARK = "_lrdlab_frozen"  # on the model: names of the parameters a Freezer turned off (not the user's)
UNITS = ("epoch", "iteration")


def factor_names() -> set[str]:
    """Every factor name of every registered method (the names an ``order`` may use)."""
    return {n for name in method_names() for n in get_method(name).factor_names}


def low_rank_layers(model: nn.Module) -> list[tuple[str, LowRankLayer]]:
    """The decomposed layers of ``model`` (unwrapping DistributedDataParallel), in module order."""
    model = getattr(model, "module", model)
    return [(name, m) for name, m in model.named_modules() if isinstance(m, LowRankLayer)]


def regular_trainable(layer: LowRankLayer) -> str:
    """The factor regular freezing trains: the method's ``regular_factor`` (``core`` of Tucker-2, else ``last``)."""
    return layer.decomposition.regular_factor


def layer_order(layer: LowRankLayer, order: Sequence[str] | Mapping[str, Sequence[str]] | None) -> tuple[str, ...]:
    """The rotation of factors for one layer: ``order`` by method (mapping), one list for all, or the default."""
    names = layer.factor_names()
    default = layer.decomposition.sequential_order
    if order is None:
        wanted = default
    elif isinstance(order, Mapping):
        wanted = tuple(order.get(layer.method, default))
    elif isinstance(order, str):
        raise ValueError(f"order must be a list of factor names like {list(default)}, not the string {order!r}")
    else:
        wanted = tuple(order)
    known = factor_names()
    unknown = [n for n in wanted if n not in known]
    if unknown:
        raise ValueError(f"unknown factor names {unknown} in order; the methods' factors are {sorted(known)}")
    result = tuple(n for n in wanted if n in names)
    if not result:
        raise ValueError(f"order {wanted} names no factor of a {layer.method} layer (factors {names})")
    return result


class Freezer:
    """Which factors train, driven by training progress; shared by notebooks and :func:`lrdlab.fit`.

    Call :meth:`update` with the progress (completed epochs or iterations, per ``unit``), or
    :meth:`step` to advance by one unit; both apply the phase's ``requires_grad`` settings and return
    whether they changed. ``fit`` calls :meth:`sync` before every batch.

    Parameters the user froze (``requires_grad=False`` when the Freezer is built) stay frozen: the
    Freezer only ever turns off what was trainable. With an optimizer attached
    (:meth:`attach_optimizer`; ``fit`` does it) and ``reset_optimizer_state=True`` (default), a
    parameter that becomes trainable again starts from fresh optimizer state (no momentum or Adam
    moments left from its last trainable phase).
    """

    def __init__(self, model: nn.Module, mode: str = "none", period: int = 1, unit: str = "epoch",
                 order: Sequence[str] | Mapping[str, Sequence[str]] | None = None,
                 freeze_others: bool = False, reset_optimizer_state: bool = True) -> None:
        if mode not in MODES:
            raise ValueError(f"freezing mode must be one of {MODES}, got {mode!r}")
        if unit not in UNITS:
            raise ValueError(f"freezing unit must be one of {UNITS}, got {unit!r}")
        if isinstance(period, bool) or not isinstance(period, numbers.Integral) or period < 1:
            raise ValueError(f"freezing period must be a positive int, got {period!r}")
        if not isinstance(model, nn.Module):
            raise ValueError(f"Freezer needs the model (nn.Module) to freeze, got {type(model).__name__}")
        self.model: nn.Module = model
        self.mode: str = mode
        self.period: int = int(period)
        self.unit: str = unit
        self.freeze_others: bool = freeze_others
        self.reset_optimizer_state: bool = reset_optimizer_state
        self.layers: list[tuple[str, LowRankLayer]] = low_rank_layers(model)
        if mode != "none" and not self.layers:
            raise ValueError(f"freezing mode {mode!r} needs a decomposed model (no LowRankLayer found); "
                             "decompose it first or use mode='none'")
        self.orders: dict[str, tuple[str, ...]] = {name: layer_order(layer, order) for name, layer in self.layers}
        self.progress: int = 0
        self._phase: int | None = None
        ours = set(getattr(self._root(), _MARK, ()))  # what an earlier Freezer turned off is not the user's
        self._user_frozen: set[str] = {n for n, p in self._root().named_parameters()
                                       if not p.requires_grad and n not in ours}
        self._optimizer: torch.optim.Optimizer | None = None
        self.apply()

    def _root(self) -> nn.Module:
        root: nn.Module = getattr(self.model, "module", self.model)
        return root

    def attach_optimizer(self, optimizer: torch.optim.Optimizer | None) -> None:
        """The optimizer whose state is reset for parameters that become trainable again (see the class doc)."""
        self._optimizer = optimizer

    # --- schedule --------------------------------------------------------------------------------
    @property
    def phase(self) -> int:
        """The current phase: ``progress // period`` for sequential, 0 otherwise."""
        return self.progress // self.period if self.mode == "sequential" else 0

    def trainable_factors(self, phase: int | None = None) -> dict[str, tuple[str, ...]]:
        """For each decomposed layer, the factor names trainable in ``phase`` (default: now)."""
        phase = self.phase if phase is None else phase
        out = {}
        for name, layer in self.layers:
            if self.mode == "none":
                out[name] = tuple(layer.factor_names())
            elif self.mode == "regular":
                out[name] = (regular_trainable(layer),)
            else:
                order = self.orders[name]
                out[name] = (order[phase % len(order)],)
        return out

    def apply(self) -> None:
        """Set ``requires_grad`` (and drop gradients) as the current phase says; user-frozen parameters stay frozen."""
        wanted: dict[int, bool] = {}
        trainable = self.trainable_factors()
        for name, layer in self.layers:
            for factor_name, factor in layer.named_children():
                for p in factor.parameters():
                    wanted[id(p)] = factor_name in trainable[name]
        turned_off = []
        for name, p in self._root().named_parameters():
            on = wanted.get(id(p), not self.freeze_others) and name not in self._user_frozen
            if on and not p.requires_grad and self._optimizer is not None and self.reset_optimizer_state:
                self._optimizer.state.pop(p, None)
            p.requires_grad_(on)
            if not on:
                p.grad = None
                if name not in self._user_frozen:
                    turned_off.append(name)
        setattr(self._root(), _MARK, turned_off)  # a plain attribute: survives deepcopy, unlike one on a tensor
        self._phase = self.phase

    def update(self, progress: int) -> bool:
        """Set the progress (completed units) and apply its phase; True when the trainable set changed."""
        if progress < 0:
            raise ValueError(f"progress must be >= 0, got {progress}")
        self.progress = int(progress)
        if self.phase == self._phase:
            return False
        self.apply()
        return True

    def step(self, n: int = 1) -> bool:
        """Advance by ``n`` units (epochs or iterations, per ``unit``)."""
        return self.update(self.progress + n)

    def sync(self, epoch: int, iteration: int) -> bool:
        """Follow the training loop: ``epoch`` completed epochs, ``iteration`` completed optimizer steps."""
        return self.update(epoch if self.unit == "epoch" else iteration)

    # --- reading ---------------------------------------------------------------------------------
    def counts(self) -> dict[str, int]:
        """Trainable and frozen parameter counts of the whole model right now."""
        params = list(self._root().parameters())
        trainable = sum(p.numel() for p in params if p.requires_grad)
        return {"trainable": trainable, "frozen": sum(p.numel() for p in params) - trainable}

    def state_dict(self) -> dict[str, Any]:
        return {"mode": self.mode, "period": self.period, "unit": self.unit, "progress": self.progress}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        for key in ("mode", "period", "unit"):
            if state[key] != getattr(self, key):
                raise ValueError(f"checkpoint was trained with freezing {key}={state[key]!r}, not "
                                 f"{getattr(self, key)!r}; use the same freezing settings to resume")
        self._phase = None
        self.update(state["progress"])

    def __repr__(self) -> str:
        extra = f", period={self.period}, unit={self.unit!r}" if self.mode == "sequential" else ""
        return f"Freezer(mode={self.mode!r}{extra}, layers={len(self.layers)}, phase={self.phase})"
