"""lrdlab: low-rank decomposition of neural networks, measured and explorable.

The everyday API is re-exported here; the modules hold the rest (see docs/architecture.md).
"""

from .counting import count_flops, count_params
from .data import get_loaders
from .freezing import Freezer
from .layers import LowRankLayer, decompose_layer
from .models import get_model
from .plan import LayerPlan, Plan, decompose, load_decomposed, make_plan, save_decomposed
from .train import evaluate, fit, run_freezing_study

__all__ = [
    "Freezer", "LayerPlan", "LowRankLayer", "Plan", "count_flops", "count_params", "decompose", "decompose_layer",
    "evaluate", "fit", "get_loaders", "get_model", "load_decomposed", "make_plan", "run_freezing_study",
    "save_decomposed",
]
__version__ = "0.1.0"
