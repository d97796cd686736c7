"""Training and fine-tuning: ``fit`` / ``evaluate`` with freezing, checkpoints, resume and DDP.

``fit`` works unchanged under ``torchrun --nproc_per_node=N``: call :func:`init_distributed` first
(the CLI does), build the loaders with :func:`lrdlab.get_loaders` (a ``DistributedSampler``
splits each global batch across ranks) and ``fit`` wraps the model in ``DistributedDataParallel``
(gloo on CPU, NCCL on GPU). Only rank 0 writes checkpoints and shows progress bars.

``fit(..., teacher=original)`` adds the knowledge distillation of Hinton et al. (2015), "Distilling the Knowledge in
a Neural Network" (:class:`DistillationLoss`): after a low-rank decomposition the original knows what the factorized
layers should compute, and its soft targets carry more per image than a label. :mod:`lrdlab.finetune.lm_distill` is
the recipe for a decomposed causal LM: pure KL on the logits over token windows, with a held-out perplexity curve.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterable
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import Tensor, nn
from torch.nn import functional as F
from tqdm.auto import tqdm

from lrdlab.finetune.distributed import all_sum, world
from lrdlab.finetune.fit_config import OPTIMIZERS, SCHEDULES, FitConfig
from lrdlab.finetune.freezing import Freezer
from lrdlab.finetune.inputs import check_device, check_labels, forward_batch, teacher_logits
from lrdlab.lowrank.token_batches import is_causal_lm

# --- setup -------------------------------------------------------------------------------------------


class DistillationLoss(nn.Module):
    """``criterion(student_logits, labels, inputs)``: cross-entropy blended with the teacher's soft targets,
    ``(1 − α)·CE(student, labels) + α·T²·KL(softmax(teacher/T) ‖ softmax(student/T))``.

    The teacher runs under ``no_grad`` in eval mode and is never trained; it may be the very model the
    student was decomposed from.
    """

    def __init__(self, teacher: nn.Module, alpha: float = 0.5, temperature: float = 4.0,
                 label_smoothing: float = 0.0) -> None:
        super().__init__()
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"distillation alpha must be in [0, 1] (the teacher's share of the loss), got {alpha}")
        if temperature <= 0:
            raise ValueError(f"distillation temperature must be > 0, got {temperature}")
        self.teacher = [teacher]  # a list: not a submodule, so it is not moved, trained or saved with the loss
        self.alpha, self.temperature = float(alpha), float(temperature)
        self.ce = nn.CrossEntropyLoss(label_smoothing=label_smoothing)

    def forward(self, logits: Tensor, labels: Tensor, inputs: Tensor) -> Tensor:
        teacher = self.teacher[0]
        was_training = teacher.training
        teacher.eval()
        with torch.no_grad():
            soft = teacher_logits(teacher, inputs)
        teacher.train(was_training)
        t = self.temperature
        kl = F.kl_div(F.log_softmax(logits / t, dim=1), F.log_softmax(soft / t, dim=1), log_target=True,
                      reduction="batchmean")
        return (1.0 - self.alpha) * self.ce(logits, labels) + self.alpha * t * t * kl


def set_seed(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and CUDA)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


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
    dev = check_device(device)
    was_training = model.training
    model.eval()
    loss_sum, top1, top5, n = 0.0, 0, 0, 0
    causal = is_causal_lm(model)
    t0 = time.perf_counter()
    for i, batch in enumerate(tqdm(loader, desc=desc, leave=False, disable=not progress or world()[0] != 0)):
        x, y, out = forward_batch(model, batch, dev, i, causal, "evaluate batch")
        if i == 0:
            check_labels(out, y)
        loss_sum += float(nn.functional.cross_entropy(out, y, reduction="sum"))
        c1, c5 = _correct(out, y, 5)
        top1, top5, n = top1 + c1, top5 + c5, n + len(y)
    _sync(dev)
    seconds = time.perf_counter() - t0
    model.train(was_training)
    loss_total, top1_total, top5_total, images = all_sum([loss_sum, top1, top5, n], dev)
    if images == 0:
        raise ValueError("evaluate got an empty loader")
    result: dict[str, float] = {"loss": loss_total / images, "accuracy": 100.0 * top1_total / images,
                                "top5": 100.0 * top5_total / images, "images": int(images), "eval_s": seconds,
                                "eval_img_s": images / seconds}
    if causal:  # a causal LM: per scored token (``images`` counts tokens), and its perplexity
        result["perplexity"] = float(np.exp(result["loss"]))
    return result


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


def make_scheduler(optimizer: torch.optim.Optimizer, name: str, lr: float, total_steps: int, warmup: float = 0.0):
    """Per-iteration LR schedule: OneCycle (default), cosine to zero, or constant (None); ``cosine`` and
    ``constant`` after a linear warmup over the fraction ``warmup`` of the iterations."""
    total = max(total_steps, 1)
    if name == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=total)
    if name not in ("cosine", "constant"):
        raise ValueError(f"schedule must be one of {SCHEDULES}, got {name!r}")
    ramp = int(round(warmup * total))
    after = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total - ramp) if name == "cosine" else None
    if ramp == 0:
        return after
    start = torch.optim.lr_scheduler.LinearLR(optimizer, start_factor=1.0 / (ramp + 1), total_iters=ramp)
    if after is None:  # constant: the ramp holds its final factor 1
        return start
    return torch.optim.lr_scheduler.SequentialLR(optimizer, [start, after], milestones=[ramp])


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
    causal = is_causal_lm(net)
    for i, batch in enumerate(bar(loader)):
        if freezer is not None:
            freezer.sync(epoch, iteration)
        optimizer.zero_grad(set_to_none=True)
        x, y, out = forward_batch(net, batch, device, i, causal, "training batch")
        if i == 0:
            check_labels(out, y)
        loss = criterion(out, y) if not isinstance(criterion, DistillationLoss) else criterion(out, y, x)
        if not torch.isfinite(loss):
            raise ValueError(f"the training loss became {float(loss.detach())} in epoch {epoch + 1} (iteration "
                             f"{iteration}); lower the learning rate or clip gradients (FitConfig(clip_grad_norm=1.0))")
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
    config: FitConfig | None = None,
    freezer: Freezer | None = None,
    *,
    teacher: nn.Module | None = None,
    device: str | torch.device = "cpu",
    checkpoint: str | Path | None = None,
    resume: bool = False,
    callbacks: Iterable[Callable[[dict[str, Any]], None]] = (),
) -> pd.DataFrame:
    """Train ``model`` by ``config`` (:class:`~lrdlab.finetune.fit_config.FitConfig`: epochs, learning rate,
    optimizer, schedule, seed …; default ``FitConfig()``) and return the history, one row per epoch:
    ``fit(model, train_loader, test_loader, FitConfig(epochs=2, lr=0.01), Freezer(model, "sequential"))``.

    Columns: ``epoch`` (1-based; 0 is the model before training when ``config.evaluate_start``), test
    ``loss``, ``accuracy`` and ``top5`` (%), ``train_loss``, ``train_accuracy``, ``epoch_s`` (training
    wall time of the epoch, evaluation excluded), ``wall_s`` (cumulative training seconds),
    ``train_img_s`` (images / ``epoch_s``, all ranks), ``eval_img_s``, ``lr``, ``trainable_params``,
    ``phase`` (freezing phase at the end of the epoch), ``world_size``, ``label``; a causal language model's history
    adds the test ``perplexity``.

    ``freezer``: a :class:`~lrdlab.finetune.freezing.Freezer` built for ``model``. ``checkpoint``: a file
    rewritten after every epoch (model, optimiser, schedule, history, RNG). ``resume=True`` continues from
    it — the same history, the same data order (the sampler is seeded by epoch) and the same freezing
    phase — so an interruption loses at most the current epoch. ``callbacks`` get each epoch's row (e.g. a
    live plot); an exception there stops training after the checkpoint was written. ``teacher`` (e.g. the
    original of a decomposed model) adds knowledge distillation
    (:class:`DistillationLoss` with ``config.distill_alpha`` and
    ``config.distill_temperature``); the teacher is never trained.
    """
    config = FitConfig() if config is None else config
    if not isinstance(config, FitConfig):
        hint = f"epochs={config!r}" if isinstance(config, int) else "epochs=3, lr=0.05"
        raise ValueError(f"fit's 4th argument is a FitConfig, got {type(config).__name__} {config!r}; e.g. "
                         f"fit(model, train_loader, test_loader, FitConfig({hint}), freezer)")
    epochs = config.epochs
    if freezer is not None and _unwrap(freezer.model) is not _unwrap(model):
        raise ValueError("the freezer was built for another model; build it as Freezer(model, ...) for this one")
    if resume and checkpoint is None:
        raise ValueError("resume=True needs checkpoint=PATH (the file an earlier fit wrote)")
    if checkpoint is not None and Path(checkpoint).is_dir():
        raise ValueError(f"checkpoint={str(checkpoint)!r} is a folder; give a file path, e.g. "
                         f"{str(Path(checkpoint) / 'checkpoint.pt')!r}")
    try:
        steps = len(train_loader)
    except TypeError as err:
        raise ValueError(f"train_loader must be re-iterable with a length (e.g. a DataLoader), got a "
                         f"{type(train_loader).__name__}") from err
    if steps == 0:
        raise ValueError("train_loader is empty (0 batches): check the data set, its subset, and the batch size "
                         "(with drop_last=True a batch larger than the data set gives no batch)")
    dev = check_device(device)
    rank, size = world()
    set_seed(config.seed)
    model.to(dev)
    opt = make_optimizer(model, config.optimizer, config.lr, config.momentum, config.weight_decay)
    sched = make_scheduler(opt, config.schedule, config.lr, epochs * steps, config.warmup)
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
            freezer.attach_optimizer(None)  # the checkpoint's phase: its optimizer state is kept as saved
            freezer.load_state_dict(state["freezer"])
        records, start, iteration = list(state["history"]), state["epoch"], state["iteration"]
        torch.set_rng_state(state["rng"])
    net = _wrap_ddp(model, freezer, dev) if size > 1 else model
    if freezer is not None:
        # attached before the sync: a resume at a phase boundary resets the optimizer state of the factors that
        # become trainable again, as the uninterrupted run did at that boundary
        freezer.attach_optimizer(opt)
        freezer.sync(start, iteration)
    criterion: nn.Module = nn.CrossEntropyLoss(label_smoothing=config.label_smoothing) if teacher is None else \
        DistillationLoss(teacher.to(dev), config.distill_alpha, config.distill_temperature, config.label_smoothing)
    show = config.progress and rank == 0
    label = config.label
    wall = records[-1]["wall_s"] if records else 0.0

    def row(epoch: int, metrics: dict[str, float], extra: dict[str, Any]) -> dict[str, Any]:
        counts = freezer.counts() if freezer is not None else {
            "trainable": sum(p.numel() for p in model.parameters() if p.requires_grad)}
        scores = {"perplexity": metrics["perplexity"]} if "perplexity" in metrics else {}  # a causal LM's
        return {"epoch": epoch, "loss": metrics["loss"], "accuracy": metrics["accuracy"], "top5": metrics["top5"],
                **scores, **extra, "wall_s": wall, "eval_img_s": metrics["eval_img_s"], "lr": opt.param_groups[0]["lr"],
                "trainable_params": counts["trainable"], "phase": freezer.phase if freezer is not None else 0,
                "world_size": size, "label": label}

    if config.evaluate_start and not records:
        empty = {"train_loss": float("nan"), "train_accuracy": float("nan"), "epoch_s": 0.0,
                 "train_img_s": float("nan")}
        records.append(row(0, evaluate(net, test_loader, dev), empty))
    epoch_bar = tqdm(range(start, epochs), desc=label or "fit", disable=not show, initial=start, total=epochs)
    for epoch in epoch_bar:
        sampler = getattr(train_loader, "sampler", None)
        if sampler is not None and hasattr(sampler, "set_epoch"):
            sampler.set_epoch(epoch)
        bar = partial(tqdm, desc=f"epoch {epoch + 1}", leave=False, total=steps, disable=not show)
        _sync(dev)
        t0 = time.perf_counter()
        loss_sum, correct, n, iteration = _train_epoch(net, train_loader, opt, sched, criterion, freezer, epoch,
                                                       iteration, dev, bar, config.clip_grad_norm)
        _sync(dev)
        seconds = time.perf_counter() - t0
        wall += seconds
        loss_sum, correct, n = all_sum([loss_sum, correct, n], dev)
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
                "seed": config.seed,
            })
        for callback in callbacks:
            callback(records[-1])
    epoch_bar.close()
    return pd.DataFrame(records)


# --- one training run with its files (the ``lrdlab train`` command) ---------------------------------------


def train_and_save(model: nn.Module, loaders, out: str | Path, config: FitConfig | None = None, *, plan=None,
                   freeze: str = "none", period: int = 1, unit: str = "epoch", resume: bool = False,
                   device: str = "cpu") -> pd.DataFrame:
    """Decompose ``model`` by ``plan`` (if given), fine-tune it by ``config`` (:func:`fit`; with a plan the
    history starts at epoch 0) with freezing (``Freezer(model, freeze, period=, unit=)``), and write into ``out``:

    ``history.csv`` / ``history.json`` (the :func:`fit` history), ``checkpoint.pt`` (rewritten every
    epoch; ``resume=True`` continues from it), and the trained weights — ``plan.json`` +
    ``state_dict.pt`` (reload with :func:`lrdlab.load_decomposed`) or ``state_dict.pt`` alone.
    Under torchrun only rank 0 writes.
    """
    from lrdlab.lowrank.decompose import decompose, save_decomposed

    config = FitConfig() if config is None else config
    out = Path(out)
    rank, _ = world()
    if plan is not None:
        model = decompose(model, plan, progress=config.progress and rank == 0)
        config = replace(config, evaluate_start=True)
    freezer = Freezer(model, freeze, period=period, unit=unit) if freeze != "none" or plan is not None else None
    history = fit(model, loaders.train, loaders.test, config, freezer, device=device,
                  checkpoint=out / "checkpoint.pt", resume=resume)
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
