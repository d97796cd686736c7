"""Stage 1: plans, low-rank forms and decomposition. Importing it registers every built-in form."""

from lrdlab.lowrank import (
    cp,  # noqa: F401  (registers the CP form with lrdlab.lowrank.methods)
    quantization,  # noqa: F401  (registers LowRankLayer fusers with torch.ao.quantization)
)
