"""Where the Whisper encoder's FLOPs are, and how far a per-layer ``Ratio`` can cut them (issue 34).

``python -m tools.record.whisper_flops --out data/whisper_encoder_flops.json [--ratios 2 2.5 3]``

The HF ``WhisperEncoder`` at the widths of Whisper tiny, small, medium and large (all their layers), on one
30-second input (``input_features`` 1×80×3000), is built on the meta device: the counts are exact (they depend on
shapes only) and nothing is computed or downloaded. The plan at each ratio is probed on the same meta input; its
FLOPs are counted on :func:`~lrdlab.lowrank.decompose.planned_structure`. Per aten op, before and after:
``convolution`` (the Conv1d front end), ``mm``/``addmm`` (the Linear layers), ``bmm`` (the attention products
``QKᵀ`` and ``AV``, which multiply activations by activations: no weight, so no low-rank form touches them).
At ``Ratio(r)`` a layer's FLOPs fall at most by ``1 − 1/r`` (an SVD's FLOPs are its parameters per position), so the
cut is bounded by ``(1 − 1/r) ×`` the weight layers' share of the FLOPs.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from lrdlab.lowrank.decompose import planned_structure
from lrdlab.lowrank.plan import Layers, Ratio, make_plan
from lrdlab.measure.machine import machine_info
from lrdlab.measure.records import write_record

WIDTHS: dict[str, dict[str, Any]] = {  # the encoders of openai/whisper-{size}
    "tiny": dict(d_model=384, encoder_layers=4, encoder_attention_heads=6, encoder_ffn_dim=1536),
    "small": dict(d_model=768, encoder_layers=12, encoder_attention_heads=12, encoder_ffn_dim=3072),
    "medium": dict(d_model=1024, encoder_layers=24, encoder_attention_heads=16, encoder_ffn_dim=4096),
    "large": dict(d_model=1280, encoder_layers=32, encoder_attention_heads=20, encoder_ffn_dim=5120),
}
WEIGHT_FREE = ("aten.bmm",)  # attention products (on meta, sdpa runs its math path: two bmm)


def by_op(model: nn.Module, x: torch.Tensor) -> dict[str, int]:
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(x)
    return {str(op): int(n) for op, n in counter.get_flop_counts()["Global"].items()}


def measure(size: str, ratios: list[float]) -> dict[str, Any]:
    from transformers import WhisperConfig
    from transformers.models.whisper.modeling_whisper import WhisperEncoder

    with torch.device("meta"):
        encoder = WhisperEncoder(WhisperConfig(num_mel_bins=80, **WIDTHS[size])).eval()
    x = torch.zeros(1, 80, 3000, device="meta")
    before = by_op(encoder, x)
    total = sum(before.values())
    weight_free = sum(n for op, n in before.items() if op in WEIGHT_FREE)
    out: dict[str, Any] = {"widths": WIDTHS[size], "flops_by_op": before, "flops": total,
                           "weight_free_share_percent": round(100 * weight_free / total, 2)}
    for ratio in ratios:
        plan = make_plan(encoder, Ratio(ratio), Layers(example_input={"input_features": x}))
        after = by_op(planned_structure(encoder, plan), x)
        out[f"Ratio({ratio:g})"] = {
            "layers_decomposed": f"{len(plan.decomposed_layers)} of {len(plan.layers)}",
            "probe": plan.settings["probe"],
            "flops_by_op": after, "flops_cut_percent": round(100 * (1 - sum(after.values()) / total), 2),
            "bound_percent": round(100 * (1 - 1 / ratio) * (total - weight_free) / total, 2)}
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.record.whisper_flops", description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--ratios", nargs="+", type=float, default=[2.0])
    args = parser.parse_args(argv)
    record: dict[str, Any] = {
        "what": "HF WhisperEncoder FLOPs by aten op (meta device, exact counts), input_features 1x80x3000, before and "
                "after per-layer Ratio plans; bound = (1 - 1/r) x the weight layers' FLOP share",
        "command": "python -m tools.record.whisper_flops " + " ".join(argv if argv is not None else sys.argv[1:]),
        "machine": machine_info("cpu").to_dict(), "load_average_before": list(os.getloadavg()),
    }
    for size in WIDTHS:
        print(f"whisper-{size} encoder ...", file=sys.stderr, flush=True)
        record[f"whisper_{size}_encoder"] = measure(size, args.ratios)
    record["load_average_after"] = list(os.getloadavg())
    write_record(args.out, record)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
