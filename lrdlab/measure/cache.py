"""The one cache rule (``$LRDLAB_CACHE``, else ``~/.cache/lrdlab``) and the layer-time cache."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from lrdlab.measure import timing as measure
from lrdlab.measure.machine import device_name

AUTO = "auto"  # a cache directory argument meaning default_cache_dir()


def default_cache_dir() -> Path:
    """Where every lrdlab cache lives: ``$LRDLAB_CACHE``, else ``~/.cache/lrdlab`` (never the current directory)."""
    return Path(os.environ.get("LRDLAB_CACHE", Path.home() / ".cache" / "lrdlab"))



# --- the timing cache --------------------------------------------------------------------------------


def shape_key(info: dict[str, Any], input_shape: Sequence[int], method: str, device: str, dtype: str | None,
              backward: bool, timing: dict[str, Any] | None = None) -> str:
    """The cache key of one layer configuration: layer shape, input shape, method, device, dtype, batch, pass.

    ``timing`` (warm-up, repeats, rounds) is part of the key: a more careful measurement is not
    answered by a cheaper one.
    """
    dev = torch.device(device)
    return json.dumps({
        "layer": info, "input": list(input_shape), "method": method, "device": dev.type,
        "device_name": device_name(dev), "dtype": measure.check_dtype(dtype), "batch": int(input_shape[0]),
        "backward": bool(backward), "torch": torch.__version__, "threads": torch.get_num_threads(),
        "timing": timing or {},
    }, sort_keys=True)


class TimingCache:
    """Layer times (seconds) by shape key and rank label, persisted as one JSON file (None: memory only)."""

    def __init__(self, directory: str | Path | None = AUTO, filename: str = "layer_times.json") -> None:
        if directory == AUTO:
            directory = default_cache_dir()
        self.path = Path(directory) / filename if directory is not None else None
        self.data: dict[str, dict[str, float]] = {}
        self.hits = self.misses = 0
        if self.path is not None and self.path.exists():
            try:
                self.data = json.loads(self.path.read_text())
            except json.JSONDecodeError:
                self.data = {}  # a damaged cache is only lost time, never wrong numbers: start afresh

    def get(self, key: str, label: str) -> float | None:
        value = self.data.get(key, {}).get(label)
        if value is None:
            self.misses += 1
        else:
            self.hits += 1
        return value

    def put(self, key: str, label: str, seconds: float) -> None:
        self.data.setdefault(key, {})[label] = float(seconds)

    def save(self) -> None:
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(f".tmp{os.getpid()}")
        tmp.write_text(json.dumps(self.data))
        tmp.replace(self.path)

