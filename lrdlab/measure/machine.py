"""The machine a measurement ran on, named in every recorded result."""

from __future__ import annotations

import platform
from typing import Any

import torch

# --- the machine -------------------------------------------------------------------------------------


def cpu_name() -> str:
    """CPU model from /proc/cpuinfo (falls back to platform.processor())."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_name(device: str | torch.device) -> str:
    dev = torch.device(device)
    if dev.type == "cuda":
        return torch.cuda.get_device_name(dev)
    return cpu_name()


def machine_info(device: str | torch.device = "cpu") -> dict[str, Any]:
    """What a recorded result must name: device, CPU, cores, threads, OpenMP wait policy, load average, torch."""
    from lrdlab.measure.compute import compute_info

    return {
        "device": str(device),
        "device_name": device_name(device),
        "cpu": cpu_name(),
        **compute_info(),
        "torch_version": torch.__version__,
        "python": platform.python_version(),
    }
