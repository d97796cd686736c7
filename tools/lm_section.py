"""docs/language_models.md's numbers, rendered from the language-model study's records: perplexity against
compression on the shipped byte-level Llama (``data/lm_perplexity_pydoc.json``) and prefill / decode speed of a
~100 M-parameter Llama config (``data/lm_decode_llama100m_cpu.json``), both written by the checkout's
``tools/record/lm_study.py`` (``python -m tools.record lm-perplexity`` / ``lm-speed``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lrdlab.measure.decode_search import choices_text
from lrdlab.measure.records import read_record

SECTION_BEGIN = "<!-- lm-section: generated from data/ by tools/lm_section.py -->"
SECTION_END = "<!-- /lm-section -->"


def _machine(m: dict[str, Any], threads: bool = True) -> str:
    load = m.get("load_average") or ["?"]
    used = f"{m.get('torch_threads', '?')} torch thread(s), " if threads else ""
    return f"{m.get('cpu', '?')}, {m.get('cpu_count', '?')} cores, {used}load {load[0]}"


def lm_section(data: Path) -> str:
    """docs/language_models.md's numbers, rendered from ``data/lm_perplexity_pydoc.json`` and
    ``data/lm_decode_llama100m_cpu.json`` (``make readme`` rewrites it; the tests keep it current)."""
    ppl = read_record(Path(data) / "lm_perplexity_pydoc.json")
    speed = read_record(Path(data) / "lm_decode_llama100m_cpu.json")
    base = ppl.get("baselines") or {}
    steps = ppl.get("distill_steps", 0)
    lines = [SECTION_BEGIN,
             f"Validation perplexity of `llama_pydoc` (`data/lm_perplexity_pydoc.json`, "
             f"{ppl['validation_tokens']:,} validation tokens, calibration {ppl['calibration_tokens']:,} tokens; "
             f"{_machine(ppl['machine'])}): original {ppl['dense_perplexity']:.3f} "
             f"({ppl['dense_params']:,} parameters), unigram {base.get('unigram_perplexity', float('nan')):.2f}, "
             f"bigram {base.get('bigram_perplexity', float('nan')):.2f}.", "",
             f"| ratio | parameters | weights only | one-shot whitening | corrected | loss-weighted (default) | "
             f"corrected + distilled ({steps} steps) |", "|---|---|---|---|---|---|---|"]
    fitted = ("weights_only", "one_shot_whitening", "calibrated", "loss_weighted")
    for r in ppl["rows"]:
        best = min(r.get(v, float("inf")) for v in fitted)
        cells = [f"**{r[v]:.3f}**" if r.get(v) == best else f"{r.get(v, float('nan')):.3f}" for v in fitted]
        lines.append(f"| {r['ratio']:g}x | {r['params']:,} | {' | '.join(cells)} | "
                     f"{r.get('calibrated_distilled', float('nan')):.3f} |")
    lines += ["", f"Prefill and KV-cache decode of a {speed['dense_params'] / 1e6:.0f} M-parameter random-weight "
              f"Llama, dense vs {speed['ratio']:g}x weights-only (`data/lm_decode_llama100m_cpu.json`, "
              f"{speed['rounds']} interleaved rounds, 95% bootstrap interval; "
              f"{_machine(speed['machine'], threads=False)}):", "",
              "| threads | ranks | phase | batch | dense tokens/s | decomposed tokens/s | speed-up [95%] | "
              "of bytes ideal |",
              "|---|---|---|---|---|---|---|---|"]
    for r in speed["results"]:
        g = r.get("granularity", 1)
        ranks = f"searched at {r['searched']}" if "searched" in r else "unrounded" if g == 1 else f"g={g}"
        lines.append(f"| {r['threads']} | {ranks} | {r['phase']} | {r['batch']} | {r['dense_tokens_s']:.1f} | "
                     f"{r['decomposed_tokens_s']:.1f} | {r['speedup']:.2f}x [{r['ci_low']:.2f}, {r['ci_high']:.2f}] | "
                     f"{r['realised_of_bytes_ideal']:.0%} of {r['bytes_ideal']:.2f}x |")
    lines += [f"\nRanks searched at {s['shape']} (batch {s['batch']}, multiples of {s['granularity']}) at "
              f"{s['threads']} thread(s), in {s['seconds']:.0f} s: {choices_text(s['shapes'])}."
              for s in speed.get("searched", [])]
    return "\n".join([*lines, SECTION_END])
