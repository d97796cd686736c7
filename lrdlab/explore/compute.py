"""Live-measurement conditions for notebooks and explorers: one place that sets and reports threads and load.

:func:`use_live_policy` sets torch to one thread (on a shared, loaded machine more threads than free cores
slow a small network down: ``data/compute_policy_cpu.json``); :func:`conditions` is the line printed beside
every live measurement.
"""

from __future__ import annotations

import os

import torch


def use_live_policy(threads: int = 1) -> str:
    """Apply the compute policy for live measurements (default: 1 torch thread); returns :func:`conditions`."""
    torch.set_num_threads(threads)
    return conditions()


def conditions() -> str:
    """``"1 torch thread · load 5.1 / 4.8 / 4.2 (1/5/15 min) on 2 cores"``: what a live time was measured under."""
    try:
        load = " / ".join(f"{x:.1f}" for x in os.getloadavg())
    except OSError:
        load = "?"
    n = torch.get_num_threads()
    return f"{n} torch thread{'s' if n != 1 else ''} · load {load} (1/5/15 min) on {os.cpu_count()} cores"
