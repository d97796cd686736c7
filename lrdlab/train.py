"""Training and fine-tuning: ``fit`` / ``evaluate`` with freezing, checkpoints, resume and DDP.

``fit`` works unchanged under ``torchrun --nproc_per_node=N``: call :func:`init_distributed` first
(the CLI does), build the loaders with :func:`lrdlab.data.get_loaders` (a ``DistributedSampler``
splits each global batch across ranks) and ``fit`` wraps the model in ``DistributedDataParallel``
(gloo on CPU, NCCL on GPU). Only rank 0 writes checkpoints and shows progress bars.
"""

from __future__ import annotations

import copy
import fnmatch
import os
import random
import time
from collections.abc import Callable, Iterable
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.distributed as dist
from torch import nn
from tqdm.auto import tqdm

from .data import world
from .freezing import Freezer

OPTIMIZERS = ("sgd", "adamw")
SCHEDULES = ("onecycle", "cosine", "constant")


# --- setup -------------------------------------------------------------------------------------------


def set_seed(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and CUDA)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def init_distributed(backend: str | None = None) -> bool:
    """Join the process group ``torchrun`` describes (``WORLD_SIZE`` > 1); True when distributed.

    Backend: ``nccl`` when CUDA is available, else ``gloo``. A no-op when not under torchrun.
    """
    if dist.is_initialized():
        return True
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    backend = backend or ("nccl" if torch.cuda.is_available() else "gloo")
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend)
    return True


def _all_sum(values: list[float], device: torch.device) -> list[float]:
    t = torch.tensor(values, dtype=torch.float64, device=device)
    if world()[1] > 1:
        dist.all_reduce(t)
    return t.tolist()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _correct(logits: torch.Tensor, labels: torch.Tensor, k: int) -> tuple[int, int]:
    """(top-1 correct, top-k correct) in a batch."""
    topk = logits.topk(min(k, logits.shape[1]), dim=1).indices
    hits = topk.eq(labels[:, None])
    return int(hits[:, 0].sum()), int(hits.any(dim=1).sum())


# --- evaluation ----------------------------------------------------------------------------------------


@torch.no_grad()
def evaluate(model: nn.Module, loader: Iterable, device: str | torch.device = "cpu", progress: bool = False,
             desc: str = "eval") -> dict[str, float]:
    """Loss, top-1 and top-5 accuracy (%) of ``model`` on ``loader``; summed over ranks when distributed.

    Also returns ``images``, ``eval_s`` (wall time) and ``eval_img_s`` (inference throughput, including
    data loading).
    """
    dev = torch.device(device)
    was_training = model.training
    model.eval()
    loss_sum, top1, top5, n = 0.0, 0, 0, 0
    t0 = time.perf_counter()
    for x, y in tqdm(loader, desc=desc, leave=False, disable=not progress or world()[0] != 0):
        x, y = x.to(dev, non_blocking=True), y.to(dev, non_blocking=True)
        out = model(x)
        loss_sum += float(nn.functional.cross_entropy(out, y, reduction="sum"))
        c1, c5 = _correct(out, y, 5)
        top1, top5, n = top1 + c1, top5 + c5, n + len(y)
    _sync(dev)
    seconds = time.perf_counter() - t0
    model.train(was_training)
    loss_sum, top1, top5, n = _all_sum([loss_sum, top1, top5, n], dev)
    if n == 0:
        raise ValueError("evaluate got an empty loader")
    return {"loss": loss_sum / n, "accuracy": 100.0 * top1 / n, "top5": 100.0 * top5 / n, "images": int(n),
            "eval_s": seconds, "eval_img_s": n / seconds}


# --- optimiser and schedule ------------------------------------------------------------------------------


def make_optimizer(model: nn.Module, name: str = "sgd", lr: float = 0.05, momentum: float = 0.9,
                   weight_decay: float = 5e-4) -> torch.optim.Optimizer:
    """SGD (Nesterov off) or AdamW over *all* parameters: frozen ones have ``grad=None`` and are skipped."""
    params = list(model.parameters())
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {name!r}")


