"""Notebook 09's language-model lab on the shipped SmolLM2-135M-Instruct: its texts, spectra per layer type,
perplexity per window (and whether a small sample can rank two models), greedy generations, and the recorded
quality and decode tables.

Texts: the pydoc help topics (:mod:`lrdlab.zoo.text`; calibration reads the training split, perplexity the
validation split) and, never calibrated on, IDLE's release history that ships with CPython. A perplexity measured
on a few windows moves with the sample; two models are ranked only where a paired bootstrap over the same windows
puts the ratio of their perplexities clear of 1. Recorded numbers are read from ``data/`` (:func:`data_dir`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from matplotlib.figure import Figure
from torch import Tensor, nn

from lrdlab.explore.figure_kit import PALETTE, new_figure, style
from lrdlab.explore.plots import cumulative_energy, layer_spectrum
from lrdlab.lowrank.plan_config import Layers, Ratio
from lrdlab.measure.records import data_dir, read_record

SEQ_LEN = 256
PROMPTS = ("The Python programming language is", "Once upon a time, there was a little",
           "To read a file line by line in Python, you")  # the prompts of data/lm_quality_smollm2.json
TEXTS = ("train", "validation", "history", "docstrings", "readmes")
LAYER_TYPES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
QUALITY_FILE = "lm_quality_smollm2.json"
DECODE_PREFIX = "lm_decode_smollm2_cpu"


def smollm2() -> Any:
    """The shipped SmolLM2-135M-Instruct and its tokenizer (``.model``, ``.tokenizer``), offline, float32."""
    from lrdlab.zoo.smollm import load_smollm2

    return load_smollm2()


# --- texts and perplexity --------------------------------------------------------------------------------


def history_path() -> Path:
    """IDLE's release history as CPython ships it (English prose the model never calibrates on)."""
    import idlelib

    return Path(idlelib.__file__).parent / "HISTORY.txt"


def text_windows(tokenizer: Any, which: str, count: int | None = None, seq_len: int = SEQ_LEN) -> Tensor:
    """The first ``count`` non-overlapping ``seq_len``-token windows ``[count, seq_len]`` (all when None) of
    ``"train"`` / ``"validation"`` (the pydoc corpus's splits, cut at 90% of the bytes), ``"history"`` or
    ``"docstrings"`` / ``"readmes"`` (:func:`~lrdlab.zoo.text.stdlib_docstrings`,
    :func:`~lrdlab.zoo.text.package_readmes`: more text to distil on)."""
    from lrdlab.zoo.text import TRAIN_FRACTION, corpus_text, package_readmes, stdlib_docstrings

    if which not in TEXTS:
        raise ValueError(f"text_windows: which must be one of {TEXTS}, got {which!r}")
    if which == "history":
        text = history_path().read_text(encoding="utf-8")
    elif which == "docstrings":
        text = stdlib_docstrings()
    elif which == "readmes":
        text = package_readmes()
    else:
        raw = corpus_text().encode("utf-8")
        cut = int(len(raw) * TRAIN_FRACTION)
        text = (raw[:cut] if which == "train" else raw[cut:]).decode("utf-8", errors="ignore")
    ids = _token_prefix(tokenizer, text, None if count is None else count * seq_len)
    usable = len(ids) // seq_len
    n = usable if count is None else min(count, usable)
    return ids[: n * seq_len].reshape(n, seq_len)


def _token_prefix(tokenizer: Any, text: str, tokens: int | None) -> Tensor:
    """The ids of ``text``'s first ``tokens`` tokens (all when None), tokenizing only a prefix of the text: the
    ids away from a cut are those of the whole text, so the prefix is cut well past the last id kept."""
    chars = len(text) if tokens is None else 8 * tokens + 256
    while True:
        ids = tokenizer(text[:chars])["input_ids"]
        if chars >= len(text) or tokens is None or len(ids) > tokens + 32:
            return torch.tensor(ids[:tokens] if tokens is not None else ids, dtype=torch.long)
        chars *= 2


