"""Which Tucker-2 factorization is the default: weight error and time of HOSVD and HOOI on ResNet-50 at 2x.

Every Tucker-2 conv of ``make_plan(resnet50, Ratio(2), Layers(exclude="conv1"))`` (torchvision's random init) is
factorized by each variant: ``hosvd``, HOOI from the HOSVD start with 1 or 3 sweeps, and HOOI run to
convergence. A row gives the mean relative weight error ``‖W − Ŵ‖ / ‖W‖`` and the seconds for all of them
(one thread, the best of ``repeats`` runs: a shared machine's neighbours only add time). ``decompose_s`` is
``lrdlab.decompose(model, plan)`` with the default. Run ``python -m tools.record.tucker_default --out
data/tucker_default_resnet50_cpu.json``; the default is in :data:`lrdlab.lowrank.factorize.TUCKER_INIT`.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

VARIANTS = {"hosvd": ("hosvd", 1), "hooi-1": ("hooi", 1), "hooi-3": ("hooi", 3), "hooi-converged": ("hooi", 100)}


@dataclass
class TuckerRow:
    """One variant: ``method`` and ``sweeps`` of :func:`~lrdlab.lowrank.factorize.tucker2_factors`."""

    variant: str
    method: str
    sweeps: int
    layers: int
    mean_rel_error: float
    seconds: float
    load: float


def compare(ratio: float = 2.0, repeats: int = 2, out: str | Path | None = None) -> dict[str, Any]:
    """The rows (see the module docstring), the default's whole-model decomposition time, machine and load."""
    import torch

    from lrdlab.lowrank import factorize
    from lrdlab.lowrank.decompose import decompose
    from lrdlab.lowrank.plan import Layers, Ratio, make_plan
    from lrdlab.measure.machine import machine_info
    from lrdlab.measure.records import write_record
    from lrdlab.zoo.models import get_model

    torch.manual_seed(0)
    model = get_model("resnet50").eval()
    plan = make_plan(model, Ratio(ratio), Layers(exclude="conv1"))
    convs = []
    for r in plan.decomposed_layers:
        conv = model.get_submodule(r.name)
        if r.method == "tucker2" and isinstance(conv, torch.nn.Conv2d) and r.ranks is not None:
            convs.append((conv.weight.detach(), list(r.ranks)))
    rows = []
    for variant, (method, sweeps) in VARIANTS.items():
        best, errors = float("inf"), list[float]()
        for _ in range(repeats):
            errors = []
            t0 = time.perf_counter()
            for weight, (r1, r2) in convs:
                approx = factorize.reconstruct_tucker2(*factorize.tucker2_factors(weight, r1, r2, method, sweeps))
                errors.append(float((weight - approx).norm() / weight.norm()))
            best = min(best, time.perf_counter() - t0)
        rows.append(TuckerRow(variant, method, sweeps, len(convs), round(sum(errors) / len(errors), 4),
                              round(best, 2), round(os.getloadavg()[0], 2)))
        print(f"{variant:15s} error {rows[-1].mean_rel_error:.4f}  {best:.2f} s", flush=True)
    t0 = time.perf_counter()
    decompose(model, plan)
    whole = time.perf_counter() - t0
    result = {"command": "python -m tools.record.tucker_default " + " ".join(sys.argv[1:]),
              "what": f"Tucker-2 factorization of the {len(convs)} Tucker-2 convs of ResNet-50 (torchvision random "
                      f"init, seed 0) at ratio {ratio:g}, stem kept", "default": factorize.TUCKER_INIT,
              "rows": [asdict(r) for r in rows], "decompose_s": round(whole, 2),
              "note": "seconds: best of repeats, one thread inside each factorization; wall time on a shared "
                      "2-core machine where other jobs ran (load = 1-min load average after the variant)",
              "machine": machine_info("cpu").to_dict()}
    if out is not None:
        write_record(out, result)
    return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    from lrdlab.cli.common import add_ratio_argument

    add_ratio_argument(parser, default=2.0)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--out")
    args = parser.parse_args()
    compare(args.ratio, args.repeats, args.out)
