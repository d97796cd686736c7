"""Stage 5: plots, labs and widgets, and the few helpers from earlier stages the notebooks read with them.

The submodules are imported as usual (``from lrdlab.explore import plots``); the names below are imported from
their stage only when first used, so importing an explorer loads nothing more. Each comes from a stage before
this one (docs/architecture.md): the papers' readers (``lrdlab.paper``) cannot be re-exported here.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

# name -> module that defines it (an earlier stage)
_HELPERS = {
    "MIN_RANK": "lrdlab.lowrank.plan",
    "percent_change": "lrdlab.measure.counting",
    "read_json": "lrdlab.measure.cache",
    "data_dir": "lrdlab.measure.records",
    "bottleneck_net": "lrdlab.zoo.cifar_models",
    "vit_tiny": "lrdlab.zoo.cifar_models",
}

__all__ = ["MIN_RANK", "bottleneck_net", "data_dir", "percent_change", "read_json", "vit_tiny"]


def __getattr__(name: str) -> Any:
    if name in _HELPERS:
        value = getattr(importlib.import_module(_HELPERS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'lrdlab.explore' has no attribute {name!r}")


if TYPE_CHECKING:  # static checkers see the real objects
    from lrdlab.lowrank.plan import MIN_RANK
    from lrdlab.measure.cache import read_json
    from lrdlab.measure.counting import percent_change
    from lrdlab.measure.records import data_dir
    from lrdlab.zoo.cifar_models import bottleneck_net, vit_tiny