def batches(windows: Tensor, batch: int = 4) -> list[dict[str, Tensor]]:
    """``{"input_ids"}`` batches of ``batch`` windows (what :func:`sequence_nll` and a calibration take)."""
    return [{"input_ids": w} for w in windows.split(batch)]


@torch.no_grad()
def sequence_nll(model: nn.Module, loader: Iterable) -> Tensor:
    """Mean next-token negative log-likelihood of every sequence of ``loader`` (batches of ``input_ids``), in order.

    With sequences of equal length, ``exp(sequence_nll(...).mean())`` is the loader's perplexity.
    """
    was_training = model.training
    model.eval()
    out = []
    try:
        for batch in loader:
            ids = batch["input_ids"] if isinstance(batch, dict) else batch[0]
            logits = model(input_ids=ids).logits[:, :-1]
            nll = nn.functional.cross_entropy(logits.transpose(1, 2), ids[:, 1:], reduction="none")
            out.append(nll.mean(1))
    finally:
        model.train(was_training)
    return torch.cat(out)


def perplexity(nll: Tensor) -> float:
    """The perplexity of equal-length sequences from their :func:`sequence_nll`."""
    return math.exp(float(nll.double().mean()))


@torch.no_grad()
def greedy(model: nn.Module, tokenizer: Any, prompts: Sequence[str] = PROMPTS, tokens: int = 30) -> list[str]:
    """Greedy continuations of ``prompts`` (``tokens`` new tokens each, the prompt left out)."""
    out = []
    for prompt in prompts:
        ids = tokenizer(prompt, return_tensors="pt")["input_ids"]
        generate: Any = model.generate  # transformers' GenerationMixin
        gen = generate(ids, max_new_tokens=tokens, do_sample=False, pad_token_id=tokenizer.eos_token_id)
        out.append(tokenizer.decode(gen[0, ids.shape[1]:], skip_special_tokens=True))
    return out


def blocks_only(blocks: Iterable[int]) -> Layers:
    """The layers of the named decoder blocks only (``model.layers.{i}.*``): a plan over a few blocks."""
    return Layers(include=[f"model.layers.{int(b)}.*" for b in blocks])


@dataclass(frozen=True)
class PairedOrder:
    """Model A's perplexity over model B's on the same sequences, with its 95% bootstrap interval."""

    ratio: float
    ci_low: float
    ci_high: float
    sequences: int

    @property
    def verdict(self) -> str:
        """``"lower"`` (A's perplexity is lower with 95% confidence), ``"higher"``, or ``"within noise"``."""
        return "lower" if self.ci_high < 1 else "higher" if self.ci_low > 1 else "within noise"

    def text(self, a: str, b: str) -> str:
        """One line naming the ratio, its interval and the verdict."""
        head = (f"{a} / {b} perplexity ×{self.ratio:.3g} [{self.ci_low:.3g}, {self.ci_high:.3g}] "
                f"on {self.sequences} sequences")
        if self.verdict == "within noise":
            return f"{head}: within noise, this sample cannot rank them"
        return f"{head}: {a} is {self.verdict} than {b}"


def paired_order(nll_a: Tensor, nll_b: Tensor, *, resamples: int = 2000, seed: int = 0) -> PairedOrder:
    """Compare two models' per-sequence losses on the same sequences (a paired bootstrap over sequences)."""
    if nll_a.shape != nll_b.shape or nll_a.ndim != 1 or len(nll_a) < 2:
        raise ValueError(f"paired_order needs two 1-D loss vectors of the same sequences (at least 2), got shapes "
                         f"{tuple(nll_a.shape)} and {tuple(nll_b.shape)}: pass sequence_nll of both models on one "
                         "loader")
    diff = (nll_a - nll_b).double()
    gen = torch.Generator().manual_seed(seed)
    idx = torch.randint(len(diff), (resamples, len(diff)), generator=gen)
    means = diff[idx].mean(1)
    low, high = torch.quantile(means, torch.tensor([0.025, 0.975], dtype=means.dtype)).tolist()
    return PairedOrder(float(diff.mean().exp()), float(torch.tensor(low).exp()), float(torch.tensor(high).exp()),
                       len(diff))


