"""How lrdlab uses the cores: the user's machine by default, a shared machine when asked.

Two modes, and one that picks between them:

- ``default``: lrdlab leaves threading and the OpenMP wait policy as torch leaves them (all cores,
  threads that spin briefly while they wait). This is what a workstation or a server wants.
- ``shared``: ``OMP_WAIT_POLICY=PASSIVE`` and only the cores other processes leave free. On a loaded
  shared CPU, spinning threads hold cores another process needs; on a quiet machine the same policy
  makes the second core nearly useless (data/compute_policy_cpu.json).
- ``auto``: ``shared`` when the 1-minute load average is high (:func:`busy`), else ``default``.

Choose with ``lrdlab --compute MODE`` or the environment variable ``LRDLAB_COMPUTE``; in Python call
:func:`apply_compute` before ``import torch`` (the wait policy is fixed when torch loads: asked later,
it warns and says so). Every measurement records :func:`compute_info`: the mode that ran, threads,
wait policy and load.
"""

from __future__ import annotations

import os
import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any

WAIT_POLICY = "PASSIVE"
MODES = ("default", "shared", "auto")
ENV = "LRDLAB_COMPUTE"


@dataclass(frozen=True)
class ComputeSettings:
    """The compute a process runs with: the mode asked, the mode that ran, threads, wait policy, and why."""

    asked: str
    mode: str
    threads: int
    wait_policy: str
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def __str__(self) -> str:
        how = "torch's threads and waits" if self.mode == "default" else "passive waits, free cores"
        picked = f", chosen by {self.asked}" if self.asked != self.mode else ""
        tail = f"; {self.note}" if self.note else ""
        return (f"compute {self.mode} ({how}{picked}): {self.threads} torch thread{'s' if self.threads != 1 else ''}, "
                f"OpenMP wait policy {self.wait_policy}{tail}")


_CURRENT: ComputeSettings | None = None


def available_cores() -> int:
    """Cores this process may run on (its CPU affinity where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def mode_from_env() -> str:
    """``$LRDLAB_COMPUTE`` (default, shared or auto), else ``default``."""
    mode = os.environ.get(ENV, "").strip().lower() or "default"
    if mode not in MODES:
        raise ValueError(f"{ENV}={os.environ[ENV]!r} is not a compute mode: use one of {', '.join(MODES)}")
    return mode


def set_wait_policy(policy: str = WAIT_POLICY) -> bool:
    """Set ``OMP_WAIT_POLICY`` (unless the user did) before torch loads; True when it takes effect.

    Once torch is loaded the policy can no longer change: then nothing is set and a warning says so.
    """
    if "torch" in sys.modules:
        if os.environ.get("OMP_WAIT_POLICY", "").upper() != policy.upper():
            warnings.warn(f"OMP_WAIT_POLICY={policy} cannot take effect: torch is already loaded, so OpenMP keeps "
                          f"the wait policy {wait_policy()}; set it before `import torch` (or run the lrdlab CLI)",
                          RuntimeWarning, stacklevel=2)
        return False
    os.environ.setdefault("OMP_WAIT_POLICY", policy)
    return True


def wait_policy() -> str:
    """The OpenMP wait policy torch runs with (``default`` when ``OMP_WAIT_POLICY`` is unset)."""
    return os.environ.get("OMP_WAIT_POLICY", "").upper() or "default"


def load_average() -> list[float]:
    """The 1, 5 and 15 minute load averages ([] where the OS has none)."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except (OSError, AttributeError):
        return []


def busy(cores: int | None = None, load: float | None = None) -> bool:
    """Whether the machine is loaded: a 1-minute load average of at least half the cores (and at least 1)."""
    cores = cores or available_cores()
    if load is None:
        avg = load_average()
        load = avg[0] if avg else 0.0
    return load >= max(1.0, cores / 2)


def choose_threads(cores: int | None = None, load: float | None = None, passive: bool | None = None) -> int:
    """Threads for this process on a shared machine: the cores other processes leave free (at least 1).

    ``load`` is the 1-minute load average (default: now). Without a passive wait policy a busy
    machine gets one thread: spinning threads are what collapses a shared CPU.
    """
    cores = cores or available_cores()
    if load is None:
        avg = load_average()
        load = avg[0] if avg else 0.0
    if passive is None:
        passive = wait_policy() == "PASSIVE"
    free = int(round(cores - load))
    if not passive and free < cores:
        return 1
    return max(1, min(cores, free))


def check_threads(threads: int) -> int:
    """``threads`` if it is a whole number from 1 to the cores available, else a ValueError saying so."""
    cores = available_cores()
    if isinstance(threads, bool) or not isinstance(threads, int) or not 1 <= threads <= cores:
        raise ValueError(f"threads must be a whole number from 1 to {cores} (this machine's cores; got {threads!r})")
    return threads


def apply_compute(mode: str | None = None, threads: int | None = None) -> ComputeSettings:
    """Use the cores as ``mode`` says (None: ``$LRDLAB_COMPUTE``, else ``default``); ``threads`` overrides the count.

    Call it before ``import torch`` for ``shared`` to set the wait policy; later, a warning says that
    only the thread count changed. Returns what is in force (also recorded by :func:`compute_info`).
    """
    global _CURRENT
    asked = mode_from_env() if mode is None else mode
    if asked not in MODES:
        raise ValueError(f"compute mode must be one of {', '.join(MODES)} (got {asked!r})")
    if threads is not None:
        check_threads(threads)
    ran = ("shared" if busy() else "default") if asked == "auto" else asked
    note = ""
    if ran == "shared" and not set_wait_policy():
        note = f"torch was loaded first, so the wait policy stays {wait_policy()}"
    import torch

    if threads is not None:
        torch.set_num_threads(threads)
    elif ran == "shared":
        torch.set_num_threads(choose_threads())
    _CURRENT = ComputeSettings(asked, ran, torch.get_num_threads(), wait_policy(), note)
    return _CURRENT


def current_compute() -> ComputeSettings:
    """The compute in force: what :func:`apply_compute` set, else ``default`` (lrdlab changed nothing)."""
    import torch

    mode = _CURRENT.mode if _CURRENT else "default"
    asked = _CURRENT.asked if _CURRENT else "default"
    note = _CURRENT.note if _CURRENT else ""
    return ComputeSettings(asked, mode, torch.get_num_threads(), wait_policy(), note)


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


@dataclass(frozen=True)
class ComputeInfo:
    """What every measurement records about the compute: the settings in force, interop threads, load, cores.

    ``str()`` is one line; :meth:`to_dict` is the recorded JSON form (``compute_mode``, ``torch_threads``, …)."""

    settings: ComputeSettings
    interop_threads: int
    load_average: list[float]
    cpu_count: int | None

    def __str__(self) -> str:
        load = " ".join(f"{x:.2f}" for x in self.load_average) or "unknown"
        return f"{self.settings}; {self.interop_threads} interop threads, {self.cpu_count} cores, load {load}"

    def to_dict(self) -> dict[str, Any]:
        s = self.settings
        return {"compute_mode": s.mode, **({"compute_asked": s.asked} if s.asked != s.mode else {}),
                "torch_threads": s.threads, "interop_threads": self.interop_threads,
                "omp_wait_policy": s.wait_policy, **({"compute_note": s.note} if s.note else {}),
                "load_average": self.load_average, "cpu_count": self.cpu_count}


def compute_info() -> ComputeInfo:
    """What every measurement records about the compute: mode, threads, wait policy, load average, cores."""
    import torch

    return ComputeInfo(current_compute(), torch.get_num_interop_threads(), load_average(), os.cpu_count())
