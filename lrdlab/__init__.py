"""lrdlab: low-rank decomposition of neural networks, measured and explorable."""

from .counting import count_flops, count_params
from .layers import LowRankLayer, decompose_layer
from .models import get_model
from .plan import LayerPlan, Plan, decompose, load_decomposed, make_plan, save_decomposed

__all__ = [
    "LayerPlan", "LowRankLayer", "Plan", "count_flops", "count_params", "decompose", "decompose_layer",
    "get_model", "load_decomposed", "make_plan", "save_decomposed",
]
__version__ = "0.1.0"
