"""Transformer targets and the q/k/v design measurement, recorded as JSON.

``python -m tools.record transformers targets --out data/transformers_targets_cpu.json [--threads 1] [--vit-tiny PATH]``

- ``vit_b_16``: torchvision ViT-B/16, random weights, ratio 2: encoder projections decomposed, finite output,
  full rank vs original, plan and decompose wall time (and how much of it is SVD).
- ``gpt2``: GPT-2 from a 2-layer config (GPT-2 small widths): every Conv1D decomposed, tied head skipped,
  full rank exact, params at ratio 2.
- ``qkv_choice``: fused in_proj (one SVD of [3E, E]) vs separate q/k/v (three SVDs of [E, E]) at the same
  parameter budget (ratio 2): relative weight error, relative attention-output error on the block's real
  inputs, and projection time on the CPU.
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lrdlab.lowrank import factorize, ranks
from lrdlab.lowrank.decompose import decompose
from lrdlab.lowrank.plan import FixedRank, Ratio, make_plan
from lrdlab.measure.counting import count_params
from lrdlab.measure.interleave import interleave
from lrdlab.measure.machine import machine_info
from lrdlab.measure.records import write_record
from lrdlab.zoo.models import get_model


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


class _SvdClock:
    """Adds up the time spent in ``factorize.svd_factors`` while active."""

    def __enter__(self) -> _SvdClock:
        self.seconds, self.calls, self._orig = 0.0, 0, factorize.svd_factors

        def timed(*args, **kw):
            t = time.perf_counter()
            try:
                return self._orig(*args, **kw)
            finally:
                self.seconds += time.perf_counter() - t
                self.calls += 1

        factorize.svd_factors = timed
        return self

    def __exit__(self, *exc) -> None:
        factorize.svd_factors = self._orig


def vit_b_16_target() -> dict[str, Any]:
    torch.manual_seed(0)
    model: Any = get_model("vit_b_16").eval()
    nn.init.normal_(model.heads.head.weight, std=0.02)  # torchvision zero-initialises the head
    t = time.perf_counter()
    plan = make_plan(model, Ratio(2))
    plan_s = time.perf_counter() - t
    with _SvdClock() as clock:
        t = time.perf_counter()
        small = decompose(model, plan, progress=False)
        decompose_s = time.perf_counter() - t
    enc = [r for r in plan.decomposed_layers if r.name.startswith("encoder.")]
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        y_small, y = small(x), model(x)
    full = decompose(model, make_plan(model, FixedRank("full", allow_larger=True)), progress=False)
    with torch.no_grad():
        full_err = _rel(full(x), y)
    return {
        "encoder_projections_decomposed": len(enc),
        "layers_decomposed": len(plan.decomposed_layers), "layers": len(plan.layers),
        "kinds": sorted({r.name.rsplit(".", 1)[-1] for r in enc}),
        "output_finite": bool(torch.isfinite(y_small).all()),
        "full_rank_relative_error": full_err,
        "params_before": count_params(model), "params_after": count_params(small),
        "plan_seconds": round(plan_s, 3), "decompose_seconds": round(decompose_s, 2),
        "svd_seconds": round(clock.seconds, 2), "svd_calls": clock.calls,
        "plan_plus_decompose_seconds": round(plan_s + decompose_s, 2),
        "targets": {"encoder_projections>=48": len(enc) >= 48, "finite": bool(torch.isfinite(y_small).all()),
                    "full_rank<=1e-4": full_err <= 1e-4, "plan+decompose<=5s": plan_s + decompose_s <= 5},
    }


def gpt2_target() -> dict[str, Any]:
    from lrdlab.lowrank.hf import is_conv1d
    from lrdlab.zoo.lm import gpt2_from_config

    torch.manual_seed(0)
    model: Any = gpt2_from_config(n_layer=2)
    conv1d = [n for n, m in model.named_modules() if is_conv1d(m)]
    plan = make_plan(model, Ratio(2))
    small: Any = decompose(model, plan, progress=False)
    full = decompose(model, make_plan(model, FixedRank("full", allow_larger=True)), progress=False)
    ids = torch.randint(0, model.config.vocab_size, (2, 32))
    with torch.no_grad():
        logits = model(ids).logits
        full_err, small_finite = _rel(full(ids).logits, logits), bool(torch.isfinite(small(ids).logits).all())
    decomposed = {r.name for r in plan.decomposed_layers}
    rows = [r for r in plan.layers if r.name in decomposed]
    return {
        "config": "GPT2Config(n_layer=2) (GPT-2 small widths: n_embd 768, 12 heads, vocab 50257)",
        "conv1d_layers": len(conv1d), "conv1d_decomposed": len(decomposed & set(conv1d)),
        "lm_head_reason": plan["lm_head"].reason,
        "lm_head_still_tied": small.lm_head.weight is small.transformer.wte.weight,
        "full_rank_relative_error": full_err, "output_finite": small_finite,
        "params_before": count_params(model), "params_after": count_params(small),
        "decomposed_layers_params_before": sum(r.params_before for r in rows),
        "decomposed_layers_params_after": sum(r.params_after for r in rows),
        "note": "the tied 50257×768 embedding (38.6 M of 53.6 M parameters here) is not a decomposition target",
    }


def median_time(fn, repeats: int = 15) -> float:
    """Median seconds of ``fn()`` over ``repeats`` calls after one untimed call."""
    from lrdlab.measure.timing import time_function

    return statistics.median(time_function(fn, "cpu", warmup=1, repeats=repeats))


@torch.no_grad()
def qkv_choice(model: nn.Module, x: torch.Tensor, label: str, ratio: float = 2.0) -> dict[str, Any]:
    """Fused vs separate q/k/v at the same parameter budget, over every nn.MultiheadAttention of ``model``."""
    mhas = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.MultiheadAttention)]
    inputs: dict[str, torch.Tensor] = {}

    def keep(name: str):
        def hook(mod: nn.Module, args: tuple) -> None:
            inputs.setdefault(name, args[0].detach())
        return hook

    hooks = [m.register_forward_pre_hook(keep(n)) for n, m in mhas]
    model.eval()(x)
    for h in hooks:
        h.remove()
    E = mhas[0][1].embed_dim
    r_fused, r_sep = ranks.svd_rank_for_ratio(E, 3 * E, ratio), ranks.svd_rank_for_ratio(E, E, ratio)
    per_block = []
    for name, mha in mhas:
        W = mha.in_proj_weight.detach()
        f1, f2 = factorize.svd_factors(W, r_fused)
        fused = f2 @ f1
        sep_parts = [factorize.svd_factors(w, r_sep) for w in W.chunk(3)]
        separate = torch.cat([b @ a for a, b in sep_parts])
        tokens = inputs[name]
        ref = mha(tokens, tokens, tokens, need_weights=False)[0]
        outs = {}
        for key, approx in (("fused", fused), ("separate", separate)):
            saved = mha.in_proj_weight.data.clone()
            mha.in_proj_weight.data.copy_(approx)
            outs[key] = _rel(mha(tokens, tokens, tokens, need_weights=False)[0], ref)
            mha.in_proj_weight.data.copy_(saved)
        per_block.append({"name": name, "weight_error_fused": _rel(fused, W),
                          "weight_error_separate": _rel(separate, W),
                          "output_error_fused": outs["fused"], "output_error_separate": outs["separate"]})
    # time the projections alone on this block's token count (float32, current threads)
    flat = inputs[mhas[0][0]].reshape(-1, E).float().contiguous()
    W = mhas[0][1].in_proj_weight.detach().float()
    a, b = (t.contiguous() for t in factorize.svd_factors(W, r_fused))
    sep = [tuple(t.contiguous() for t in factorize.svd_factors(w, r_sep)) for w in W.chunk(3)]
    variants = {"dense_ms": lambda: flat @ W.T, "fused_ms": lambda: (flat @ a.T) @ b.T,
                "separate_ms": lambda: [(flat @ p.T) @ q.T for p, q in sep]}
    steps = {k: partial(median_time, fn, repeats=5) for k, fn in variants.items()}
    rounds = interleave(steps, 7)  # interleaved rounds: the machine is shared, its load drifts
    timing = {k: 1e3 * rounds.median(k) for k in variants}

    def mean(key: str) -> float:
        return statistics.fmean(row[key] for row in per_block)

    return {
        "model": label, "embed_dim": E, "blocks": len(per_block), "ratio": ratio,
        "fused_rank": r_fused, "separate_rank_each": r_sep,
        "params_fused": r_fused * 4 * E, "params_separate": 3 * r_sep * 2 * E, "params_dense": 3 * E * E,
        **{f"mean_{kind}_error_{form}": mean(f"{kind}_error_{form}")
           for kind in ("weight", "output") for form in ("fused", "separate")},
        "projection_time_tokens": flat.shape[0], **{k: round(v, 3) for k, v in timing.items()},
        "per_block": per_block,
    }


def record_targets(out: str | Path, *, vit_tiny: str | Path | None = None, skip: Sequence[str] = (),
                   command: str = "") -> dict[str, Any]:
    """Measure the transformer targets (``vit_b_16``, ``gpt2``) and the q/k/v choice (``qkv``); write ``out``."""
    result: dict[str, Any] = {
        "what": "transformer targets and the q/k/v design measurement (random weights unless stated)",
        "command": command, "machine": machine_info("cpu").to_dict(), "load_average_before": list(os.getloadavg()),
    }
    if "vit_b_16" not in skip:
        result["vit_b_16"] = vit_b_16_target()
    if "gpt2" not in skip:
        result["gpt2"] = gpt2_target()
    if "qkv" not in skip:
        torch.manual_seed(0)
        vit = get_model("vit_b_16").eval()
        studies = [qkv_choice(vit, torch.randn(8, 3, 224, 224), "vit_b_16 (random init)")]
        if vit_tiny:
            from lrdlab.zoo.data import get_loaders
            from lrdlab.zoo.pretrained import trained

            tiny, info = trained(vit_tiny, "vit_tiny")
            images = next(iter(get_loaders("mnist5k", batch_size=64).test))[0]
            studies.append(qkv_choice(tiny, images, f"vit_tiny trained on MNIST-5k ({info['source']})"))
        result["qkv_choice"] = studies
    result["load_average_after"] = list(os.getloadavg())
    write_record(out, result)
    return result
