"""``lrdlab bench-lm``: prefill and KV-cache decode of a causal LM, dense vs decomposed: the user's model
(``--model`` a shipped name, a checkpoint folder or a GGUF file) or a random-weight Llama (``--config``)."""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path
from typing import Any

from lrdlab.cli.common import add_granularity_argument, add_ratio_argument, add_threads_argument, one_granularity

CONFIGS = ("llama100m", "tiny")
SHAPES = ("decode", "prefill")


def add_bench_lm(sub) -> None:
    p = sub.add_parser("bench-lm", help="prefill and decode tokens/s of a causal LM, dense vs decomposed, interleaved")
    p.add_argument("--model", default=None, metavar="NAME|FOLDER|FILE.gguf",
                   help="the causal LM to measure: smollm2_135m (the shipped SmolLM2-135M-Instruct), a Hugging Face "
                        "checkpoint folder or a .gguf file (default: a random-weight Llama, --config)")
    p.add_argument("--config", choices=CONFIGS, default="llama100m",
                   help="without --model, a random-weight Llama: llama100m (~124 M parameters, default) or tiny "
                        "(the shipped byte model's shape, ~0.8 M)")
    p.add_argument("--lm-head", action="store_true",
                   help="also decompose a tied lm_head, untied from the input embedding (kept as it is); its cost "
                        "is in the plan")
    p.add_argument("--layout", choices=("gemv", "as-built"), default="gemv",
                   help="the decomposed model's widening factors stored [in, out] for one-token decode (gemv, "
                        "default) or as decompose builds them (as-built)")
    p.add_argument("--dense-layout", choices=("as-loaded", "gemv"), default="as-loaded",
                   help="the dense baseline as the user has it (as-loaded, default) or with every widening Linear "
                        "stored as --layout gemv does (a like-for-like baseline)")
    add_ratio_argument(p, default=2.0)
    add_threads_argument(p, many=True, default_text="1 and all cores")
    add_granularity_argument(p, many=True)
    p.add_argument("--search", type=search_shapes, default=[], metavar="SHAPE[,SHAPE]",
                   help="also time the plan with each layer shape's rank searched (at or below the unrounded ranks) "
                        "at the decode shape (batch 1, one token: a GEMV) and/or the prefill prompt, e.g. decode; "
                        "searched again at each thread count")
    p.add_argument("--search-granularity", type=one_granularity, default=16, metavar="G",
                   help="ranks the search tries: the target, then multiples of G down to 3/4 of it (default 16)")
    p.add_argument("--prompt", type=int, default=128, help="prefill prompt length (default 128)")
    p.add_argument("--batch", type=int, default=4, help="the second decode batch size (default 4; batch 1 always)")
    p.add_argument("--tokens", type=int, default=4, help="decode tokens per timed call (default 4)")
    p.add_argument("--rounds", type=int, default=5, help="interleaved rounds (default 5)")
    p.add_argument("--profile", action="store_true",
                   help="also profile batch-1 decode of both models at the first thread count (torch.profiler): "
                        "milliseconds per token in the matrix products, by shape, and in everything else")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--out", type=Path, default=None, metavar="FILE.json",
                   help="also write the report, with the machine, load and this command, to FILE.json")


def search_shapes(text: str) -> list[str]:
    """argparse type of ``--search decode,prefill``: distinct token shapes to search the ranks at."""
    values = text.split(",")
    if not set(values) <= set(SHAPES) or len(set(values)) != len(values):
        raise argparse.ArgumentTypeError(f"{text!r}: the shapes are {' and '.join(SHAPES)}, each at most once, "
                                         f"e.g. decode")
    return values


def searches(args: argparse.Namespace) -> list:
    """The token-shape searches ``--search`` / ``--search-granularity`` ask for (decode: batch 1, one token)."""
    from lrdlab.measure.decode_search import TokenShapeSearch
    from lrdlab.measure.search_config import SearchConfig

    config = SearchConfig(granularity=args.search_granularity, progress=False)
    return [TokenShapeSearch(tokens=1 if s == "decode" else args.prompt, config=config) for s in args.search]