# --- a live check: dense against decompositions at the same ranks ------------------------------------------

VARIANTS = ("weights only", "SVD-LLM", "loss-weighted")  # the last: lrdlab.decompose_loss_weighted at the budget


@dataclass(frozen=True)
class LiveCheck:
    """What :func:`live_check` runs: each of ``variants`` (of :data:`VARIANTS`) at each of ``ratios``, calibrated on
    the first ``calibration`` 256-token windows of the pydoc training split and scored on the first ``evaluation``
    ``seq_len``-token validation windows; ``blocks``: only those decoder blocks are decomposed (None: every
    Linear the plan takes); greedy continuations of the first ``prompts`` of :data:`PROMPTS`, ``tokens`` each;
    ``history``: that many 256-token windows of IDLE's release history scored too (0: none; None: all)."""

    ratios: tuple[float, ...] = (2.0,)
    variants: tuple[str, ...] = VARIANTS[:2]
    calibration: int = 6  # 1,536 tokens: as many as the widest input (the MLP down projection) has dimensions
    evaluation: int = 4
    seq_len: int = SEQ_LEN
    blocks: tuple[int, ...] | None = None
    prompts: int = 1
    tokens: int = 20
    history: int | None = 0  # windows of IDLE's release history also scored, column "idle_history" (None: all)

    def __post_init__(self) -> None:
        unknown = sorted(set(self.variants) - set(VARIANTS))
        if unknown:
            raise ValueError(f"LiveCheck: unknown variants {unknown}; choose from {VARIANTS}")
        if self.calibration < 1 or self.evaluation < 2 or not self.ratios:
            raise ValueError(f"LiveCheck needs calibration >= 1, evaluation >= 2 windows (a paired comparison) and "
                             f"a ratio; got {self.calibration}, {self.evaluation}, {self.ratios}")


@dataclass(frozen=True)
class LiveResult:
    """:func:`live_check`'s rows (name, ratio, variant, layers decomposed, params, perplexity, fit_s), each model's
    per-window losses (``nll``) and greedy continuations (``generations``), keyed by ``name``."""

    rows: pd.DataFrame
    nll: dict[str, Tensor]
    generations: dict[str, list[str]]
    calibration_tokens: int
    evaluation_tokens: int

    def order(self, a: str, b: str) -> PairedOrder:
        """Model ``a``'s perplexity over ``b``'s on the same windows, with its bootstrap interval."""
        return paired_order(self.nll[a], self.nll[b])


def _decomposed(model: nn.Module, plan: Any, variant: str, calibration: list, ratio: float,
                layers: Layers | None) -> nn.Module:
    from lrdlab.lowrank.calibration import Calibration
    from lrdlab.lowrank.decompose import decompose
    from lrdlab.lowrank.loss_weighted import LossWeighted, decompose_loss_weighted

    if variant == "loss-weighted":  # the same parameter budget as the plan's Ratio, ranks allocated by the loss
        return decompose_loss_weighted(model, calibration, LossWeighted(ratio), layers,
                                       progress=False)[0]
    if variant == "weights only":
        return decompose(model, plan, progress=False)
    return decompose(model, plan, calibration=Calibration(calibration, mode="one-shot"), progress=False)