def make_scheduler(optimizer: torch.optim.Optimizer, name: str, lr: float, total_steps: int):
    """Per-iteration LR schedule: OneCycle (default), cosine to zero, or constant (None)."""
    if name == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=max(total_steps, 1))
    if name == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(total_steps, 1))
    if name == "constant":
        return None
    raise ValueError(f"schedule must be one of {SCHEDULES}, got {name!r}")


# --- checkpoints -----------------------------------------------------------------------------------------


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    """Write atomically (temp file + rename), so an interruption never leaves a half-written checkpoint."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    tmp.replace(path)


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint written by :func:`fit` (a file you wrote: it holds pickled optimiser state)."""
    return torch.load(path, map_location="cpu", weights_only=False)


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def _wrap_ddp(model: nn.Module, freezer: Freezer | None, device: torch.device) -> nn.Module:
    """DDP that tolerates freezing: every parameter is registered (requires_grad on while wrapping),
    and ``find_unused_parameters`` lets the frozen set change from step to step."""
    freezing = freezer is not None and freezer.mode != "none"
    if freezing:
        for p in model.parameters():
            p.requires_grad_(True)
    ids = [device.index] if device.type == "cuda" else None
    ddp = nn.parallel.DistributedDataParallel(model, device_ids=ids, find_unused_parameters=freezing)
    if freezer is not None:
        freezer.apply()
    return ddp


# --- the loop --------------------------------------------------------------------------------------------


def _train_epoch(net, loader, optimizer, scheduler, criterion, freezer, epoch, iteration, device, bar, clip):
    net.train()
    loss_sum, correct, n = 0.0, 0, 0
    for x, y in bar(loader):
        if freezer is not None:
            freezer.sync(epoch, iteration)
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        optimizer.zero_grad(set_to_none=True)
        out = net(x)
        loss = criterion(out, y)
        loss.backward()
        if clip:
            nn.utils.clip_grad_norm_([p for p in net.parameters() if p.requires_grad], clip)
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        iteration += 1
        loss_sum += float(loss.detach()) * len(y)
        correct += int((out.detach().argmax(1) == y).sum())
        n += len(y)
    return loss_sum, correct, n, iteration


