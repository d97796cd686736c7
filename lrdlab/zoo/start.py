"""The starting point of every fine-tuning study: a trained original and its decomposition.

One place for "train the original → keep the exclusions that apply → plan → decompose (calibrated)",
then "fine-tune it", used by the freezing study (F7/F8), the accuracy study (F11), the techniques study
(T2, F6) and the freezing explorer.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import pandas as pd
from torch import nn

from lrdlab.finetune.fit_config import FitConfig
from lrdlab.finetune.loop import fit, set_seed
from lrdlab.lowrank.decompose import decompose
from lrdlab.lowrank.plan import Layers, Plan, Ratio, applicable_patterns, make_plan
from lrdlab.zoo.data import rebatched
from lrdlab.zoo.models import get_model


def train_original(model: str | nn.Module, loaders: Any, config: FitConfig, *,
                   device: str = "cpu") -> tuple[nn.Module, pd.DataFrame]:
    """Train ``model`` (a registered name, built for the loaders' classes, or a module) from scratch by ``config``.

    Returns the trained model on the CPU in eval mode, and its :func:`~lrdlab.fit` history.
    """
    set_seed(config.seed)
    net = get_model(model, num_classes=loaders.num_classes) if isinstance(model, str) else model
    history = fit(net, loaders.train, loaders.test, config, device=device)
    return net.cpu().eval(), history


def decomposed_start(original: nn.Module, *, ratio: float, exclude: str | Sequence[str] | None = None,
                     model_name: str | None = None, calibration: Iterable | None = None) -> tuple[Plan, nn.Module]:
    """Plan ``original`` at ``ratio`` (exclusions kept where they match a layer) and decompose a copy.

    ``calibration`` (input batches): the data-aware decomposition with BatchNorm re-estimation, so
    fine-tuning starts from a working model rather than from chance (see lrdlab.lowrank.calibration).
    """
    plan = make_plan(original, Ratio(ratio), Layers(exclude=applicable_patterns(original, exclude) or None),
                     model_name=model_name)
    return plan, decompose(original, plan, calibration=calibration)


def finetune(net: nn.Module, loaders: Any, config: FitConfig, *, batch_size: int | None = None,
             teacher: nn.Module | None = None, freezer: Any = None) -> pd.DataFrame:
    """Fine-tune ``net`` in place by ``config`` (:func:`~lrdlab.fit`); returns its history.

    The training set is reshuffled by ``config.seed`` (the seed picks the data order too) in batches of
    ``batch_size`` (default: the loaders' own); ``teacher`` distils, ``freezer`` freezes.
    """
    train = rebatched(loaders.train, batch_size or loaders.train.batch_size, config.seed)
    return fit(net, train, loaders.test, config, freezer, teacher=teacher)