def live_check(model: nn.Module, tokenizer: Any, check: LiveCheck = LiveCheck()) -> LiveResult:
    """Dense against each decomposition of ``check`` at the same ranks: perplexity on the same validation windows
    and greedy continuations. One decomposed copy is held at a time."""
    import time

    from lrdlab.lowrank.plan import make_plan
    from lrdlab.measure.counting import count_params

    calib = batches(text_windows(tokenizer, "train", check.calibration), 2)
    evaluation = batches(text_windows(tokenizer, "validation", check.evaluation, check.seq_len))
    prompts = PROMPTS[: check.prompts]
    layers = blocks_only(check.blocks) if check.blocks is not None else None
    history = batches(text_windows(tokenizer, "history", check.history)) if check.history != 0 else None
    nll = {"dense": sequence_nll(model, evaluation)}
    generations = {"dense": greedy(model, tokenizer, prompts, check.tokens)}
    rows = [{"name": "dense", "ratio": 1.0, "variant": "dense", "layers decomposed": 0,
             "params": count_params(model), "perplexity": perplexity(nll["dense"]), "fit_s": 0.0}]
    if history is not None:
        rows[0]["idle_history"] = perplexity(sequence_nll(model, history))
    for ratio in check.ratios:
        plan = make_plan(model, Ratio(ratio), layers)
        for variant in check.variants:
            start = time.perf_counter()
            low = _decomposed(model, plan, variant, calib, ratio, layers)
            fit_s = time.perf_counter() - start
            name = f"{variant} {ratio:g}x"
            nll[name] = sequence_nll(low, evaluation)
            generations[name] = greedy(low, tokenizer, prompts, check.tokens)
            rows.append({"name": name, "ratio": ratio, "variant": variant,
                         "layers decomposed": len(plan.decomposed_layers), "params": count_params(low),
                         "perplexity": perplexity(nll[name]), "fit_s": round(fit_s, 1)})
            if history is not None:
                rows[-1]["idle_history"] = perplexity(sequence_nll(low, history))
            del low
    tokens = lambda bs: sum(int(b["input_ids"].numel()) for b in bs)  # noqa: E731
    return LiveResult(pd.DataFrame(rows), nll, generations, tokens(calib), tokens(evaluation))


# --- spectra per layer type ------------------------------------------------------------------------------


@dataclass(frozen=True)
class TypeSpectra:
    """Each layer's weight spectrum and its *data* spectrum (singular values of ``W L``, ``L`` the Cholesky
    factor of its calibration inputs' second moment: what SVD-LLM truncates), and per layer the share of each
    energy kept at the rank of ``Ratio(ratio)`` (``table``: block, type, rank, weight_energy, data_energy)."""

    weights: dict[str, np.ndarray]
    data: dict[str, np.ndarray]
    table: pd.DataFrame
    ratio: float
    tokens: int


def spectra_by_type(model: nn.Module, calibration: Sequence, blocks: Sequence[int], ratio: float = 2.0) -> TypeSpectra:
    """Weight and data spectra of every Linear in the decoder ``blocks`` of a Llama-style ``model``, from one
    pass over ``calibration`` (token-id batches), with the energy each keeps at ``Ratio(ratio)``'s ranks."""
    from lrdlab.lowrank.loss_spectra import loss_spectra
    from lrdlab.lowrank.plan import make_plan

    layers = blocks_only(blocks)
    measured = loss_spectra(model, calibration, layers, progress=False)
    plan = make_plan(model, Ratio(ratio), layers)
    weights, data, rows = {}, {}, []
    for row in plan.decomposed_layers:
        name, rank = row.name, row.spec[1][0]
        weights[name] = layer_spectrum(model.get_submodule(name))
        data[name] = measured.layers[name].singular_values.numpy()
        rows.append({"block": int(name.split(".")[2]), "type": name.rsplit(".", 1)[-1], "rank": rank,
                     "weight_energy": float(cumulative_energy(weights[name])[rank - 1]),
                     "data_energy": float(cumulative_energy(data[name])[rank - 1])})
    return TypeSpectra(weights, data, pd.DataFrame(rows), ratio, measured.tokens)