def fit(
    model: nn.Module,
    train_loader,
    test_loader,
    epochs: int,
    lr: float = 0.05,
    freezer: Freezer | None = None,
    *,
    optimizer: str = "sgd",
    momentum: float = 0.9,
    weight_decay: float = 5e-4,
    schedule: str = "onecycle",
    label_smoothing: float = 0.0,
    clip_grad_norm: float | None = None,
    device: str | torch.device = "cpu",
    seed: int = 0,
    checkpoint: str | Path | None = None,
    resume: bool = False,
    evaluate_start: bool = False,
    progress: bool = True,
    callbacks: Iterable[Callable[[dict[str, Any]], None]] = (),
    label: str = "",
) -> pd.DataFrame:
    """Train ``model`` for ``epochs`` and return the history, one row per epoch.

    Columns: ``epoch`` (1-based; 0 is the model before training when ``evaluate_start``), test
    ``loss``, ``accuracy`` and ``top5`` (%), ``train_loss``, ``train_accuracy``, ``epoch_s`` (training
    wall time of the epoch, evaluation excluded), ``wall_s`` (cumulative training seconds),
    ``train_img_s`` (images / ``epoch_s``, all ranks), ``eval_img_s``, ``lr``, ``trainable_params``,
    ``phase`` (freezing phase at the end of the epoch), ``world_size``, ``label``.

    ``checkpoint``: a file rewritten after every epoch (model, optimiser, schedule, history, RNG).
    ``resume=True`` continues from it — the same history, the same data order (the sampler is seeded
    by epoch) and the same freezing phase — so an interruption loses at most the current epoch.
    ``callbacks`` get each epoch's row (e.g. a live plot); an exception there stops training after
    the checkpoint was written.
    """
    if epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}")
    if freezer is not None and _unwrap(freezer.model) is not _unwrap(model):
        raise ValueError("the freezer was built for another model; build it as Freezer(model, ...) for this one")
    dev = torch.device(device)
    rank, size = world()
    set_seed(seed)
    model.to(dev)
    steps = len(train_loader)
    opt = make_optimizer(model, optimizer, lr, momentum, weight_decay)
    sched = make_scheduler(opt, schedule, lr, epochs * steps)
    records: list[dict[str, Any]] = []
    start, iteration = 0, 0
    ckpt = Path(checkpoint) if checkpoint else None
    if resume and ckpt is not None and ckpt.is_file():
        state = load_checkpoint(ckpt)
        if state["epochs"] != epochs or state["steps_per_epoch"] != steps:
            raise ValueError(f"checkpoint {ckpt} is for {state['epochs']} epochs of {state['steps_per_epoch']} "
                             f"steps, not {epochs} of {steps}; resume with the same --epochs, data and batch")
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        if sched is not None:
            sched.load_state_dict(state["scheduler"])
        if freezer is not None and state.get("freezer"):
            freezer.load_state_dict(state["freezer"])
        records, start, iteration = list(state["history"]), state["epoch"], state["iteration"]
        torch.set_rng_state(state["rng"])
    net = _wrap_ddp(model, freezer, dev) if size > 1 else model
    if freezer is not None:
        freezer.sync(start, iteration)
    criterion = nn.CrossEntropyLoss(label_smoothing=label_smoothing)
    show = progress and rank == 0
    wall = records[-1]["wall_s"] if records else 0.0

    def row(epoch: int, metrics: dict[str, float], extra: dict[str, Any]) -> dict[str, Any]:
        counts = freezer.counts() if freezer is not None else {
            "trainable": sum(p.numel() for p in model.parameters() if p.requires_grad)}
        return {"epoch": epoch, "loss": metrics["loss"], "accuracy": metrics["accuracy"], "top5": metrics["top5"],
                **extra, "wall_s": wall, "eval_img_s": metrics["eval_img_s"], "lr": opt.param_groups[0]["lr"],
                "trainable_params": counts["trainable"], "phase": freezer.phase if freezer is not None else 0,
                "world_size": size, "label": label}

    if evaluate_start and not records:
        empty = {"train_loss": float("nan"), "train_accuracy": float("nan"), "epoch_s": 0.0,
                 "train_img_s": float("nan")}
        records.append(row(0, evaluate(net, test_loader, dev), empty))
    epoch_bar = tqdm(range(start, epochs), desc=label or "fit", disable=not show, initial=start, total=epochs)
    for epoch in epoch_bar:
        sampler = getattr(train_loader, "sampler", None)
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(epoch)
        bar = partial(tqdm, desc=f"epoch {epoch + 1}", leave=False, total=steps, disable=not show)
        _sync(dev)
        t0 = time.perf_counter()
        loss_sum, correct, n, iteration = _train_epoch(net, train_loader, opt, sched, criterion, freezer, epoch,
                                                       iteration, dev, bar, clip_grad_norm)
        _sync(dev)
        seconds = time.perf_counter() - t0
        wall += seconds
        loss_sum, correct, n = _all_sum([loss_sum, correct, n], dev)
        metrics = evaluate(net, test_loader, dev)
        records.append(row(epoch + 1, metrics, {
            "train_loss": loss_sum / n, "train_accuracy": 100.0 * correct / n, "epoch_s": seconds,
            "train_img_s": n / seconds}))
        epoch_bar.set_postfix(acc=f"{metrics['accuracy']:.2f}", loss=f"{metrics['loss']:.3f}",
                              img_s=f"{n / seconds:.0f}")
        if ckpt is not None and rank == 0:
            save_checkpoint(ckpt, {
                "model": model.state_dict(), "optimizer": opt.state_dict(),
                "scheduler": sched.state_dict() if sched is not None else None, "history": records,
                "epoch": epoch + 1, "epochs": epochs, "steps_per_epoch": steps, "iteration": iteration,
                "freezer": freezer.state_dict() if freezer is not None else None, "rng": torch.get_rng_state(),
                "seed": seed,
            })
        for callback in callbacks:
            callback(records[-1])
    epoch_bar.close()
    return pd.DataFrame(records)


