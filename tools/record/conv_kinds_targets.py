"""Issue 34 item 5 targets: models whose convs are Conv1d / Conv3d / timm's standardised and TF-"same" convs.

``python -m tools.record.conv_kinds_targets --out data/conv_kinds_targets_cpu.json [--threads 2] [--only NAME ...]``
(``--ratios 2 3 …``: only the FLOPs at those per-layer ratios, e.g. for the Whisper encoder)

Random weights (configs only, nothing downloaded). For each model: the plan at full rank (every planned layer's
output reproduced: the model's relative output error), and the plan at ``Ratio(2)`` (per-layer parameters halved):
forward FLOPs before and after (``count_flops`` on the same input), layers decomposed per layer type, and whether
every decomposed layer is called by the forward.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils import _pytree

from lrdlab.cli.common import add_threads_argument
from lrdlab.lowrank.decompose import decompose
from lrdlab.lowrank.layers import LowRankLayer
from lrdlab.lowrank.plan import FixedRank, Layers, Plan, Ratio, make_plan
from lrdlab.measure.counting import count_flops
from lrdlab.measure.machine import machine_info
from lrdlab.measure.records import write_record


def _bit() -> tuple[nn.Module, torch.Tensor, str]:
    import timm

    return (timm.create_model("resnetv2_50x1_bit", pretrained=False), torch.randn(1, 3, 224, 224),
            "timm resnetv2_50x1_bit (StdConv2d), input 1x3x224x224")


def _r3d() -> tuple[nn.Module, torch.Tensor, str]:
    from torchvision.models.video import r3d_18

    return r3d_18(weights=None), torch.randn(1, 3, 8, 112, 112), "torchvision r3d_18 (Conv3d), input 1x3x8x112x112"


def _whisper(size: str) -> Callable[[], tuple[nn.Module, Any, str]]:
    def build() -> tuple[nn.Module, Any, str]:
        from transformers import WhisperConfig
        from transformers.models.whisper.modeling_whisper import WhisperEncoder

        widths: dict[str, dict[str, Any]] = {
            "tiny": dict(d_model=384, encoder_layers=4, encoder_attention_heads=6, encoder_ffn_dim=1536),
            "small": dict(d_model=768, encoder_layers=12, encoder_attention_heads=12, encoder_ffn_dim=3072)}
        config = WhisperConfig(num_mel_bins=80, **widths[size])
        encoder = WhisperEncoder(config)
        return (encoder, {"input_features": torch.randn(1, 80, 3000)},
                f"HF WhisperEncoder, Whisper-{size} widths ({widths[size]}), input_features 1x80x3000")
    return build


def _efficientnet() -> tuple[nn.Module, torch.Tensor, str]:
    import timm

    return (timm.create_model("tf_efficientnet_b0", pretrained=False), torch.randn(1, 3, 224, 224),
            "timm tf_efficientnet_b0 (Conv2dSame), input 1x3x224x224")


MODELS: dict[str, Callable[[], tuple[nn.Module, Any, str]]] = {
    "bit_resnet50": _bit, "r3d_18": _r3d, "whisper_tiny_encoder": _whisper("tiny"),
    "whisper_small_encoder": _whisper("small"), "tf_efficientnet_b0": _efficientnet,
}


def _run(model: nn.Module, x: Any) -> Any:
    with torch.no_grad():
        return model(**x) if isinstance(x, dict) else model(x)


def _main_output(out: Any) -> torch.Tensor:
    return next(t for t in _pytree.tree_leaves(out) if isinstance(t, torch.Tensor) and t.is_floating_point())


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm())


def _flops(model: nn.Module, x: Any) -> int:
    tensor = x["input_features"] if isinstance(x, dict) else x
    return count_flops(model, tensor)


def _types(model: nn.Module, plan: Plan) -> dict[str, str]:
    counts: Counter[tuple[str, bool]] = Counter((r.type, r.decomposed) for r in plan.layers)
    kinds = sorted({t for t, _ in counts})
    return {t: f"{counts[(t, True)]} of {counts[(t, True)] + counts[(t, False)]}" for t in kinds}


def _all_called(model: nn.Module, x: Any) -> tuple[int, int]:
    calls: Counter[str] = Counter()
    low = {n: m for n, m in model.named_modules() if isinstance(m, LowRankLayer)}
    handles = [m.register_forward_hook(lambda mod, i, o, n=n: calls.update([n])) for n, m in low.items()]
    try:
        _run(model, x)
    finally:
        for h in handles:
            h.remove()
    return sum(1 for n in low if calls[n]), len(low)


def measure(name: str, ratios: list[float]) -> dict[str, Any]:
    model, x, what = MODELS[name]()
    model.eval()
    layers = Layers(example_input=x)
    if ratios:  # FLOPs only, at other per-layer ratios
        before = _flops(model, x)
        cuts = {}
        for ratio in ratios:
            after = _flops(decompose(model, make_plan(model, Ratio(ratio), layers)), x)
            cuts[f"Ratio({ratio:g})"] = {"flops_before": before, "flops_after": after,
                                         "flops_cut_percent": round(100 * (1 - after / before), 2)}
        return {"model": what, "flops_at_ratios": cuts}
    expected = _main_output(_run(model, x))
    t = time.perf_counter()
    full = make_plan(model, FixedRank("full", allow_larger=True), layers)
    full_error = _rel(_main_output(_run(decompose(model, full), x)), expected)
    plan = make_plan(model, Ratio(2), layers)
    low = decompose(model, plan)
    before, after = _flops(model, x), _flops(low, x)
    called, decomposed = _all_called(low, x)
    kept = Counter(r.reason.split(";")[0].split(" (")[0] for r in plan.layers if not r.decomposed)
    return {
        "model": what,
        "full_rank": {"layers_decomposed": len(full.decomposed_layers), "layers": len(full.layers),
                      "relative_output_error": full_error},
        "ratio_2": {"layers_by_type": _types(model, plan), "kept_reasons": dict(kept.most_common()),
                    "params_before": sum(r.params_before for r in plan.layers),
                    "params_after": sum(r.params_after for r in plan.layers),
                    "flops_before": before, "flops_after": after,
                    "flops_cut_percent": round(100 * (1 - after / before), 2),
                    "decomposed_layers_called": f"{called} of {decomposed}",
                    "relative_output_error": _rel(_main_output(_run(low, x)), expected)},
        "probe": plan.settings["probe"], "seconds": round(time.perf_counter() - t, 1),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.record.conv_kinds_targets",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    add_threads_argument(parser, default_text="2")
    parser.set_defaults(threads=2)
    parser.add_argument("--only", nargs="+", choices=sorted(MODELS), default=None)
    parser.add_argument("--ratios", nargs="+", type=float, default=[],
                        help="only FLOPs, at these Ratio(...) values (default: the full record at Ratio(2))")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    record: dict[str, Any] = {
        "what": "issue 34 item 5: Conv1d / Conv3d / timm standardised and TF-'same' convs decomposed; "
                "FLOPs at Ratio(2)",
        "command": "python -m tools.record.conv_kinds_targets " + " ".join(argv if argv is not None else sys.argv[1:]),
        "machine": machine_info("cpu").to_dict(), "load_average_before": list(os.getloadavg()),
    }
    for name in args.only or list(MODELS):
        print(f"{name} ...", file=sys.stderr, flush=True)
        record[name] = measure(name, args.ratios)
        print(record[name], file=sys.stderr, flush=True)
    record["load_average_after"] = list(os.getloadavg())
    write_record(args.out, record)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