def cpu_text(row: dict[str, Any]) -> str:
    """``; CPU time 40.1 vs 25.3 ms/step ×1.58 [1.50, 1.62]`` for a one-thread row, else empty."""
    if row.get("cpu_speedup") is None:
        return ""
    return (f"; CPU time {row['dense_cpu_ms']:.1f} vs {row['decomposed_cpu_ms']:.1f} ms/step ×{row['cpu_speedup']:.2f} "
            f"[{row['cpu_ci_low']:.2f}, {row['cpu_ci_high']:.2f}]")


def run_bench_lm(args: argparse.Namespace) -> int:
    from lrdlab.measure.decode_search import choices_text
    from lrdlab.measure.decode_table import DecodeBench, decode_table
    from lrdlab.zoo.lm import LLAMA_100M, TINY_LLAMA, llama_from_config

    bench = DecodeBench(ratio=args.ratio, threads=tuple(args.threads or (1, 0)), granularities=tuple(args.granularity),
                        search=tuple(searches(args)), prompt=args.prompt, batch=args.batch, decode_tokens=args.tokens,
                        rounds=args.rounds, lm_head=args.lm_head, layout=args.layout,
                        dense_layout=args.dense_layout, profile=args.profile)
    if args.model is not None:
        from lrdlab.zoo.smollm import load_causal_lm

        dense = load_causal_lm(args.model)
        what: dict[str, Any] = {"model": str(args.model)}
    else:
        import torch

        config = LLAMA_100M if args.config == "llama100m" else TINY_LLAMA
        torch.manual_seed(0)
        dense, what = llama_from_config(**config), {"config": config}
    table = decode_table(dense, bench)
    report = {**what, **table.to_dict()}
    if args.out is not None:
        from lrdlab.measure.machine import machine_info
        from lrdlab.measure.records import write_record

        command = "python -m lrdlab.cli " + shlex.join(sys.argv[1:]) if "bench-lm" in sys.argv else \
            "lrdlab.cli.main([... 'bench-lm' ...]) from Python"
        write_record(args.out, {"what": "prefill and KV-cache decode, dense vs decomposed (weights only); speed-up = "
                                        "median paired ratio over interleaved rounds, 95% bootstrap interval; "
                                        "bytes_ideal = parameter bytes read per decode token, dense / decomposed",
                                "command": command, **report, "machine": machine_info("cpu").to_dict()})
    if args.json:
        print(json.dumps(report, indent=1))
        return 0
    print(f"{args.model or args.config}: {table.dense_params:,} → {table.decomposed_params:,} parameters "
          f"at {args.ratio}x{' (lm_head decomposed)' if table.lm_head_decomposed else ''}")
    print(table.plan_summary)
    for s in table.searched:
        print(f"searched at {s['shape']}, {s['threads']} thr, {s['seconds']:.0f} s, {s['params']:,} parameters: "
              f"{choices_text(s['shapes'])}")
    for r in table.results:
        label = f"searched@{r['searched']}" if "searched" in r else f"g={r['granularity']}"
        print(f"{label:<16}{r['phase']:>7} batch {r['batch']:<2} {r['threads']} thr: "
              f"dense {r['dense_tokens_s']:8.1f} tok/s, "
              f"decomposed {r['decomposed_tokens_s']:8.1f} tok/s, ×{r['speedup']:.2f} "
              f"[{r['ci_low']:.2f}, {r['ci_high']:.2f}] (bytes ideal ×{r['bytes_ideal']:.2f}, "
              f"realised {r['realised_of_bytes_ideal']:.0%}); fastest rounds {r['dense_ms_min']:.1f} vs "
              f"{r['decomposed_ms_min']:.1f} ms/step ×{r['min_round_speedup']:.2f}{cpu_text(r)}; "
              f"load {r['load_average']}")
    for name, prof in table.profile.items():
        shapes = ", ".join(f"{p['shapes']} {p['ms']:.1f}" for p in prof["products"][:4])
        print(f"profile {name}: {prof['total_ms']:.1f} ms/token, products {prof['products_ms']:.1f}, "
              f"other {prof['other_ms']:.1f} (slowest: {shapes})")
    print(f"layouts: decomposed {args.layout}, dense {args.dense_layout}")
    compute = table.results[-1]["compute"] if table.results else {}
    print(f"compute: {compute.get('compute_mode')} (asked {compute.get('compute_asked', compute.get('compute_mode'))}),"
          f" OpenMP wait policy {compute.get('omp_wait_policy')}")
    return 0