# --- the freezing study (F7, F8) ---------------------------------------------------------------------------

STUDY_SCHEMA = {
    "history": "one row per (variant, epoch): variant (original | lrd), mode (original | none | regular | "
               "sequential), epoch (0 = right after decomposition, before fine-tuning), accuracy / top5 (test %, "
               "top-1 / top-5), loss (test cross-entropy), train_loss, train_accuracy, epoch_s (training wall s of "
               "the epoch), wall_s (cumulative training s), train_img_s (images / epoch_s), eval_img_s, lr, "
               "trainable_params, phase (sequential freezing phase)",
    "throughput": "interleaved benchmark on one fixed batch (A B C D A B C D …, median of rounds): technique, "
                  "train_img_s, train_speedup_pct (median of per-round ratios vs original, %), infer_img_s, "
                  "infer_speedup_pct; sequential = time averaged over its phases; fit_train_img_s = median "
                  "per-epoch throughput of the actual training runs (sequential, not interleaved)",
}


STUDY_QUICK = {"epochs": 2, "finetune_epochs": 2, "subset": 1024, "bench_rounds": 3}
STUDY_FULL = {"epochs": 4, "finetune_epochs": 3, "subset": None, "bench_rounds": 5}


def _variant_throughput(models: dict[str, nn.Module], batch: tuple[int, ...], rounds: int,
                        device: str) -> dict[str, tuple[float, float]]:
    """(median s/step, median speed-up vs the first model) for each model, timed interleaved."""
    from .measure import compare

    df = compare(models, batch, mode="train", rounds=rounds, device=device, warmup=1, repeats=3)
    return {r["name"]: (r["median_s"], r["speedup_vs_first"]) for r in df.to_dict("records")}


def freezing_throughput(original: nn.Module, decomposed: nn.Module, batch: tuple[int, ...], rounds: int = 5,
                        device: str = "cpu", period_order=None) -> pd.DataFrame:
    """F7: training and inference throughput of original, LRD, LRD + regular and + sequential freezing.

    Every variant's training step is timed interleaved with the others (``measure.compare``); the
    sequential variant is timed once per phase 0..L-1 (each phase trains a different factor; L is the
    longest rotation, 3 for Tucker-2) and its time is the mean over those phases, since every phase
    lasts equally long.
    """
    from .measure import compare

    variants: dict[str, nn.Module] = {"original": original, "lrd": decomposed}
    regular = copy.deepcopy(decomposed)
    Freezer(regular, "regular")
    variants["lrd+regular"] = regular
    seq = copy.deepcopy(decomposed)
    freezer = Freezer(seq, "sequential", order=period_order)
    phases = max(len(o) for o in freezer.orders.values())
    for p in range(phases):
        freezer.update(p)
        variants[f"lrd+sequential[{p}]"] = copy.deepcopy(seq)
    train = _variant_throughput(variants, batch, rounds, device)
    infer = compare({"original": original, "lrd": decomposed}, batch, mode="inference", rounds=rounds,
                    device=device, warmup=1, repeats=5)
    infer_s = {r["name"]: (r["median_s"], r["speedup_vs_first"]) for r in infer.to_dict("records")}
    n = batch[0]
    seq_s = [train[f"lrd+sequential[{p}]"][0] for p in range(phases)]
    seq_speed = sum(train[f"lrd+sequential[{p}]"][1] ** -1 for p in range(phases)) / phases
    rows = []
    for tech, (ts, tsp), inf in (
        ("original", train["original"], "original"), ("lrd", train["lrd"], "lrd"),
        ("lrd+regular", train["lrd+regular"], "lrd"),
        ("lrd+sequential", (sum(seq_s) / phases, 1.0 / seq_speed), "lrd"),
    ):
        rows.append({"technique": tech, "train_img_s": n / ts, "train_speedup_pct": 100.0 * (tsp - 1),
                     "infer_img_s": n / infer_s[inf][0], "infer_speedup_pct": 100.0 * (infer_s[inf][1] - 1),
                     "batch": n, "rounds": rounds})
    for p in range(phases):
        ts, tsp = train[f"lrd+sequential[{p}]"]
        rows.append({"technique": f"lrd+sequential[{p}]", "train_img_s": n / ts,
                     "train_speedup_pct": 100.0 * (tsp - 1), "infer_img_s": float("nan"),
                     "infer_speedup_pct": float("nan"), "batch": n, "rounds": rounds})
    return pd.DataFrame(rows)


