"""The language-model study's recorders: perplexity against compression on the shipped byte-level Llama
(``data/lm_perplexity_pydoc.json``: ``python -m tools.record lm-perplexity``), and prefill / decode speed of a
~100 M-parameter Llama config (random weights: speed needs no training), dense vs decomposed
(``data/lm_decode_llama100m_cpu.json``: ``python -m tools.record lm-speed``); each file names its machine, threads,
load and settings. docs/language_models.md renders them (:func:`tools.lm_section.lm_section`).
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from lrdlab.finetune.fit_config import FitConfig
from lrdlab.finetune.loop import evaluate, fit
from lrdlab.lowrank.calibration import Calibration
from lrdlab.lowrank.decompose import decompose
from lrdlab.lowrank.plan import Ratio, make_plan
from lrdlab.measure.counting import count_params
from lrdlab.measure.decode_search import TokenShapeSearch
from lrdlab.measure.decode_table import DecodeBench, decode_table
from lrdlab.measure.machine import machine_info
from lrdlab.measure.records import write_record

RATIOS = (1.25, 1.5, 2.0, 3.0)
VARIANTS = ("weights_only", "one_shot_whitening", "calibrated", "loss_weighted", "calibrated_distilled")


def _write(out: str | Path, record: dict[str, Any]) -> dict[str, Any]:
    write_record(out, record)
    return record


def perplexity_table(name: str = "llama_pydoc", ratios: Sequence[float] = RATIOS, *, calibration_sequences: int = 32,
                     distill_steps: int | None = None, validation_sequences: int | None = None,
                     progress: bool = False) -> dict[str, Any]:
    """Validation perplexity of the shipped LM and of its decompositions at each ratio, by :data:`VARIANTS`:
    weights only; one-shot whitening (``mode="one-shot"``); the corrected fit (``mode="corrected"``, the key
    ``calibrated``); the loss-weighted fit (``mode="loss-weighted"``, what ``"auto"`` picks for a causal LM); and
    the corrected model plus one epoch of distilled fine-tuning on the train split (AdamW, the original as
    teacher; ``distill_steps`` caps its steps, ``0`` leaves the variant out)."""
    from lrdlab.zoo.pretrained import pretrained, pretrained_info
    from lrdlab.zoo.text import text_loaders

    info = pretrained_info(name)
    if info.seq_len is None:
        raise ValueError(f"{name!r} is not a shipped language model (its record has no seq_len): name one such as "
                         "llama_pydoc")
    model = pretrained(name)
    loaders = text_loaders(info.seq_len, 32, validation_sequences=validation_sequences)
    calib = loaders.calibration(calibration_sequences)
    train = list(itertools.islice(iter(loaders.train), distill_steps))  # None: the whole epoch
    dense = evaluate(model, loaders.test)
    rows = []
    for ratio in ratios:
        plan = make_plan(model, Ratio(ratio))
        t0 = time.perf_counter()
        built = {"weights_only": decompose(model, plan, progress=False)}
        for variant, mode in (("one_shot_whitening", "one-shot"), ("calibrated", "corrected"),
                              ("loss_weighted", "loss-weighted")):
            built[variant] = decompose(model, plan, calibration=Calibration(calib, mode=mode), progress=False)
        row: dict[str, Any] = {"ratio": ratio, "params": count_params(built["calibrated"]),
                               "decompose_s": round(time.perf_counter() - t0, 2)}
        for variant, net in built.items():
            row[variant] = round(evaluate(net, loaders.test)["perplexity"], 4)
        if train:
            student = built["calibrated"]
            history = fit(student, train, loaders.test, FitConfig(lr=1e-3, optimizer="adamw", weight_decay=0.0,
                          schedule="cosine", clip_grad_norm=1.0, progress=progress), teacher=model)
            row["calibrated_distilled"] = round(math.exp(float(history["loss"].iloc[-1])), 4)  # fit's evaluation
        rows.append(row)
    return {"model": name, "dense_perplexity": round(dense["perplexity"], 4), "dense_params": count_params(model),
            "validation_tokens": dense["images"], "rows": rows, "calibration_tokens": sum(c.numel() for c in calib),
            "distill_steps": len(train), "distill_epoch_steps": len(loaders.train), "baselines": info.baselines}


def _table_one_thread(kw: dict[str, Any]) -> dict[str, Any]:
    torch.set_num_threads(1)
    return perplexity_table(**kw)


def record_lm_perplexity(out: str | Path = "data/lm_perplexity_pydoc.json", command: str | None = None, *,
                         processes: int = 1, ratios: Sequence[float] = RATIOS, **kw: Any) -> dict[str, Any]:
    """:func:`perplexity_table` written to ``out`` with the machine, threads, load and ``command``; ``processes`` > 1
    splits the ratios over that many one-thread processes (the same numbers, sooner)."""
    from concurrent.futures import ProcessPoolExecutor

    t0 = time.perf_counter()
    parts = [list(ratios)[i::processes] for i in range(processes)]
    with ProcessPoolExecutor(processes) as pool:
        tables = list(pool.map(_table_one_thread, [{**kw, "ratios": part} for part in parts if part]))
    table = {**tables[0], "rows": sorted((r for t in tables for r in t["rows"]), key=lambda r: r["ratio"])}
    return _write(out, {"what": "validation perplexity of the shipped byte-level Llama vs compression",
                        "variants": {
                            "weights_only": "truncated SVD of each weight (no data)",
                            "one_shot_whitening": "SVD-LLM truncation-aware whitening, every layer's statistics "
                                                  "from the original model in one pass (calibrated_decompose(..., "
                                                  "mode='one-shot'))",
                            "calibrated": "Calibration(batches, mode='corrected'): the same whitening, each layer "
                                          "fitted to its inputs inside the network decomposed so far (the default "
                                          "for all but causal LMs)",
                            "loss_weighted": "Calibration(batches, mode='loss-weighted'), what the default 'auto' "
                                             "picks for a causal LM: each Linear's output channels weighted by the "
                                             "next-token loss's Fisher, at the plan's uniform ranks",
                            "calibrated_distilled": "calibrated + distill_steps AdamW steps (one epoch of the train "
                                                    "split when distill_steps == distill_epoch_steps; batch 32, lr "
                                                    "1e-3, cosine) with the original as teacher (Hinton loss, alpha "
                                                    "0.5, T 4)"},
                        **({"command": command} if command else {}), **table,
                        "seconds": round(time.perf_counter() - t0, 1),
                        # the tables' processes: 1 thread
                        "machine": {**machine_info("cpu").to_dict(), "torch_threads": 1}})


def speed_table(config: dict[str, Any] | None = None, ratio: float = 2.0, *, threads: Sequence[int] = (1, 0),
                granularities: Sequence[int] = (1,), search: Sequence[TokenShapeSearch] = (), prompt: int = 128,
                batch: int = 8, decode_tokens: int = 8, context: int = 64, rounds: int = 7) -> dict[str, Any]:
    """:func:`lrdlab.measure.decode_table.decode_table` of a random-weight Llama (default
    :data:`~lrdlab.zoo.lm.LLAMA_100M`), with its config in the record."""
    from lrdlab.zoo.lm import LLAMA_100M, llama_from_config

    torch.manual_seed(0)
    dense = llama_from_config(**(config or LLAMA_100M))
    bench = DecodeBench(ratio=ratio, threads=tuple(threads), granularities=tuple(granularities), search=tuple(search),
                        prompt=prompt, batch=batch, decode_tokens=decode_tokens, context=context, rounds=rounds)
    return {"config": config or LLAMA_100M, **decode_table(dense, bench).to_dict()}


def record_lm_speed(out: str | Path = "data/lm_decode_llama100m_cpu.json", command: str | None = None,
                    **kw: Any) -> dict[str, Any]:
    """:func:`speed_table` (unrounded ranks, ranks rounded down to multiples of 64 and ranks searched at the decode
    shape, unless ``granularities`` / ``search`` are given) written to ``out`` with the machine, load and
    ``command``."""
    t0 = time.perf_counter()
    table = speed_table(**{"granularities": (1, 64), "search": (TokenShapeSearch(),), **kw})
    return _write(out, {"what": "prefill and KV-cache decode, dense vs decomposed (weights only), random-weight "
                                "Llama; speed-up = median paired ratio over interleaved rounds, 95% bootstrap "
                                "interval; bytes_ideal = parameter bytes read per decode token, dense / decomposed",
                        **({"command": command} if command else {}), **table,
                        "seconds": round(time.perf_counter() - t0, 1), "machine": machine_info("cpu").to_dict()})
