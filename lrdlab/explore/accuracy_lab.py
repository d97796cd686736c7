"""Accuracy for the explorers: a trained model, decomposed and calibrated, scored on held-out data (cached).

Decomposition is the library's data-aware one with BatchNorm re-estimation
(``lrdlab.decompose(model, plan, calibration=batches)``; :data:`CALIBRATION` names it in every
readout), scored on the whole 1,000-image MNIST-5k test split, the README's. Trained models are the ones lrdlab
ships (``lrdlab.pretrained(name)``; ResNet-20 by default, any other shipped model by name, e.g.
``AccuracyLab("vit_tiny_mnist5k")``). A shipped grid (:func:`grid_path`, recorded by
:mod:`tools.record.explorer_grids`) answers the plans it holds when its weights, calibration and images match.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from importlib.resources import files
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lrdlab.explore.lab_models import ACCURACY_IMAGES, DEFAULT_ACCURACY_IMAGES, DEFAULT_PRETRAINED
from lrdlab.lowrank.decompose import decompose
from lrdlab.lowrank.plan import Plan
from lrdlab.measure.cache import default_cache_dir, read_json

DATA: dict[str, Any] = {"data": "mnist5k", "seed": 0}  # the data the shipped trained models were trained on


CALIBRATION = "data-aware + BN re-estimation (lrdlab.decompose(..., calibration=))"


def grid_path(name: str) -> Path:
    """The shipped accuracy and structure grid of a trained model (``lrdlab/explore/reference/``)."""
    return Path(str(files("lrdlab.explore") / "reference")) / f"explorer_grid_{name}.json"


# --- trained models ----------------------------------------------------------------------------------


def trained_model(name: str = DEFAULT_PRETRAINED) -> nn.Module:
    """A trained reference model shipped with lrdlab (:func:`lrdlab.pretrained`), in eval mode."""
    from lrdlab.zoo.pretrained import pretrained

    return pretrained(name).eval()


def data_loaders(cache_dir: Path | None = None, subset: int | None = None, batch_size: int = 128):
    """MNIST-5k loaders at the models' 3×32×32 input (test split: the same 1,000 images for every subset)."""
    from lrdlab.zoo.data import Images, get_loaders

    return get_loaders(DATA["data"], batch_size, Images(channels=3), subset=subset, seed=DATA["seed"],
                       cache_dir=cache_dir)


def plan_key(plan: Plan) -> str:
    """A short stable key for a plan's ranks and forms (the accuracy cache's key)."""
    rows = [(r.name, r.method, list(r.ranks or []), getattr(r, "branches", 1)) for r in plan.decomposed_layers]
    text = json.dumps(rows, default=str)
    return hashlib.sha1(text.encode()).hexdigest()[:16]


