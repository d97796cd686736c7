"""The source papers' published numbers, for side-by-side comparison in reports (never used as results).

P1: Hajimolahoseini et al., "Accelerating the Low-Rank Decomposed Models", PMLR 262 (2024).
P2: Hajimolahoseini et al., "Training Acceleration of Low-Rank Decomposed Networks using Sequential
Freezing and Rank Quantization", arXiv 2309.03824 (2023).
"""

from __future__ import annotations

from typing import Any

# P1 Table 1 (ResNet-152 on ImageNet): layer -> (C, S, kernel, 2x rank, optimized rank or "ORG")
TABLE1: dict[str, tuple[int, int, int, int, int | str]] = {
    "layer1.0.conv1": (64, 64, 1, 16, "ORG"),
    "layer1.0.conv2": (64, 64, 3, 38, 32),
    "layer1.0.conv3": (64, 256, 1, 25, 24),
    "layer4.2.conv1": (2048, 512, 1, 204, 202),
    "layer4.2.conv2": (512, 512, 3, 309, 308),
    "layer4.2.conv3": (512, 2048, 1, 204, 200),
    "fc": (2048, 1000, 1, 335, 253),
}

# P1 Table 2: % change vs the original model. (model, method) -> (layers, params, FLOPs, train speed-up, infer speed-up)
TABLE2: dict[tuple[str, str], tuple[int, float, float, float, float]] = {
    ("resnet50", "vanilla"): (115, -50.00, -43.26, 6.07, 6.82),
    ("resnet50", "optimized"): (115, -47.28, -47.71, 14.16, 13.96),
    ("resnet50", "freezing"): (115, -50.00, -43.26, 24.57, 6.82),
    ("resnet50", "merging"): (50, -51.49, -55.09, 43.64, 40.58),
    ("resnet101", "vanilla"): (233, -50.00, -46.53, 9.66, 10.52),
    ("resnet101", "optimized"): (233, -51.96, -49.56, 14.49, 19.92),
    ("resnet101", "freezing"): (233, -50.00, -46.53, 29.95, 10.52),
    ("resnet101", "merging"): (101, -56.40, -58.86, 52.66, 54.56),
    ("resnet152", "vanilla"): (352, -50.00, -47.69, 11.73, 13.14),
    ("resnet152", "optimized"): (352, -51.86, -50.20, 15.86, 18.43),
    ("resnet152", "freezing"): (352, -50.00, -47.69, 31.72, 13.14),
    ("resnet152", "merging"): (152, -58.11, -60.18, 55.86, 54.90),
}
TABLE2_COLUMNS = ("layers", "params_pct", "flops_pct", "train_speedup_pct", "infer_speedup_pct")

# P1 Figure 2 (the [512, 512, 3, 3] conv of ResNet-152, Tucker-2 rank r): the cliff between 256 and 257
FIG2_CLIFF: dict[str, Any] = {"rank_below": 256, "rank_above": 257, "time_drop_pct": 15.0, "ranks": (242, 269)}

# P2 abstract: combined rank optimization + sequential freezing
P2_CLAIM = {"train_speedup_pct": 60.0, "infer_speedup_pct": 37.0}
