"""Live-measurement conditions for notebooks and explorers: one place that sets and reports threads and load.

:func:`use_live_policy` sets torch to one thread by default, so live times in the teaching notebooks are
comparable with the shipped one-thread recordings (pass ``threads=None`` to keep torch's own count); it honours
``$LRDLAB_COMPUTE`` like the CLI (:mod:`lrdlab.measure.compute`). :func:`conditions` is the line printed beside
every live measurement: threads, OpenMP wait policy, compute mode and load.
"""

from __future__ import annotations

import os

import torch


def use_live_policy(threads: int | None = 1) -> str:
    """Apply the compute mode (``$LRDLAB_COMPUTE``, else default) with ``threads`` torch threads; returns
    :func:`conditions`. A mode that cannot take effect in a running kernel warns (the wait policy is fixed)."""
    from lrdlab.measure.compute import apply_compute

    apply_compute(threads=threads)
    return conditions()


def conditions() -> str:
    """``"1 torch thread · wait policy default · compute default · load 5.1 / 4.8 / 4.2 (1/5/15 min) on 2 cores"``."""
    from lrdlab.measure.compute import current_compute

    try:
        load = " / ".join(f"{x:.1f}" for x in os.getloadavg())
    except OSError:
        load = "?"
    now = current_compute()
    n = torch.get_num_threads()
    return (f"{n} torch thread{'s' if n != 1 else ''} · wait policy {now.wait_policy} · compute {now.mode} · "
            f"load {load} (1/5/15 min) on {os.cpu_count()} cores")
