"""Recorded speed checks (``python -m tools.record speed-checks``): the compute policy, an A/A run, backends.

- ``compute``: a tiny network's and ResNet-18's forward time and the decomposition time of ResNet-50
  and ViT-B/16 at 2x, under each (threads, OpenMP wait policy) pair, each in a fresh process (the wait
  policy is fixed when torch loads) → ``compute_policy_cpu.json``.
- ``aa``: ResNet-18 timed against its own copy (no de-duplication): the interval must cover 0 → ``aa_check_cpu.json``.
- ``search``: the robust rank search on ResNet-50 at 2x and the speed of its ranks
  → ``search_robust_resnet50_cpu.json``.
- ``backends``: ResNet-50 at 2x, original vs decomposed, eager / onnxruntime / compile
  → ``bench_backends_resnet50_cpu.json``.

Every file names the machine, the load average before and after, and the command that re-creates it.
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from lrdlab.measure.records import write_record
from lrdlab.measure.stats import SpeedUp

POLICIES = (("2", None), ("2", "PASSIVE"), ("1", None), ("1", "PASSIVE"))
ROOT = Path(__file__).resolve().parents[2]  # the checkout: ``python -m tools.record…`` runs from there


def probe(threads: int) -> dict[str, Any]:
    """One process's timings at ``threads`` threads (medians; the wait policy is whatever it started with)."""

    import torch
    from torch import nn

    from lrdlab import Layers, Ratio, decompose, make_plan
    from lrdlab.lowrank.plan_config import PAPER_EXCLUDE
    from lrdlab.measure.compute import compute_info
    from lrdlab.zoo.models import get_model
    from tools.record.transformers_targets import median_time

    torch.set_num_threads(threads)
    torch.manual_seed(0)

    net = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10)).eval()
    x = torch.randn(8, 3, 32, 32)
    r18, xb = get_model("resnet18").eval(), torch.randn(8, 3, 112, 112)
    with torch.no_grad():
        out: dict[str, Any] = {"tiny_forward_ms": 1e3 * median_time(lambda: net(x), 30),
                               "resnet18_forward_ms": 1e3 * median_time(lambda: r18(xb), 5)}
    for name, exclude in (("resnet50", PAPER_EXCLUDE), ("vit_b_16", None)):
        model = get_model(name).eval()
        plan = make_plan(model, Ratio(2), Layers(exclude=exclude))
        t = time.perf_counter()
        decompose(model, plan, progress=False)
        out[f"decompose_{name}_s"] = time.perf_counter() - t
        out[f"decompose_{name}_layers"] = len(plan.decomposed_layers)
    return {**out, **compute_info().to_dict()}


COMPETITOR = ("import torch, time\ntorch.set_num_threads(2)\na = torch.randn(1024, 1024)\nend = time.time() + 600\n"
              "while time.time() < end:\n    a @ a\n")  # another 2-thread process: a matmul loop


def _probe(threads: str, policy: str | None, competitor: bool) -> dict[str, Any]:
    """:func:`probe` in a fresh process with ``OMP_WAIT_POLICY=policy``, alone or beside :data:`COMPETITOR`."""
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    if policy:
        env["OMP_WAIT_POLICY"] = policy
    rival = subprocess.Popen([sys.executable, "-c", COMPETITOR]) if competitor else None
    try:
        if rival is not None:
            time.sleep(2.0)  # let it start spinning
        res = subprocess.run([sys.executable, "-m", "tools.record.speed_checks", "probe", threads], env=env,
                             capture_output=True, text=True, check=True)
    finally:
        if rival is not None:
            rival.kill()
            rival.wait()
    return {**json.loads(res.stdout.strip().splitlines()[-1]), "threads": int(threads),
            "omp_wait_policy": policy or "default", "competitor": "2-thread matmul loop" if competitor else None}


def record_compute(out: Path) -> Path:
    """Each (threads, wait policy) pair in a fresh process, twice, interleaved; then the passive policies again
    while another 2-thread process runs (the shared-machine case)."""
    from lrdlab.measure.machine import machine_info

    load_before = os.getloadavg()
    rows = []
    for rep in range(2):
        rows += [{**_probe(threads, policy, False), "repeat": rep} for threads, policy in POLICIES]
    for rep in range(2):
        rows += [{**_probe(threads, "PASSIVE", True), "repeat": rep} for threads in ("1", "2")]
    return write_record(out / "compute_policy_cpu.json", {
        "what": "forward time of a tiny conv net (batch 8, 32 px) and ResNet-18 (batch 8, 112 px), and the wall time "
                "to decompose ResNet-50 (conv1/downsample excluded) and ViT-B/16 at 2x, per torch thread count and "
                "OpenMP wait policy, each in a fresh process (the wait policy is fixed when torch loads); medians. "
                "Rows with a competitor ran beside another 2-thread process (a matmul loop)",
        "command": "python -m tools.record speed-checks --only compute", "machine": machine_info().to_dict(),
        "load_average_before": load_before, "load_average_after": os.getloadavg(), "rows": rows,
    })