def plot_type_spectra(spectra: TypeSpectra, block: int) -> Figure:
    """Cumulative energy against rank for each layer type of one block: the weights' (left) and the data's (right,
    what the whitened fit keeps), each type's ``Ratio`` rank marked."""
    names = [n for n in spectra.weights if int(n.split(".")[2]) == block]
    if not names:
        raise ValueError(f"plot_type_spectra: block {block} was not measured; measured: "
                         f"{sorted(set(spectra.table['block']))}")
    ranks = spectra.table.set_index(["block", "type"])["rank"]
    import seaborn as sns

    with style():
        fig, axes = new_figure(1, 2, width=10, height=3.6)
        colors = sns.color_palette(PALETTE, len(names))
        for ax, source, title in ((axes[0], spectra.weights, "weights"),
                                  (axes[1], spectra.data, f"data (whitened, {spectra.tokens:,} tokens)")):
            for color, name in zip(colors, names):
                kind = name.rsplit(".", 1)[-1]
                energy = cumulative_energy(source[name])
                rank = int(ranks[(block, kind)])
                ax.plot(np.arange(1, len(energy) + 1), energy, color=color, lw=1.4,
                        label=f"{kind} ({100 * energy[rank - 1]:.1f}% at r={rank})")
                ax.plot([rank], [energy[rank - 1]], "o", color=color, ms=4)
            ax.set(xlabel="rank", ylabel="energy kept", title=f"block {block}: {title}", ylim=(0, 1.02))
            ax.legend(fontsize=7, loc="lower right")
        fig.suptitle(f"SmolLM2-135M, decoder block {block}: what a rank cut keeps (dots: ranks at {spectra.ratio}x)")
    return fig


# --- recorded tables -------------------------------------------------------------------------------------


