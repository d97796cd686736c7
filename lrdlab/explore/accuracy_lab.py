"""Accuracy for the explorers: a trained model, decomposed and calibrated, scored on held-out data (cached).

The seam to the library's data-aware decomposition is one function, :func:`calibrated_decompose`:
today it is the weight-only decomposition followed by a BatchNorm re-estimation written here
(:func:`reestimate_bn`); when ``lrdlab.decompose(model, plan, calibration=batches)`` exists it is used
instead (:data:`CALIBRATION` names which one ran, and every readout says so).

Trained models come from ``lrdlab.pretrained(name)`` when the package ships it, otherwise they are
trained here once with :func:`lrdlab.fit` and cached under the lrdlab cache folder
(:func:`trained_model`).
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Iterable, Sequence
from importlib.resources import files
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lrdlab.lowrank.decompose import decompose
from lrdlab.lowrank.plan import Plan
from lrdlab.measure.cache import default_cache_dir
from lrdlab.zoo import models

TRAIN_RECIPE: dict[str, Any] = {"data": "mnist5k", "epochs": 4, "lr": 0.1, "batch_size": 128, "seed": 0}
TRAINED = {"resnet20_mnist5k": "resnet20"}  # trained-model name → architecture in the zoo


def _batches(batches: Iterable[Any]) -> list[torch.Tensor]:
    xs = [b[0] if isinstance(b, (tuple, list)) else b for b in batches]
    if not xs or not all(isinstance(x, torch.Tensor) for x in xs):
        raise ValueError("calibration needs a non-empty iterable of image tensors (N, C, H, W) or (x, y) tuples")
    return xs


@torch.no_grad()
def reestimate_bn(model: nn.Module, batches: Iterable[Any]) -> nn.Module:
    """Re-estimate every BatchNorm's running mean/var as the cumulative average over ``batches``; eval mode after."""
    xs = _batches(batches)
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [(m, m.momentum) for m in bns]
    model.eval()
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average
        m.train()
    try:
        for x in xs:
            model(x)
    finally:
        for m, momentum in saved:
            m.momentum = momentum
        model.eval()
    return model


def _library_decompose() -> Callable[..., nn.Module] | None:
    import inspect

    import lrdlab

    fn = getattr(lrdlab, "decompose", None)
    try:
        return fn if fn is not None and "calibration" in inspect.signature(fn).parameters else None
    except (TypeError, ValueError):
        return None


CALIBRATION = "data-aware (lrdlab.decompose)" if _library_decompose() else "weights + BN re-estimation"


def calibrated_decompose(model: nn.Module, plan: Plan, batches: Sequence[Any]) -> nn.Module:
    """The decomposed, calibrated copy of ``model`` (the original is untouched): the one seam to swap."""
    library = _library_decompose()
    if library is not None:
        return library(model, plan, calibration=batches).eval()
    return reestimate_bn(decompose(model, plan), batches)


# --- trained models ----------------------------------------------------------------------------------


def trained_model(name: str = "resnet20_mnist5k", cache_dir: Path | None = None,
                  progress: Callable[[str], None] | None = None) -> nn.Module:
    """A trained reference model: ``lrdlab.pretrained(name)`` when the library has it, else the weights shipped in
    ``explore/reference/<name>.pt`` (float16; recipe and accuracy in the ``.json`` beside), else trained here once
    with :data:`TRAIN_RECIPE` and cached."""
    import lrdlab

    if hasattr(lrdlab, "pretrained"):
        return lrdlab.pretrained(name).eval()
    if name not in TRAINED:
        raise ValueError(f"unknown trained model {name!r}; available: {sorted(TRAINED)}")
    arch = TRAINED[name]
    r = TRAIN_RECIPE
    path = Path(cache_dir or default_cache_dir()) / f"trained_{name}_e{r['epochs']}_s{r['seed']}.pt"
    net = models.get_model(arch, num_classes=10)
    shipped = Path(str(files("lrdlab.explore") / "reference" / f"{name}.pt"))
    for source in (shipped, path):
        if source.is_file():
            state = torch.load(source, map_location="cpu")
            net.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()})
            return net.eval()
    from lrdlab.finetune.loop import fit, set_seed

    if progress:
        progress(f"training {arch} on {r['data']} for {r['epochs']} epochs (once; cached at {path})")
    loaders = data_loaders(cache_dir)
    set_seed(r["seed"])
    fit(net, loaders.train, loaders.test, r["epochs"], r["lr"], seed=r["seed"], progress=False)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(net.state_dict(), path)
    return net.eval()


def data_loaders(cache_dir: Path | None = None, subset: int | None = None, batch_size: int = 128):
    """MNIST-5k loaders at the models' 3×32×32 input (test split: the same 1,000 images for every subset)."""
    from lrdlab.zoo.data import get_loaders

    root = Path(cache_dir or default_cache_dir())
    return get_loaders(TRAIN_RECIPE["data"], batch_size, subset=subset, seed=TRAIN_RECIPE["seed"], channels=3,
                       cache_dir=root / "datasets" if cache_dir else None)


def plan_key(plan: Plan) -> str:
    """A short stable key for a plan's ranks and forms (the accuracy cache's key)."""
    rows = [(r.name, r.method, list(r.ranks or []), getattr(r, "branches", 1)) for r in plan.decomposed_layers]
    text = json.dumps(rows, default=str)
    return hashlib.sha1(text.encode()).hexdigest()[:16]


class AccuracyLab:
    """Test accuracy of a trained model after calibrated decomposition with a plan, cached in memory and on disk.

    ``calibration_images`` train images calibrate (BN statistics), ``test_images`` held-out images score
    (300 by default: ±2.6 points binomial standard error near 80%, and ≈1.5 s per new plan on 2 quiet cores).
    """

    def __init__(self, name: str = "resnet20_mnist5k", calibration_images: int = 128, test_images: int = 300,
                 cache_dir: Path | None = None):
        self.name, self.cache_dir = name, Path(cache_dir or default_cache_dir())
        self.model = trained_model(name, cache_dir)
        weights = hashlib.sha1(b"".join(p.detach().numpy().tobytes()[:4096] for p in self.model.parameters()))
        key = f"{name}_{weights.hexdigest()[:10]}_{calibration_images}_{test_images}"
        self.path = self.cache_dir / f"accuracy_{key}.json"
        loaders = data_loaders(cache_dir)
        train = iter(loaders.train)
        self.calibration: list[torch.Tensor] = []
        while sum(len(x) for x in self.calibration) < calibration_images:
            self.calibration.append(next(train)[0])
        xs, ys = zip(*[(x, y) for x, y in loaders.test])
        self.test_x, self.test_y = torch.cat(xs)[:test_images], torch.cat(ys)[:test_images]
        try:
            self.memo: dict[str, float] = json.loads(self.path.read_text())
        except (OSError, ValueError):
            self.memo = {}
        self.last_seconds = 0.0

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
        return self.cached(plan_key(plan) + CALIBRATION[:4],
                           lambda: self.score(calibrated_decompose(self.model, plan, self.calibration)))

    def cached(self, key: str, compute: Callable[[], float]) -> float:
        start = time.perf_counter()
        if key not in self.memo:
            with torch.inference_mode(False):
                self.memo[key] = float(compute())
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.path.write_text(json.dumps(self.memo))
        self.last_seconds = time.perf_counter() - start
        return self.memo[key]
