"""Speed as a function of torch's thread count.

At each count the original and the decomposed models are timed interleaved under the same settings (threads,
wait policy, backend, batch); the counts run one after another. A network of thin decomposed layers has more,
smaller parallel regions than the original, so it gains less from each extra thread: the speed-up at one
thread is not the speed-up at all cores.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import nn

from lrdlab.lowrank.plan import Plan
from lrdlab.measure.compute import check_threads, compute_policy, current_compute
from lrdlab.measure.stats import SpeedUp
from lrdlab.measure.timing_config import TimingConfig


def bench_threads(model: nn.Module, plan: Plan, input_shape: Sequence[int], threads: Sequence[int],
                  timing: TimingConfig | None = None, *, train: bool = False,
                  progress: bool = False) -> list[dict[str, Any]]:
    """:func:`lrdlab.bench_plan` at each thread count (``timing`` None: its default); each report also names the
    compute it ran with."""
    from lrdlab.measure.compare import DEFAULT_TIMING
    from lrdlab.measure.sweeps import bench_plan

    counts = [check_threads(n) for n in threads]
    reports = []
    for n in counts:
        with compute_policy(n):
            report = bench_plan(model, plan, input_shape, timing or DEFAULT_TIMING, train=train, progress=progress)
            report["compute"] = current_compute().to_dict()
        reports.append(report)
    return reports


def threads_table(reports: Sequence[dict[str, Any]], mode: str = "inference") -> str:
    """One row per thread count: original ms, decomposed ms, speed-up [95% CI], realised fraction of the FLOP ideal."""
    first = reports[0]
    c, s = first["compute"], first["settings"]
    lines = [f"{first['model']}, {mode}, input {tuple(first['input_shape'])}, backend {s['backend']}, "
             f"compute {c['mode']}, OpenMP wait policy {c['wait_policy']}, FLOP-ideal ×{first['ideal_speedup']:.3f}",
             f"{'threads':>7s}  {'original ms':>11s}  {'decomposed ms':>13s}  {'speed-up [95% CI]':<36s} "
             f"{'realised':>8s}  load"]
    for r in reports:
        m = r[mode]
        lines.append(f"{r['compute']['threads']:>7d}  {1e3 * m['original_s']:>11.1f}  {1e3 * m['decomposed_s']:>13.1f}"
                     f"  {SpeedUp.from_pct(m['speedup_pct']).text():<36s} {m['realised']:>8.2f}  {m['load_average']}")
    return "\n".join(lines)
