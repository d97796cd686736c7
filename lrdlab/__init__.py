"""lrdlab: low-rank decomposition of neural networks, measured and explorable.

The everyday API lives here; each name is imported from its stage only when first used, so
``import lrdlab`` stays light (no plotting, widget or data-set libraries). The stages, in the order
data flows through them (each imports only the ones before it; see docs/architecture.md):

- :mod:`lrdlab.lowrank`  — ranks, decomposition methods, plans, low-rank layers, merging
- :mod:`lrdlab.finetune` — freezing schedules and the training loop
- :mod:`lrdlab.measure`  — params/FLOPs, timing, the measured rank search, sweeps, the cache
- :mod:`lrdlab.zoo`      — models, data sets, trained reference weights
- :mod:`lrdlab.explore`  — plots, labs and widgets
- :mod:`lrdlab.paper`    — the papers' numbers, studies, the reproduction and its report
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

# public name -> module that defines it
_API = {
    "LayerPlan": "lrdlab.lowrank.plan",
    "Plan": "lrdlab.lowrank.plan",
    "make_plan": "lrdlab.lowrank.plan",
    "Ratio": "lrdlab.lowrank.plan_config",
    "Energy": "lrdlab.lowrank.plan_config",
    "VBMF": "lrdlab.lowrank.plan_config",
    "FixedRank": "lrdlab.lowrank.plan_config",
    "RankPolicy": "lrdlab.lowrank.plan_config",
    "Layers": "lrdlab.lowrank.plan_config",
    "PAPER_EXCLUDE": "lrdlab.lowrank.plan_config",
    "Tucker2Options": "lrdlab.lowrank.methods",
    "LowRankLayer": "lrdlab.lowrank.layers",
    "FactorizedMultiheadAttention": "lrdlab.lowrank.attention",
    "unfuse": "lrdlab.lowrank.attention",
    "decompose_layer": "lrdlab.lowrank.layers",
    "decompose": "lrdlab.lowrank.decompose",
    "save_decomposed": "lrdlab.lowrank.decompose",
    "planned_structure": "lrdlab.lowrank.decompose",
    "load_decomposed": "lrdlab.lowrank.decompose",
    "merge_bottlenecks": "lrdlab.lowrank.merge",
    "find_bottlenecks": "lrdlab.lowrank.merge",
    "recalibrate_bn": "lrdlab.lowrank.calibration",
    "Calibration": "lrdlab.lowrank.calibration",
    "LossWeighted": "lrdlab.lowrank.loss_weighted",
    "decompose_loss_weighted": "lrdlab.lowrank.loss_weighted",
    "gemv_layout": "lrdlab.lowrank.gemv_layout",
    "register_safe_layer": "lrdlab.lowrank.usage",
    "Freezer": "lrdlab.finetune.freezing",
    "fit": "lrdlab.finetune.loop",
    "FitConfig": "lrdlab.finetune.fit_config",
    "evaluate": "lrdlab.finetune.loop",
    "count_params": "lrdlab.measure.counting",
    "count_flops": "lrdlab.measure.counting",
    "compare": "lrdlab.measure.compare",
    "machine_info": "lrdlab.measure.machine",
    "optimize_plan": "lrdlab.measure.rank_search",
    "SearchConfig": "lrdlab.measure.search_config",
    "TimingConfig": "lrdlab.measure.timing_config",
    "choose_plan": "lrdlab.measure.plan_choice",
    "bench_plan": "lrdlab.measure.bench",
    "time_breakdown": "lrdlab.measure.breakdown",
    "granularity_sweep": "lrdlab.measure.sweeps",
    "rank_time_sweep": "lrdlab.measure.sweeps",
    "get_model": "lrdlab.zoo.models",
    "get_loaders": "lrdlab.zoo.data",
    "Images": "lrdlab.zoo.data_config",
    "LoaderOptions": "lrdlab.zoo.data_config",
    "pretrained": "lrdlab.zoo.pretrained",
    "pretrained_info": "lrdlab.zoo.pretrained",
    "run_freezing_study": "lrdlab.paper.freezing_study",
    "FreezingStudyConfig": "lrdlab.paper.freezing_study",
    "freezing_throughput": "lrdlab.paper.freezing_study",
    "technique_models": "lrdlab.paper.techniques",
    "branch_structures": "lrdlab.paper.techniques",
    "speed_columns": "lrdlab.paper.techniques",
}
# public module -> its path (the pure maths, used whole: ``from lrdlab import ranks``)
_MODULES = {
    "factorize": "lrdlab.lowrank.factorize",
    "ranks": "lrdlab.lowrank.ranks",
}

__all__ = [
    "PAPER_EXCLUDE",
    "VBMF",
    "Calibration",
    "Energy",
    "FactorizedMultiheadAttention",
    "FixedRank",
    "FitConfig",
    "Freezer",
    "FreezingStudyConfig",
    "Images",
    "LayerPlan",
    "Layers",
    "LoaderOptions",
    "LossWeighted",
    "LowRankLayer",
    "Plan",
    "RankPolicy",
    "Ratio",
    "SearchConfig",
    "TimingConfig",
    "Tucker2Options",
    "bench_plan",
    "branch_structures",
    "choose_plan",
    "compare",
    "count_flops",
    "count_params",
    "decompose",
    "decompose_layer",
    "decompose_loss_weighted",
    "evaluate",
    "factorize",
    "find_bottlenecks",
    "fit",
    "freezing_throughput",
    "gemv_layout",
    "get_loaders",
    "get_model",
    "granularity_sweep",
    "load_decomposed",
    "machine_info",
    "make_plan",
    "merge_bottlenecks",
    "optimize_plan",
    "planned_structure",
    "pretrained",
    "pretrained_info",
    "rank_time_sweep",
    "ranks",
    "recalibrate_bn",
    "register_safe_layer",
    "run_freezing_study",
    "save_decomposed",
    "speed_columns",
    "technique_models",
    "time_breakdown",
    "unfuse",
]
__version__ = "0.2.0"


def __getattr__(name: str) -> Any:
    if name in _API:
        value = getattr(importlib.import_module(_API[name]), name)
        globals()[name] = value
        return value
    if name in _MODULES:
        module = importlib.import_module(_MODULES[name])
        globals()[name] = module
        return module
    raise AttributeError(f"module 'lrdlab' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_API) | set(_MODULES))


if TYPE_CHECKING:  # static checkers see the real objects
    from lrdlab.finetune.fit_config import FitConfig
    from lrdlab.finetune.freezing import Freezer
    from lrdlab.finetune.loop import evaluate, fit
    from lrdlab.lowrank import factorize, ranks
    from lrdlab.lowrank.attention import FactorizedMultiheadAttention, unfuse
    from lrdlab.lowrank.calibration import Calibration, recalibrate_bn
    from lrdlab.lowrank.decompose import decompose, load_decomposed, planned_structure, save_decomposed
    from lrdlab.lowrank.gemv_layout import gemv_layout
    from lrdlab.lowrank.layers import LowRankLayer, decompose_layer
    from lrdlab.lowrank.loss_weighted import LossWeighted, decompose_loss_weighted
    from lrdlab.lowrank.merge import find_bottlenecks, merge_bottlenecks
    from lrdlab.lowrank.methods import Tucker2Options
    from lrdlab.lowrank.plan import LayerPlan, Plan, make_plan
    from lrdlab.lowrank.plan_config import PAPER_EXCLUDE, VBMF, Energy, FixedRank, Layers, RankPolicy, Ratio
    from lrdlab.lowrank.usage import register_safe_layer
    from lrdlab.measure.bench import bench_plan
    from lrdlab.measure.breakdown import time_breakdown
    from lrdlab.measure.compare import compare
    from lrdlab.measure.counting import count_flops, count_params
    from lrdlab.measure.machine import machine_info
    from lrdlab.measure.plan_choice import choose_plan
    from lrdlab.measure.rank_search import optimize_plan
    from lrdlab.measure.search_config import SearchConfig
    from lrdlab.measure.sweeps import granularity_sweep, rank_time_sweep
    from lrdlab.measure.timing_config import TimingConfig
    from lrdlab.paper.freezing_study import FreezingStudyConfig, freezing_throughput, run_freezing_study
    from lrdlab.paper.techniques import branch_structures, speed_columns, technique_models
    from lrdlab.zoo.data import get_loaders
    from lrdlab.zoo.data_config import Images, LoaderOptions
    from lrdlab.zoo.models import get_model
    from lrdlab.zoo.pretrained import pretrained, pretrained_info