def run_freezing_study(
    model: str = "resnet20",
    data: str = "mnist5k",
    epochs: int = 6,
    finetune_epochs: int | None = None,
    ratio: float = 2.0,
    modes: Iterable[str] = ("none", "regular", "sequential"),
    period: int = 1,
    unit: str = "epoch",
    batch_size: int = 128,
    lr: float = 0.1,
    finetune_lr: float = 0.02,
    subset: int | None = None,
    exclude: Iterable[str] | None = ("conv1", "*.downsample.*"),
    seed: int = 0,
    cache_dir: str | Path | None = None,
    device: str = "cpu",
    bench_rounds: int = 5,
    out: str | Path | None = None,
    save_original: str | Path | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Train the original, decompose it at ``ratio``, fine-tune with each freezing mode; F7 + F8 data.

    ``save_original`` writes the trained original's ``state_dict`` there (e.g. for spectra plots).

    The original is trained from scratch for ``epochs``; its trained weights are decomposed
    (``make_plan(ratio, exclude)``) and each mode fine-tunes a copy for ``finetune_epochs`` (default
    ``epochs``) with the same data order. Returns ``{"history", "throughput", "settings", "machine",
    "schema"}`` (DataFrames for the first two) and writes them as JSON to ``out`` when given. Quick:
    ``run_freezing_study(**STUDY_QUICK)`` takes ~2-3 minutes on 2 quiet cores; ``STUDY_FULL`` is the
    recorded ``data/freezing_mnist5k.json``.
    """
    from .data import get_loaders
    from .measure import machine_info
    from .models import get_model
    from .plan import decompose, make_plan

    finetune_epochs = finetune_epochs or epochs
    modes = list(modes)
    settings = {k: v for k, v in locals().items() if k in (
        "model", "data", "epochs", "finetune_epochs", "ratio", "modes", "period", "unit", "batch_size", "lr",
        "finetune_lr", "subset", "seed", "device", "bench_rounds")}
    settings["exclude"] = list(exclude or [])
    from .models import input_size

    small = data in ("mnist5k", "digits")  # embedded grey digits: repeat to the model's channels
    loaders = get_loaders(data, batch_size, cache_dir=cache_dir, subset=subset, seed=seed,
                          channels=input_size(model)[0] if small else None)
    set_seed(seed)
    original = get_model(model, num_classes=loaders.num_classes)
    histories = [fit(original, loaders.train, loaders.test, epochs, lr, device=device, seed=seed,
                     progress=progress, label="original").assign(variant="original", mode="original")]
    original = original.cpu().eval()
    if save_original is not None:
        Path(save_original).parent.mkdir(parents=True, exist_ok=True)
        torch.save(original.state_dict(), save_original)
    names = [n for n, m in original.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    exclude = [p for p in exclude or [] if any(fnmatch.fnmatchcase(n, p) for n in names)]  # paper's, where they apply
    plan = make_plan(original, ratio=ratio, exclude=exclude or None, model_name=model)
    decomposed = decompose(original, plan)
    settings["exclude_applied"] = exclude
    settings["decomposed_layers"] = len(plan.decomposed_layers)
    for mode in modes:
        net = copy.deepcopy(decomposed)
        freezer = Freezer(net, mode, period=period, unit=unit)
        h = fit(net, loaders.train, loaders.test, finetune_epochs, finetune_lr, freezer, device=device, seed=seed,
                evaluate_start=True, progress=progress, label=f"lrd {mode}")
        histories.append(h.assign(variant="lrd", mode=mode))
    history = pd.concat(histories, ignore_index=True)
    c, hgt, wid = loaders.input_size
    throughput = freezing_throughput(original, decomposed.eval(), (batch_size, c, hgt, wid), bench_rounds, device)
    fit_speed = history[history["epoch"] > 0].groupby("mode")["train_img_s"].median()
    throughput["fit_train_img_s"] = throughput["technique"].map(
        lambda t: fit_speed.get("original" if t == "original" else
                                "none" if t == "lrd" else t.removeprefix("lrd+"), float("nan")))
    from .counting import count_params

    settings["params"] = {"original": count_params(original), "decomposed": count_params(decomposed)}
    result = {"history": history, "throughput": throughput, "settings": settings,
              "machine": machine_info(device), "schema": STUDY_SCHEMA}
    if out is not None:
        save_study(result, out)
    return result


def save_study(result: dict[str, Any], path: str | Path) -> Path:
    """Write a freezing study as one JSON file (DataFrames as lists of records)."""
    import json

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    plain = {k: (v.to_dict("records") if isinstance(v, pd.DataFrame) else v) for k, v in result.items()}
    path.write_text(json.dumps(plain, indent=1, default=float) + "\n")
    return path


def load_study(path: str | Path) -> dict[str, Any]:
    """Read a saved freezing study back (``history`` and ``throughput`` as DataFrames)."""
    import json

    raw = json.loads(Path(path).read_text())
    return {k: (pd.DataFrame(v) if k in ("history", "throughput") else v) for k, v in raw.items()}


# --- one training run with its files (the ``lrdlab train`` command) ---------------------------------------


def train_and_save(model: nn.Module, loaders, out: str | Path, *, plan=None, freeze: str = "none", period: int = 1,
                   unit: str = "epoch", epochs: int = 6, lr: float = 0.05, resume: bool = False,
                   device: str = "cpu", seed: int = 0, progress: bool = True, label: str = "",
                   **fit_kw: Any) -> pd.DataFrame:
    """Decompose ``model`` by ``plan`` (if given), fine-tune with freezing, and write into ``out``:

    ``history.csv`` / ``history.json`` (the :func:`fit` history), ``checkpoint.pt`` (rewritten every
    epoch; ``resume=True`` continues from it), and the trained weights — ``plan.json`` +
    ``state_dict.pt`` (reload with :func:`lrdlab.load_decomposed`) or ``state_dict.pt`` alone.
    Under torchrun only rank 0 writes.
    """
    from .plan import decompose, save_decomposed

    out = Path(out)
    rank, _ = world()
    if plan is not None:
        model = decompose(model, plan, progress=progress and rank == 0)
    freezer = Freezer(model, freeze, period=period, unit=unit) if freeze != "none" or plan is not None else None
    history = fit(model, loaders.train, loaders.test, epochs, lr, freezer, device=device, seed=seed,
                  checkpoint=out / "checkpoint.pt", resume=resume, evaluate_start=plan is not None,
                  progress=progress, label=label, **fit_kw)
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        history.to_csv(out / "history.csv", index=False)
        history.to_json(out / "history.json", orient="records", indent=1)
        model = model.cpu()
        if plan is not None:
            save_decomposed(model, plan, out)
        else:
            torch.save(model.state_dict(), out / "state_dict.pt")
    return history
