"""The rank explorer's shipped accuracy and structure grids: α × g × rounding for each shipped image model.

One command records them all (nice'd, on 2 cores; a few minutes, the machine and load go into each file)::

    python -m tools.record.explorer_grids            # writes lrdlab/explore/reference/explorer_grid_<model>.json

:func:`record_explorer_grids` takes every setting from the library and the explorer, never its own: the plan is
:func:`lrdlab.explore.network_lab.network_plan` (``make_plan``'s defaults, the stem kept), the accuracy is
:class:`lrdlab.explore.accuracy_lab.AccuracyLab`'s (the default calibrated ``decompose``, its calibration images,
the full 1,000-image MNIST-5k test split). The explorer answers a setting from the file when its plan (ranks and
forms), weights, calibration and images match, so a changed default is scored live, never read stale.
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from lrdlab.explore.accuracy_lab import AccuracyLab, grid_path, plan_key
from lrdlab.explore.network_lab import network_plan
from lrdlab.explore.rank_lab import REFERENCE_DIR
from lrdlab.lowrank.decompose import planned_structure
from lrdlab.measure.counting import count_flops, count_params
from lrdlab.measure.machine import machine_info
from lrdlab.measure.records import write_record
from lrdlab.zoo import models, pretrained

# (ratios, granularities, roundings) per shipped model: a subset of the explorer's sliders sized to fit the
# recording's budget (≤ 15 min on 2 cores); a slider value off the grid is scored live.
GRIDS: dict[str, tuple[tuple[float, ...], tuple[int, ...], tuple[str, ...]]] = {
    "resnet20_mnist5k": ((1.5, 2.0, 3.0, 4.0, 6.0), (1, 8, 16, 32), ("down", "up", "nearest")),
    "vit_tiny_mnist5k": ((2.0, 3.0, 4.0, 6.0, 8.0), (1, 8, 32), ("down", "up")),
}
COMMAND = "nice -n 5 python -m tools.record.explorer_grids"


def grid_settings(name: str) -> list[tuple[float, int, str]]:
    """The (α, g, rounding) settings recorded for a shipped model (g = 1 once: rounding does nothing there)."""
    ratios, grans, roundings = GRIDS[name]
    return [(a, g, r) for a in ratios for g in grans for r in (roundings if g > 1 else roundings[:1])]


def record_grid(name: str, out_dir: Path) -> Path:
    """Score every grid setting of one shipped model (unique plans once, one per core) and write its file."""
    lab = AccuracyLab(name, use_grid=False)
    lab.memo = {}  # never reuse a disk memo: every accuracy in the file is scored by this run
    spec = pretrained.pretrained_info(name).model  # the architecture
    model, shape = lab.model, (1, *models.input_size(spec))
    load_before, start = os.getloadavg(), time.perf_counter()
    plans = {s: network_plan(model, s[0], s[1], s[2], pretrained.kept_stem(spec)) for s in grid_settings(name)}
    unique = {plan_key(p): p for p in plans.values()}
    original = lab.original()
    lab.prefetch(list(unique.values()), on_done=lambda done, total: print(
        f"{name}: {done}/{total} plans scored ({time.perf_counter() - start:.0f} s)", flush=True))
    rows, counted = [], {}
    for (ratio, g, rounding), plan in plans.items():
        key = plan_key(plan)
        if key not in counted:
            meta = planned_structure(model, plan)
            counted[key] = {"layers": len(plan.decomposed_layers), "params": count_params(meta),
                            "flops": count_flops(meta, shape), "accuracy": round(lab.accuracy(plan), 2)}
        rows.append({"ratio": ratio, "granularity": g, "rounding": rounding, "plan": key, **counted[key]})
    result: dict[str, Any] = {
        "what": f"{name}: calibrated test accuracy and structure over the rank explorer's α × g × rounding",
        "command": COMMAND, **lab.settings(), "original": {"accuracy": round(original, 2),
                                                             "params": count_params(model),
                                                             "flops": count_flops(model, shape)},
        "machine": machine_info("cpu").to_dict(), "threads": torch.get_num_threads(),
        "load_average_before": load_before,
        "load_average_after": os.getloadavg(), "seconds": round(time.perf_counter() - start, 1),
        "unique_plans": len(unique), "rows": rows,
        "note": "seconds are wall time on a shared 2-core machine (other processes ran: see the load averages)",
    }
    return write_record(Path(out_dir) / grid_path(name).name, result)


def record_explorer_grids(out_dir: Path | str = REFERENCE_DIR, names: Sequence[str] | None = None) -> list[Path]:
    """Record the explorer grids of every shipped image model in :data:`GRIDS` (or ``names``) under ``out_dir``.

    Run by ``python -m tools.record.explorer_grids`` (:data:`COMMAND`); settings come from the library defaults.
    """
    shipped = set(pretrained.available())
    todo = [n for n in (names or GRIDS) if n in shipped]
    unknown = [n for n in (names or []) if n not in GRIDS]
    if unknown:
        raise ValueError(f"no explorer grid defined for {unknown}; choose from {sorted(GRIDS)}")
    out = []
    for name in todo:
        out.append(record_grid(name, Path(out_dir)))
        print("wrote", out[-1], flush=True)
    return out


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(REFERENCE_DIR), help="folder for explorer_grid_<model>.json")
    parser.add_argument("--models", nargs="*", default=None, help=f"subset of {sorted(GRIDS)}")
    args = parser.parse_args(argv)
    record_explorer_grids(args.out, args.models)


if __name__ == "__main__":
    main()
