"""The compute policy: how many threads, and how they wait, so a shared CPU degrades gracefully.

Measured on this project's 2-core machine while other jobs ran (load average ≈ 7; data/compute_policy_cpu.json):
OpenMP threads that spin-wait (the libgomp default) turn a tiny network's 1.5 ms forward pass into
180 ms and ResNet-18's 0.33 s into 2.4 s, because a spinning thread holds a core another process
needs. With ``OMP_WAIT_POLICY=PASSIVE`` two threads are as fast as one under load, and one thread
is never far behind. The policy:

- ``OMP_WAIT_POLICY=PASSIVE``, set before torch is imported (the CLI does it first thing; a notebook
  calls :func:`set_wait_policy` before ``import torch``). Once torch is loaded the wait policy can
  no longer change, so :func:`choose_threads` then falls back to one thread whenever the machine is busy.
- threads = the cores not already busy (cores − other load, at least 1): all cores on a quiet
  machine, one on a loaded one.

Every measurement records :func:`compute_info` (threads, wait policy, load average).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

WAIT_POLICY = "PASSIVE"
_POLICY_BEFORE_TORCH: str | None = None


def set_wait_policy(policy: str = WAIT_POLICY) -> bool:
    """Set ``OMP_WAIT_POLICY`` (unless the user did); True when it takes effect (torch not imported yet)."""
    global _POLICY_BEFORE_TORCH
    effective = "torch" not in sys.modules
    os.environ.setdefault("OMP_WAIT_POLICY", policy)
    if effective:
        _POLICY_BEFORE_TORCH = os.environ["OMP_WAIT_POLICY"]
    return effective


def wait_policy() -> str:
    """The OpenMP wait policy torch runs with: the environment's when torch was imported after it was set."""
    if _POLICY_BEFORE_TORCH is not None:
        return _POLICY_BEFORE_TORCH
    return os.environ.get("OMP_WAIT_POLICY", "default (active spinning)")


def load_average() -> list[float]:
    """The 1, 5 and 15 minute load averages ([] where the OS has none)."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except (OSError, AttributeError):
        return []


def choose_threads(cores: int | None = None, load: float | None = None, passive: bool | None = None) -> int:
    """Threads for this process: the cores other processes leave free (at least 1).

    ``load`` is the 1-minute load average (default: now). Without a passive wait policy a busy
    machine gets one thread: spinning threads are what collapses a shared CPU.
    """
    cores = cores or os.cpu_count() or 1
    if load is None:
        avg = load_average()
        load = avg[0] if avg else 0.0
    if passive is None:
        passive = wait_policy().upper() == "PASSIVE"
    free = int(round(cores - load))
    if not passive and free < cores:
        return 1
    return max(1, min(cores, free))


@contextmanager
def compute_policy(threads: int | str | None = "auto") -> Iterator[int]:
    """Run a block with ``threads`` torch threads (``"auto"``: :func:`choose_threads`; None: unchanged).

    Yields the thread count in force; the previous setting is restored afterwards.
    """
    import torch

    before = torch.get_num_threads()
    if threads == "auto":
        n = choose_threads()
    elif threads is None:
        n = before
    elif isinstance(threads, int) and threads >= 1:
        n = threads
    else:
        raise ValueError(f"threads must be a positive int, 'auto' or None (got {threads!r})")
    torch.set_num_threads(n)
    try:
        yield n
    finally:
        torch.set_num_threads(before)


def compute_info() -> dict[str, Any]:
    """What every measurement records about the compute: threads, wait policy, load average, cores."""
    import torch

    return {"torch_threads": torch.get_num_threads(), "interop_threads": torch.get_num_interop_threads(),
            "omp_wait_policy": wait_policy(), "load_average": load_average(), "cpu_count": os.cpu_count()}
