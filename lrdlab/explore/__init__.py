"""Stage 5: plots, labs, widgets and the readers of recorded results, and the few helpers from earlier stages the
notebooks read with them.

The submodules are imported as usual (``from lrdlab.explore import plots``, ``from lrdlab.explore.recorded import
read``); the names below are imported from their stage only when first used, so importing an explorer loads nothing
more. Each comes from a stage before this one (docs/architecture.md); nothing of ``lrdlab.paper`` is re-exported
here (the notebooks' few names from it are in ``lrdlab`` itself).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

# name -> module that defines it (an earlier stage)
_HELPERS = {
    "MIN_RANK": "lrdlab.lowrank.plan",
    "percent_change": "lrdlab.measure.counting",
    "structure_row": "lrdlab.measure.counting",
    "breakdown_text": "lrdlab.measure.breakdown",
    "rank_table": "lrdlab.measure.rank_search",
    "pick_rank": "lrdlab.measure.rank_search",
    "shaped_model": "lrdlab.measure.sweeps",
    "read_json": "lrdlab.measure.cache",
    "data_dir": "lrdlab.measure.records",
    "bottleneck_net": "lrdlab.zoo.cifar_models",
    "vit_tiny": "lrdlab.zoo.cifar_models",
}

__all__ = ["MIN_RANK", "bottleneck_net", "breakdown_text", "data_dir", "percent_change", "pick_rank", "rank_table",
           "read_json", "shaped_model", "structure_row", "vit_tiny"]


def __getattr__(name: str) -> Any:
    if name in _HELPERS:
        value = getattr(importlib.import_module(_HELPERS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'lrdlab.explore' has no attribute {name!r}")


if TYPE_CHECKING:  # static checkers see the real objects
    from lrdlab.lowrank.plan import MIN_RANK
    from lrdlab.measure.breakdown import breakdown_text
    from lrdlab.measure.cache import read_json
    from lrdlab.measure.counting import percent_change, structure_row
    from lrdlab.measure.rank_search import pick_rank, rank_table
    from lrdlab.measure.records import data_dir
    from lrdlab.measure.sweeps import shaped_model
    from lrdlab.zoo.cifar_models import bottleneck_net, vit_tiny