def record_aa(out: Path, rounds: int = 5) -> Path:
    """ResNet-18 (batch 8, 112 px) against its own copy, interleaved, adaptive rounds, no de-duplication."""
    from lrdlab.measure.compare import compare
    from lrdlab.measure.machine import machine_info
    from lrdlab.measure.timing_config import TimingConfig
    from lrdlab.zoo.models import get_model

    load_before = os.getloadavg()
    model = get_model("resnet18").eval()
    df = compare({"resnet18": model, "resnet18 copy": copy.deepcopy(model)}, (8, 3, 112, 112),
                 timing=TimingConfig(rounds=rounds, warmup=1, repeats=3), dedupe=False)
    up = SpeedUp.from_row(df.iloc[1])
    return write_record(out / "aa_check_cpu.json", {
        "what": "A/A check: ResNet-18 timed interleaved against its own copy; speed-up % with its 95% bootstrap "
                "interval (must cover 0)", "command": "python -m tools.record speed-checks --only aa",
        "machine": machine_info().to_dict(), "load_average_before": load_before, "load_average_after": os.getloadavg(),
        "speedup_pct": up.to_pct(), "covers_zero": up.within_noise, "rows": df.to_dict(orient="records"),
    })


def record_backends(out: Path, backends: tuple[str, ...] = ("eager", "onnxruntime", "compile"),
                    image_size: int = 112, batch: int = 8, budget_s: float = 240.0) -> Path:
    """ResNet-50 at 2x: original vs decomposed on each backend (a backend that fails is recorded with its error)."""
    from lrdlab.lowrank.plan import Layers, Ratio, make_plan
    from lrdlab.lowrank.plan_config import PAPER_EXCLUDE
    from lrdlab.measure.bench import bench_plan
    from lrdlab.measure.machine import machine_info
    from lrdlab.measure.timing_config import TimingConfig
    from lrdlab.zoo.models import get_model

    load_before = os.getloadavg()
    model = get_model("resnet50").eval()
    plan = make_plan(model, Ratio(2), Layers(exclude=PAPER_EXCLUDE), model_name="resnet50")
    results: dict[str, Any] = {}
    for backend in backends:
        t = time.perf_counter()
        try:
            report = bench_plan(model, plan, (batch, 3, image_size, image_size),
                                TimingConfig(rounds=5, warmup=2, repeats=3, backend=backend, budget_s=budget_s))
            results[backend] = {**report.inference.to_dict(), "ideal_speedup": report.ideal_speedup,
                                "wall_s": time.perf_counter() - t}
        except Exception as err:  # noqa: BLE001 - recorded, not hidden
            results[backend] = {"error": f"{type(err).__name__}: {str(err)[:300]}", "wall_s": time.perf_counter() - t}
    pipelines = _pipeline_on_backends(model, (batch, 3, image_size, image_size), budget_s)
    return write_record(out / "bench_backends_resnet50_cpu.json", {
        "what": f"ResNet-50 (random weights) at 2x, conv1/downsample excluded, original vs decomposed, inference, "
                f"batch {batch}, {image_size} px, each backend timed interleaved with adaptive rounds "
                f"(until the 95% interval is ±3 points, or {budget_s:.0f} s)",
        "command": "python -m tools.record speed-checks --only backends --threads "
                   f"{__import__('torch').get_num_threads()}",
        "machine": machine_info().to_dict(), "load_average_before": load_before, "load_average_after": os.getloadavg(),
        "backends": results, "pipelines": pipelines,
    })


def _pipeline_on_backends(model, shape: tuple[int, ...], budget_s: float,
                          backends: tuple[str, ...] = ("eager", "compile")) -> dict[str, Any]:
    """The best pipeline (layer merging + granularity 32) against the original, per backend, up to 60 rounds."""
    from lrdlab.lowrank.merge import merge_bottlenecks
    from lrdlab.lowrank.plan import Layers, Ratio, make_plan
    from lrdlab.lowrank.plan_config import PAPER_EXCLUDE
    from lrdlab.measure.compare import round_limits
    from lrdlab.measure.sweeps import speed_table
    from lrdlab.measure.timing_config import TimingConfig

    merged = merge_bottlenecks(model, make_plan(model, Ratio(2, granularity=32), Layers(exclude=PAPER_EXCLUDE),
                                                model_name="resnet50"))
    out: dict[str, Any] = {}
    for backend in backends:
        with round_limits(factor=12, budget_s=budget_s):
            r = speed_table(model, {"merging + g=32": merged}, shape,
                            TimingConfig(rounds=5, warmup=2, repeats=3, backend=backend), progress=False).iloc[0]
        out[f"{backend}, merging + g=32"] = {"speedup_pct": table_speedup(r).to_pct(), "realised": r["realised"],
                                             "ideal_speedup": r["ideal_speedup"]}
    return out


def table_speedup(r: Any) -> SpeedUp:
    """A speed_table row's speed-up (its percent columns) as a :class:`~lrdlab.measure.stats.SpeedUp`."""
    return SpeedUp.from_pct({"median": r["speedup_pct"], "ci_low": r["speedup_pct_ci_low"],
                             "ci_high": r["speedup_pct_ci_high"], "rounds": int(r["rounds"]),
                             "converged": bool(r["converged"])})


if __name__ == "__main__":  # the compute probe runs in a fresh process
    if len(sys.argv) == 3 and sys.argv[1] == "probe":
        print(json.dumps(probe(int(sys.argv[2])), default=float))  # one line to the parent, not a record
