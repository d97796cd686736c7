"""The machine a measurement ran on, named in every recorded result."""

from __future__ import annotations

import html
import platform
from dataclasses import dataclass
from typing import Any

import torch

from lrdlab.measure.compute import ComputeInfo, compute_info

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


@dataclass(frozen=True)
class Machine:
    """The machine a measurement ran on: device, CPU, the compute in force (threads, wait policy, load), torch.

    ``str()`` is one line for a notebook; :meth:`to_dict` is the flat JSON form every record stores as ``machine``."""

    device: str
    device_name: str
    cpu: str
    compute: ComputeInfo
    torch_version: str
    python: str

    @property
    def load_average(self) -> list[float]:
        return self.compute.load_average

    def __str__(self) -> str:
        on = self.cpu if self.device_name == self.cpu else f"{self.device_name} ({self.device}), CPU {self.cpu}"
        return f"{on}; {self.compute}; torch {self.torch_version}, Python {self.python}"

    def _repr_html_(self) -> str:
        rows = "".join(f"<tr><th style='text-align:left'>{k}</th><td style='text-align:left'>{html.escape(str(v))}"
                       "</td></tr>" for k, v in self.to_dict().items())
        return f"<table>{rows}</table>"

    def to_dict(self) -> dict[str, Any]:
        return {"device": self.device, "device_name": self.device_name, "cpu": self.cpu, **self.compute.to_dict(),
                "torch_version": self.torch_version, "python": self.python}


def machine_info(device: str | torch.device = "cpu") -> Machine:
    """What a recorded result must name: device, CPU, cores, threads, OpenMP wait policy, load average, torch
    (``machine_info().to_dict()`` is the recorded form)."""
    return Machine(str(device), device_name(device), cpu_name(), compute_info(), torch.__version__,
                   platform.python_version())