def _quality_rows(record: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for run in record.get("runs", []):
        rows += [{**r, "command": run.get("command", record.get("command"))} for r in run.get("rows", [])]
    for run in record.get("unfinished_runs", {}).values():
        rows += [{**r, "command": run.get("command", "")} for r in run.get("rows", [])]
    return rows


def recorded_quality(path: str | Path | None = None) -> pd.DataFrame:
    """The recorded SmolLM2 perplexities (``data/lm_quality_smollm2.json``): one row per (variant, ratio), the
    latest run's, with pydoc validation and IDLE history perplexity, parameters and greedy generations."""
    record = read_record(Path(path) if path else data_dir() / QUALITY_FILE)
    rows = _quality_rows(record)
    if not rows:
        raise ValueError(f"{path or QUALITY_FILE} holds no rows; record it with python -m tools.record.lm_quality")
    columns = ["variant", "ratio", "policy", "pydoc_validation", "idle_history", "params_after", "generations",
               "command"]
    df = pd.DataFrame(rows).reindex(columns=columns)
    return df.drop_duplicates(["variant", "ratio"], keep="last").sort_values(["ratio", "variant"]).reset_index(
        drop=True)


LOSS_WEIGHTED = "loss-weighted (Fisher), loss-allocated"  # lrdlab.decompose_loss_weighted's rows
_SUMMARY_VARIANTS = {"diagonal/loss": LOSS_WEIGHTED, "plain/uniform": "SVD-LLM"}


def recorded_loss_weighted(path: str | Path | None = None, calibration_windows: int = 16) -> pd.DataFrame:
    """The recorded ``lrdlab.decompose_loss_weighted`` perplexities (``loss_weighted_summary`` of
    ``data/lm_quality_smollm2.json``) beside uniform SVD-LLM's on the same ``calibration_windows`` and budget: one
    row per (method, ratio) with pydoc validation and IDLE history perplexity, and each text's ratio to SVD-LLM's
    at that ratio, computed here from the two rows."""
    record = read_record(Path(path) if path else data_dir() / QUALITY_FILE)
    rows = [r for r in record.get("loss_weighted_summary", {}).get("rows", [])
            if r.get("calibration_windows") == calibration_windows and r.get("variant") in _SUMMARY_VARIANTS]
    if not rows:
        raise ValueError(f"{path or QUALITY_FILE} holds no loss_weighted_summary rows at {calibration_windows} "
                         "calibration windows; pass one of the recorded calibration_windows")
    df = pd.DataFrame(rows)
    df["method"] = df["variant"].map(_SUMMARY_VARIANTS)
    svd = df[df["method"] == "SVD-LLM"].set_index("ratio")
    for text in ("pydoc_validation", "idle_history"):
        df[f"{text}_vs_svd_llm"] = df[text] / df["ratio"].map(svd[text])
    columns = ["method", "ratio", "calibration_windows", "pydoc_validation", "idle_history",
               "pydoc_validation_vs_svd_llm", "idle_history_vs_svd_llm"]
    return df[columns].sort_values(["ratio", "method"]).reset_index(drop=True)  # SVD-LLM first at each ratio


DISTILL_FILE = "lm_distill_smollm2.json"
_STARTS = {"svd_llm_distilled": "SVD-LLM", "loss_weighted_distilled": LOSS_WEIGHTED}


def recorded_distillation(path: str | Path | None = None) -> pd.DataFrame:
    """The recorded distillations of SmolLM2 from its dense model (``data/lm_distill_smollm2.json``): one row per run,
    with its start (SVD-LLM or loss-weighted) and the pydoc training windows that calibrated it (``calibration``; 16
    for runs recorded before the record named it) and the docstring and README windows beside them
    (``calibration_docstrings``, ``calibration_readmes``), ratio, recipe (steps, peak lr, schedule, warm-up, the
    ``seed`` that drew the windows, the ``trainable`` parameters), the windows sampled from the dense model
    (``teacher_samples``), of the standard library's docstrings (``docstring_windows``) and of the installed
    packages' READMEs (``readme_windows``) that joined the pydoc text, the minutes of sampling and training, the
    start's perplexities (``start_pydoc``, ``start_idle``: the run's own, else from a run that scored the same
    start, else for a 16-window start from the quality record, :func:`recorded_loss_weighted`), the final pydoc
    validation and IDLE history perplexities, each also as a multiple of dense, and the curve's last slope
    (perplexity per step on the curve's windows: still falling where negative)."""
    record = read_record(Path(path) if path else data_dir() / DISTILL_FILE)
    dense = record["dense"]

    def start_key(run: dict[str, Any], variant: str, ratio: float) -> tuple[Any, ...]:
        return (variant, ratio, run.get("calibration_windows", 16), run.get("calibration_docstring_windows", 0),
                run.get("calibration_readme_windows", 0))

    variants = {label: name.removesuffix("_distilled") for name, label in _STARTS.items()}
    starts = {start_key({}, variants[q["method"]], q["ratio"]): q
              for q in recorded_loss_weighted().to_dict("records") if q["method"] in variants}
    starts.update({start_key(run, r["variant"], r["ratio"]): r for run in record.get("runs", [])
                   for r in run.get("rows", []) if f"{r.get('variant')}_distilled" in _STARTS})
    rows = []
    for run in record.get("runs", []):
        for r in run.get("rows", []):
            if r.get("variant") not in _STARTS:
                continue
            recipe, curve = r["distill"], r.get("curve", [])
            key = start_key(run, variants[_STARTS[r["variant"]]], r["ratio"])
            start = next((s for s in run["rows"] if start_key(run, s["variant"], s["ratio"]) == key),  # its own
                         starts.get(key, {}))
            slope = ((curve[-1]["perplexity"] - curve[-2]["perplexity"]) / (curve[-1]["step"] - curve[-2]["step"])
                     if len(curve) > 1 else math.nan)
            rows.append({"start": _STARTS[r["variant"]], "calibration": run.get("calibration_windows", 16),
                         "calibration_docstrings": run.get("calibration_docstring_windows", 0),
                         "calibration_readmes": run.get("calibration_readme_windows", 0),
                         "ratio": r["ratio"], "steps": recipe["steps"],
                         "lr": recipe["lr"], "schedule": recipe["schedule"], "warmup": recipe["warmup"],
                         "seed": recipe.get("seed", 0), "trainable": recipe.get("trainable", "all"),
                         "teacher_samples": r.get("teacher_samples", 0),
                         "docstring_windows": r.get("docstring_windows", 0),
                         "readme_windows": r.get("readme_windows", 0),
                         "train_min": (r["train_s"] + r.get("sample_s", 0)) / 60,
                         "start_pydoc": start.get("pydoc_validation", math.nan),
                         "start_idle": start.get("idle_history", math.nan),
                         "pydoc_validation": r["pydoc_validation"],
                         "idle_history": r["idle_history"],
                         "pydoc_x_dense": r["pydoc_validation"] / dense["pydoc_validation"],
                         "idle_x_dense": r["idle_history"] / dense["idle_history"],
                         "curve_slope": slope,
                         "load_after": run.get("load_after", [None])[0], "command": run.get("command", "")})
    if not rows:
        raise ValueError(f"{path or DISTILL_FILE} holds no distilled rows; record them with "
                         "python -m tools.record.lm_distill")
    return pd.DataFrame(rows).sort_values(["ratio", "start", "calibration", "steps"]).reset_index(drop=True)


def recorded_decode(names: Sequence[str] | None = None) -> pd.DataFrame:
    """The recorded SmolLM2 speed-ups (``bench-lm --model smollm2_135m``: every ``data/lm_decode_smollm2_cpu*.json``
    unless ``names`` are given), one row per file, phase and batch, each ``setting`` named by its phase, batch and
    file (``default``, ``auto``, ``quiet``, …), with its ``lm_head`` treatment, factor layout, compute mode, load,
    interval and bytes ideal."""
    paths = (sorted(data_dir().glob(f"{DECODE_PREFIX}*.json")) if names is None
             else [data_dir() / n for n in names if (data_dir() / n).is_file()])
    rows = []
    for path in paths:
        rec = read_record(path)
        bench = rec.get("bench", {})
        label = path.stem[len(DECODE_PREFIX):].lstrip("_") or "default"
        for r in rec["results"]:
            compute = r.get("compute", {})
            rows.append({"setting": f"{r['phase']} b{r['batch']} · {label}", "phase": r["phase"], "batch": r["batch"],
                         "lm_head": bool(rec.get("lm_head_decomposed", False)),
                         "layout": bench.get("layout", "as built"),
                         "dense_layout": bench.get("dense_layout", "as loaded"),
                         "compute": compute.get("compute_asked") or compute.get("compute_mode", "default"),
                         "dense_tokens_s": r["dense_tokens_s"], "decomposed_tokens_s": r["decomposed_tokens_s"],
                         "speedup": r["speedup"], "ci_low": r["ci_low"], "ci_high": r["ci_high"],
                         "bytes_ideal": r["bytes_ideal"], "threads": r["threads"], "load": r["load_average"][0],
                         "file": path.name})
    return pd.DataFrame(rows)


def recorded_calibration(name: str = "lm_calibration_smollm2_cpu.json") -> pd.DataFrame | None:
    """The recorded runs of ``decompose(model, plan, calibration=batches)`` on SmolLM2 (``data/NAME``), one row per
    calibration mode: the mode asked and the one it resolved to, ratio, validation tokens and perplexity, its
    multiple of dense, wall seconds and peak memory above the loaded model (GB); None when not recorded."""
    path = data_dir() / name
    if not path.is_file():
        return None
    record = read_record(path)
    dense = record["dense_perplexity"]
    return pd.DataFrame([{"mode": r["mode"], "resolved_mode": r.get("resolved_mode", r["mode"]),
                          "ratio": record["ratio"], "validation_tokens": record["evaluation"]["tokens"],
                          "validation_perplexity": r["validation_perplexity"], "dense_perplexity": dense,
                          "vs_dense": r["validation_perplexity"] / dense, "wall_s": r["wall_s"],
                          "peak_gb_above_loaded": r["peak_mb_above_loaded"] / 1024} for r in record["rows"]])


def repetition(tokens: Sequence) -> float:
    """Share of the adjacent token pairs of ``tokens`` that repeat an earlier pair (0: none; 0 under 3 tokens)."""
    pairs = list(zip(tokens, tokens[1:]))
    return 1 - len(set(pairs)) / len(pairs) if len(pairs) > 1 else 0.0
