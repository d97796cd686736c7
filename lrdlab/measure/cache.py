"""The one cache rule (``$LRDLAB_CACHE``, else ``~/.cache/lrdlab``) and the one layer-time cache.

:class:`TimeCache` serves both the rank search (:mod:`lrdlab.measure.rank_search`) and the rank
explorer (:mod:`lrdlab.explore.rank_lab`). It stores every timing sample with its spread, so a noisy
first measurement is not kept forever: an entry whose relative spread exceeds ``max_spread`` is a
miss and is measured again. A read-only reference file (shipped with the explorers, measured on
the machine it names) answers what this machine has not measured.
"""

from __future__ import annotations

import json
import os
import statistics
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from lrdlab.measure import timing as measure
from lrdlab.measure.machine import device_name, machine_info

VERSION = 2


def default_cache_dir() -> Path:
    """Where every lrdlab cache lives: ``$LRDLAB_CACHE``, else ``~/.cache/lrdlab`` (never the current directory)."""
    return Path(os.environ.get("LRDLAB_CACHE", Path.home() / ".cache" / "lrdlab"))


def read_json(path: str | Path | None) -> dict[str, Any]:
    """A JSON file's object, or ``{}`` when it is missing or damaged (a cache is only ever lost time)."""
    if path is None:
        return {}
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def shape_key(info: dict[str, Any], input_shape: Sequence[int], method: str, device: str, dtype: str | None,
              backward: bool, timing: dict[str, Any] | None = None) -> str:
    """The cache key of one layer configuration: layer shape, input shape, method, device, dtype, batch, pass.

    ``timing`` (warm-up, repeats, rounds) is part of the key: a more careful measurement is not
    answered by a cheaper one. Torch threads are too: a time on 2 threads says nothing about 1.
    """
    dev = torch.device(device)
    return json.dumps({
        "layer": info, "input": list(input_shape), "method": method, "device": dev.type,
        "device_name": device_name(dev), "dtype": measure.check_dtype(dtype), "batch": int(input_shape[0]),
        "backward": bool(backward), "torch": torch.__version__, "threads": torch.get_num_threads(),
        "timing": timing or {},
    }, sort_keys=True)


def spread(samples: Sequence[float]) -> float | None:
    """Relative interquartile range (q3 − q1) / median of the samples; None below 3 samples (unknown)."""
    if len(samples) < 3:
        return None
    q1, med, q3 = measure.quartiles(list(samples))
    return (q3 - q1) / med if med > 0 else None


def _entry(samples: Sequence[float]) -> dict[str, Any]:
    s = [float(x) for x in samples]
    return {"samples": s, "median_s": statistics.median(s), "spread": spread(s)}


def _legacy_reference(times: dict[str, float]) -> dict[str, dict[str, dict[str, Any]]]:
    """The explorer's first format, ``{"model|layer|ranks|shape": ms}``, as entries (seconds)."""
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for flat, ms in times.items():
        parts = flat.split("|")
        if len(parts) == 4 and isinstance(ms, (int, float)):
            model, layer, label, shape = parts
            out.setdefault(f"{model}|{layer}|{shape}", {})[label] = _entry([ms / 1e3])
    return out


class TimeCache:
    """Layer-time samples (seconds) by configuration key and variant label, persisted as one JSON file.

    ``directory`` (None: :func:`default_cache_dir`) holds ``layer_times.json``; ``path`` names the file
    directly; ``persist=False`` keeps the samples in memory only. ``reference`` is a read-only file consulted after this
    machine's own entries (:meth:`lookup`). :meth:`get` returns own samples only, and treats an
    entry whose spread exceeds ``max_spread`` as missing (``stale`` counts those).
    """

    def __init__(self, directory: str | Path | None = None, filename: str = "layer_times.json", *,
                 path: str | Path | None = None, reference: str | Path | None = None,
                 max_spread: float | None = 0.25, persist: bool = True) -> None:
        if not persist:
            self.path: Path | None = None
        elif path is not None:
            self.path = Path(path)
        else:
            self.path = Path(directory or default_cache_dir()) / filename
        self.max_spread = max_spread
        self.entries = self._entries(read_json(self.path))
        ref = read_json(reference)
        self.reference = self._entries(ref)
        self.reference_machine: dict[str, Any] = ref.get("machine", {})
        self.hits = self.misses = self.stale = 0

    @staticmethod
    def _entries(data: dict[str, Any]) -> dict[str, dict[str, dict[str, Any]]]:
        if data.get("version") == VERSION:
            return data.get("entries", {})
        if "times" in data and isinstance(data["times"], dict):
            return _legacy_reference(data["times"])
        return {}  # an older or foreign format: measured again

    # --- the rank search's view: own samples, re-measured when too noisy --------------------------

    def get(self, key: str, label: str) -> list[float] | None:
        """This machine's samples of ``(key, label)``, or None when missing or too noisy to trust."""
        entry = self.entries.get(key, {}).get(label)
        if entry is None:
            self.misses += 1
            return None
        wide = entry.get("spread")
        if self.max_spread is not None and wide is not None and wide > self.max_spread:
            self.misses += 1
            self.stale += 1
            return None
        self.hits += 1
        return list(entry["samples"])

    def put(self, key: str, label: str, samples: Sequence[float]) -> None:
        """Store (replace) the samples of ``(key, label)`` with their median and spread."""
        if not samples:
            raise ValueError("no samples to cache")
        self.entries.setdefault(key, {})[label] = _entry(samples)

    def put_all(self, key: str | None, samples: Mapping[str, Sequence[float]]) -> None:
        """:meth:`put` every label's samples (no-op without a key)."""
        if key is not None:
            for label, s in samples.items():
                self.put(key, label, s)

    # --- the explorer's view: own entries over the reference ------------------------------------

    def _find(self, key: str, label: str) -> tuple[dict[str, Any], str] | None:
        """``(entry, source)`` of ``(key, label)``: own entries first, then the reference."""
        for source, table in (("here", self.entries), ("reference", self.reference)):
            entry = table.get(key, {}).get(label)
            if entry is not None:
                return entry, source
        return None

    def lookup(self, key: str, label: str) -> tuple[float, str] | None:
        """``(median seconds, source)``: source ``"here"`` or ``"reference"``; None when neither has it."""
        found = self._find(key, label)
        return (float(found[0]["median_s"]), found[1]) if found else None

    def samples(self, key: str, label: str) -> list[float]:
        """The stored samples (seconds) behind :meth:`lookup`'s median; [] when there are none."""
        found = self._find(key, label)
        return [float(x) for x in found[0].get("samples", [])] if found else []

    def labels(self, key: str) -> dict[str, tuple[float, str]]:
        """Every label known under ``key``: ``{label: (median seconds, source)}``, own entries winning."""
        out = {label: (float(e["median_s"]), "reference") for label, e in self.reference.get(key, {}).items()}
        out.update({label: (float(e["median_s"]), "here") for label, e in self.entries.get(key, {}).items()})
        return out

    def save(self, **extra: Any) -> None:
        """Write the file atomically, merged over what another process may have written meanwhile."""
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        merged = self._entries(read_json(self.path))
        for key, labels in self.entries.items():
            merged.setdefault(key, {}).update(labels)
        self.entries = merged
        data = {"version": VERSION, "machine": machine_info().to_dict(), "entries": merged, **extra}
        tmp = self.path.with_suffix(f".tmp{os.getpid()}")
        tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
        tmp.replace(self.path)