class AccuracyLab:
    """Test accuracy of a trained model after calibrated decomposition with a plan, cached in memory and on disk.

    ``calibration_images`` train images calibrate (data-aware fit, BN statistics), ``test_images`` held-out
    images score. Defaults per architecture (:data:`~lrdlab.explore.lab_models.ACCURACY_IMAGES`): the whole
    1,000-image test split; 128 calibration images for ResNet-20, 32 for vit_tiny. ``use_grid``: answer the plans
    of the shipped grid from the file (:attr:`grid_keys`) when it was recorded with these :meth:`settings`.
    """

    def __init__(self, name: str = DEFAULT_PRETRAINED, calibration_images: int | None = None,
                 test_images: int | None = None, cache_dir: Path | None = None, use_grid: bool = True):
        from lrdlab.zoo.pretrained import pretrained_info

        info = pretrained_info(name)
        if info.data != DATA["data"]:
            raise ValueError(f"{name!r} was trained on {info.data!r}; the explorers score on {DATA['data']!r} "
                             "only: choose a model trained on it")
        default = ACCURACY_IMAGES.get(info.model, DEFAULT_ACCURACY_IMAGES)
        calibration_images, test_images = calibration_images or default[0], test_images or default[1]
        self.name, self.cache_dir = name, Path(cache_dir or default_cache_dir())
        self.model = trained_model(name)
        weights = hashlib.sha1(b"".join(p.detach().numpy().tobytes()[:4096] for p in self.model.parameters()))
        self.weights = weights.hexdigest()[:10]
        key = f"{name}_{self.weights}_corrected_{calibration_images}_{test_images}"
        self.path = self.cache_dir / f"accuracy_{key}.json"
        loaders = data_loaders(cache_dir)
        train = iter(loaders.train)
        batches: list[torch.Tensor] = []
        while sum(len(x) for x in batches) < calibration_images:
            batches.append(next(train)[0])
        self.calibration = [torch.cat(batches)[:calibration_images]]  # exactly that many images
        xs, ys = zip(*[(x, y) for x, y in loaders.test])
        self.test_x, self.test_y = torch.cat(xs)[:test_images], torch.cat(ys)[:test_images]
        try:
            self.memo: dict[str, float] = json.loads(self.path.read_text())
        except (OSError, ValueError):
            self.memo = {}
        self.grid_keys: set[str] = set()
        self.structures: dict[str, dict[str, Any]] = {}  # plan key → params and FLOPs (one image), from the grid
        if use_grid:
            self._read_grid()
        self.last_seconds = 0.0

    def settings(self) -> dict[str, Any]:
        """What an accuracy here depends on besides the plan: weights, calibration and images."""
        return {"pretrained": self.name, "weights": self.weights, "calibration": CALIBRATION,
                "calibration_mode": "corrected", "calibration_images": sum(len(x) for x in self.calibration),
                "test_images": len(self.test_y)}

    def _read_grid(self) -> None:
        grid = read_json(grid_path(self.name))
        if not grid or any(grid.get(k) != v for k, v in self.settings().items()):
            return  # none shipped, or recorded with other weights/calibration/images: score live instead
        before = {"params_before": grid["original"]["params"], "flops_before": grid["original"]["flops"]}
        for row in grid["rows"]:
            self.memo[row["plan"] + CALIBRATION[:4]] = float(row["accuracy"])
            self.grid_keys.add(row["plan"] + CALIBRATION[:4])
            self.structures[row["plan"]] = {**before, "params_after": row["params"], "flops_after": row["flops"],
                                            "layers": row["layers"]}
        self.memo["original"] = float(grid["original"]["accuracy"])
        self.grid_keys.add("original")

    def known(self, plan: Plan) -> bool:
        """The plan's accuracy is at hand (the shipped grid, this session or the disk memo): no scoring."""
        return self._key(plan) in self.memo

    def structure(self, plan: Plan) -> dict[str, Any] | None:
        """Params and FLOPs (one image) of the original and the planned model from the shipped grid, or None."""
        return self.structures.get(plan_key(plan))

    def source(self, plan: Plan | None = None) -> str:
        """Where an accuracy comes from: ``"recorded grid"`` (the shipped file) or ``"scored here"``."""
        key = "original" if plan is None else self._key(plan)
        return "recorded grid" if key in self.grid_keys else "scored here"

    @torch.no_grad()
    def score(self, model: nn.Module) -> float:
        """Top-1 accuracy (%) on the held-out images."""
        model.eval()
        hits = sum(int((model(x).argmax(1) == y).sum()) for x, y in zip(self.test_x.split(250), self.test_y.split(250)))
        return 100.0 * hits / len(self.test_y)

    def original(self) -> float:
        return self.cached("original", lambda: self.score(self.model))

    def accuracy(self, plan: Plan) -> float:
        """Calibrated accuracy of the model decomposed with ``plan`` (computed once per plan)."""
        return self.cached(self._key(plan), lambda: self._score_plan(plan))

    @staticmethod
    def _key(plan: Plan) -> str:
        return plan_key(plan) + CALIBRATION[:4]

    def _score_plan(self, plan: Plan) -> float:
        if not plan.decomposed_layers:  # every layer kept: the original model itself (no BN re-estimation)
            return self.original()
        return self.score(decompose(self.model, plan, calibration=self.calibration).eval())

    def prefetch(self, plans: Sequence[Plan], on_done: Callable[[int, int], None] | None = None) -> None:
        """Compute the accuracies of ``plans`` not seen before at once, one per core (each on one torch thread):
        an explorer move needs two plans (unrounded and rounded), and on 2 cores they take the time of one.
        ``on_done(done, total)`` after each plan (a progress bar); on one core the plans are scored in turn."""
        todo = {key: p for p in plans if (key := self._key(p)) not in self.memo}
        workers = min(len(todo), os.cpu_count() or 1)
        start, threads = time.perf_counter(), torch.get_num_threads()
        if workers < 2:
            for i, plan in enumerate(todo.values()):
                self.accuracy(plan)
                if on_done is not None:
                    on_done(i + 1, len(todo))
            return

        def one(key: str, plan: Plan) -> None:
            torch.set_num_threads(1)
            with torch.inference_mode(False):
                self.memo[key] = self._score_plan(plan)
            self.grid_keys.discard(key)
            if on_done is not None:
                on_done(sum(k in self.memo for k in todo), len(todo))

        try:
            with ThreadPoolExecutor(workers) as pool:
                list(pool.map(one, todo, todo.values()))
        finally:
            torch.set_num_threads(threads)  # where the thread count is process-wide, the caller's comes back
        self._save()
        self.last_seconds = time.perf_counter() - start

    def _save(self) -> None:
        """The memo, on disk: a setting seen in an earlier session is instant."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text(json.dumps(self.memo))

    def cached(self, key: str, compute: Callable[[], float]) -> float:
        start = time.perf_counter()
        if key not in self.memo:
            with torch.inference_mode(False):
                self.memo[key] = float(compute())
            self._save()
        self.last_seconds = time.perf_counter() - start
        return self.memo[key]
