"""How :func:`lrdlab.fit` trains: :class:`FitConfig`, the recipe beside what ``fit`` trains (model, loaders,
freezer, teacher), where (device) and where it writes (checkpoint). The checks are public so that the studies'
configs validate their fields the same way."""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Collection
from dataclasses import dataclass

OPTIMIZERS = ("sgd", "adamw")
SCHEDULES = ("onecycle", "cosine", "constant")
SEED_LIMIT = 2**32  # NumPy's seeds are 32-bit


def check_count(owner: str, name: str, value: object, least: int = 1, *, optional: bool = False) -> None:
    """A ValueError naming ``owner``'s field ``name`` unless ``value`` is an int >= ``least`` (a bool is not),
    or None where ``optional``."""
    if optional and value is None:
        return
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < least:
        raise ValueError(f"{owner}: {name} must be an int >= {least}{' or None' if optional else ''} "
                         f"(got {value!r}); e.g. {owner}({name}={max(least, 1)})")


def check_number(owner: str, name: str, value: object, ok: Callable[[float], bool], rule: str,
                 example: object) -> None:
    """A ValueError naming ``owner``'s field ``name`` unless ``value`` is a finite real number with ``ok(value)``."""
    if (isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value)
            or not ok(float(value))):
        raise ValueError(f"{owner}: {name} must be {rule} (got {value!r}); e.g. {owner}({name}={example!r})")


def check_choice(owner: str, name: str, value: object, choices: Collection[str]) -> None:
    """A ValueError naming ``owner``'s field ``name`` unless ``value`` is one of ``choices``."""
    if value not in choices:
        raise ValueError(f"{owner}: {name} must be one of {tuple(choices)} (got {value!r}); e.g. "
                         f"{owner}({name}={next(iter(choices))!r})")


def check_type(owner: str, name: str, value: object, kind: type, example: object) -> None:
    """A ValueError naming ``owner``'s field ``name`` unless ``value`` is a ``kind`` (a flag: ``bool``)."""
    if not isinstance(value, kind):
        what = "True or False" if kind is bool else f"a {kind.__name__}"
        raise ValueError(f"{owner}: {name} must be {what} (got {type(value).__name__} {value!r}); e.g. "
                         f"{owner}({name}={example!r})")


@dataclass(frozen=True)
class FitConfig:
    """How :func:`lrdlab.fit` trains: ``fit(model, train, test, FitConfig(epochs=2, lr=0.01))``.

    ``epochs``; ``lr``: the peak learning rate; ``optimizer``: ``"sgd"`` (with ``momentum``) or ``"adamw"``, both
    with ``weight_decay``; ``schedule`` (per iteration): ``"onecycle"``, ``"cosine"`` (to zero) or ``"constant"``, the
latter two after a linear ``warmup`` over that fraction of the iterations (0: none);
    ``label_smoothing`` of the cross-entropy. With a ``teacher`` given to ``fit``: ``distill_alpha`` (the
    teacher's share of the loss) and ``distill_temperature``. ``clip_grad_norm``: the largest norm of the
    trainable gradients (None: no clipping). ``seed`` seeds Python, NumPy and torch before training.
    What the history shows: ``evaluate_start`` adds epoch 0 (the model before training), ``label`` names the
    run (a column, and the progress bar), ``progress`` shows progress bars. A variant of a recipe:
    ``dataclasses.replace(config, lr=0.02)``.
    """

    epochs: int = 1
    lr: float = 0.05
    optimizer: str = "sgd"
    momentum: float = 0.9
    weight_decay: float = 5e-4
    schedule: str = "onecycle"
    warmup: float = 0.0
    label_smoothing: float = 0.0
    distill_alpha: float = 0.5
    distill_temperature: float = 4.0
    clip_grad_norm: float | None = None
    seed: int = 0
    evaluate_start: bool = False
    label: str = ""
    progress: bool = True

    def __post_init__(self) -> None:
        me = "FitConfig"
        check_count(me, "epochs", self.epochs)
        check_number(me, "lr", self.lr, lambda v: v > 0, "a number > 0", 0.01)
        check_choice(me, "optimizer", self.optimizer, OPTIMIZERS)
        check_number(me, "momentum", self.momentum, lambda v: 0 <= v < 1, "in [0, 1)", 0.9)
        check_number(me, "weight_decay", self.weight_decay, lambda v: v >= 0, "a number >= 0", 5e-4)
        check_choice(me, "schedule", self.schedule, SCHEDULES)
        check_number(me, "warmup", self.warmup, lambda v: 0 <= v < 1, "a fraction of the iterations in [0, 1)", 0.05)
        if self.warmup and self.schedule == "onecycle":
            raise ValueError(f"{me}: warmup applies to the 'cosine' and 'constant' schedules ('onecycle' warms up "
                             f"by itself); e.g. {me}(schedule='cosine', warmup={self.warmup!r})")
        check_number(me, "label_smoothing", self.label_smoothing, lambda v: 0 <= v < 1, "in [0, 1)", 0.1)
        check_number(me, "distill_alpha", self.distill_alpha, lambda v: 0 <= v <= 1,
                     "in [0, 1] (the teacher's share of the loss)", 0.5)
        check_number(me, "distill_temperature", self.distill_temperature, lambda v: v > 0, "a number > 0", 4.0)
        if self.clip_grad_norm is not None:
            check_number(me, "clip_grad_norm", self.clip_grad_norm, lambda v: v > 0,
                         "a number > 0, or None for no clipping", 1.0)
        check_count(me, "seed", self.seed, 0)
        if self.seed >= SEED_LIMIT:
            raise ValueError(f"{me}: seed must be below 2**32 (got {self.seed}); e.g. {me}(seed=0)")
        check_type(me, "evaluate_start", self.evaluate_start, bool, True)
        check_type(me, "progress", self.progress, bool, False)
        check_type(me, "label", self.label, str, "lrd sequential")
