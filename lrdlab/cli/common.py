"""Arguments and helpers the subcommands share: the model, the plan options, speed options, threads."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


def add_model_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="registered model name, e.g. resnet50 (see `lrdlab models`)")
    p.add_argument("--image-size", type=int, default=None, help="input height = width (default: the model's)")
    p.add_argument("--num-classes", type=int, default=None, help="classifier outputs (default: the model's)")


def add_plan_arguments(p: argparse.ArgumentParser) -> None:
    policy = p.add_mutually_exclusive_group()
    add_ratio_argument(policy)
    policy.add_argument("--energy", type=float, help="keep this fraction of Σσ² per layer")
    policy.add_argument("--vbmf", action="store_true", help="ranks by empirical variational Bayes (VBMF)")
    policy.add_argument("--rank", type=int, help="one fixed rank for every layer")
    add_granularity_argument(p)
    p.add_argument("--rounding", choices=["down", "up", "nearest"], default="down")
    p.add_argument("--method", default="auto", metavar="FORM",
                   help="form of k×k convs: auto, or a registered k×k method (lrdlab.lowrank.methods."
                        "kxk_method_names(); Linear and 1×1 convs always use SVD)")
    p.add_argument("--option", action="append", default=None, metavar="METHOD.NAME=VALUE",
                   help="one option of a method (a field of its options_type), repeatable; see docs/architecture.md")
    p.add_argument("--branches", type=int, default=1, help="branched Tucker: groups of the core (default 1)")
    p.add_argument("--include", nargs="*", default=None, metavar="PATTERN", help="only layers matching these globs")
    p.add_argument("--exclude", nargs="*", default=None, metavar="PATTERN",
                   help="skip layers matching these globs, e.g. conv1 '*.downsample.*'")
    p.add_argument("--paper", action="store_true",
                   help="the paper's setting for ResNets: ratio 2, stem and downsample convs excluded")


def add_model_and_plan(p: argparse.ArgumentParser,
                        plan_help: str = "a plan JSON (default: plan from the options above)") -> None:
    """MODEL, the plan options, and ``--plan FILE`` to use a saved plan instead."""
    add_model_arguments(p)
    add_plan_arguments(p)
    p.add_argument("--plan", type=Path, help=plan_help)


def build_model(args: argparse.Namespace):
    from lrdlab.zoo import models

    model = models.get_model(args.model, num_classes=args.num_classes).eval()
    c, h, w = models.input_size(args.model)
    if args.image_size:
        h = w = args.image_size
    return model, (1, c, h, w)


def plan_from_args(model, args: argparse.Namespace):
    from lrdlab.lowrank.plan import VBMF, Energy, FixedRank, Layers, RankPolicy, Ratio, applicable_patterns, make_plan

    exclude = list(args.exclude or [])
    if args.paper:  # the paper's exclusions where this model has such layers (CIFAR ResNets have no downsample conv)
        from lrdlab.lowrank.plan_config import PAPER_EXCLUDE  # here: torch must not load before --compute applies

        exclude += [p for p in applicable_patterns(model, PAPER_EXCLUDE) if p not in exclude]
    shared: dict[str, Any] = dict(granularity=args.granularity, rounding=args.rounding, branches=args.branches)
    policy: RankPolicy  # --ratio / --energy / --vbmf / --rank are mutually exclusive; none: ratio 2
    if args.energy is not None:
        policy = Energy(args.energy, **shared)
    elif args.vbmf:
        policy = VBMF(**shared)
    elif args.rank is not None:
        policy = FixedRank(args.rank, **shared)
    else:
        policy = Ratio(2.0 if args.ratio is None else args.ratio, **shared)
    return make_plan(model, policy, Layers(include=args.include, exclude=exclude or None), method=args.method,
                     options=_method_options(args.option), model_name=args.model)


def _option_value(text: str, kind: type) -> Any:
    """``--option``'s VALUE as the type of the field's default (bool: true/false, 1/0, yes/no)."""
    if kind is bool:
        if text.lower() not in ("true", "false", "1", "0", "yes", "no"):
            raise ValueError(f"{text!r} is not true or false")
        return text.lower() in ("true", "1", "yes")
    return kind(text)


def _method_options(texts: list[str] | None) -> list:
    """``--option METHOD.NAME=VALUE`` (repeated) as one options object per method, each made by its method."""
    from dataclasses import fields

    from lrdlab.lowrank.methods import get_method

    given: dict[str, dict[str, Any]] = {}
    for text in texts or []:
        key, eq, value = text.partition("=")
        name, dot, field_name = key.partition(".")
        if not (eq and dot):
            raise ValueError(f"--option {text!r}: give METHOD.NAME=VALUE (a method's name, one of its options, "
                             f"a value)")
        kinds = {f.name: type(f.default) for f in fields(get_method(name).options_type)}
        if field_name not in kinds:
            raise ValueError(f"--option {text!r}: method {name!r} has no option {field_name!r}; its options are "
                             f"{sorted(kinds) or 'none'}")
        try:
            given.setdefault(name, {})[field_name] = _option_value(value, kinds[field_name])
        except ValueError as err:
            raise ValueError(f"--option {text!r}: {err}; give a {kinds[field_name].__name__}") from None
    return [get_method(name).options(values) for name, values in given.items()]




def stats_dict(model, decomposed, plan, input_shape) -> dict[str, Any]:
    """The stable JSON report of a plan: layers, params and FLOPs of original and decomposed model."""
    from lrdlab.measure.counting import FLOP_COUNTER, count_flops, count_params, percent_change

    p0, p1 = count_params(model), count_params(decomposed)
    f0, f1 = count_flops(model, input_shape), count_flops(decomposed, input_shape)
    out = plan.to_dict()
    out["input_shape"] = list(input_shape)
    out["params"] = {"original": p0, "decomposed": p1, "change_pct": round(percent_change(p0, p1), 4)}
    out["flops"] = {"original": f0, "decomposed": f1, "change_pct": round(percent_change(f0, f1), 4),
                    "counter": FLOP_COUNTER}
    return out


def print_stats(report: dict[str, Any]) -> None:
    p, f = report["params"], report["flops"]
    print(f"model {report['model']}, input {tuple(report['input_shape'])}")
    print(f"params: {p['original']:,} → {p['decomposed']:,} ({p['change_pct']:+.2f}%)")
    print(f"FLOPs:  {f['original']:,} → {f['decomposed']:,} ({f['change_pct']:+.2f}%)  [{f['counter']}]")


def add_speed_arguments(p: argparse.ArgumentParser, repeats: int = 3, many_threads: bool = False) -> None:
    p.add_argument("--batch", type=int, default=8, help="batch size (default 8)")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    p.add_argument("--dtype", choices=["fp32", "bf16", "fp16"], default="fp32", help="autocast dtype (default fp32)")
    p.add_argument("--repeats", type=int, default=repeats, help=f"timed runs per measurement (default {repeats})")
    add_threads_argument(p, many=many_threads)


# --- the options several commands share, each defined here once ------------------------------------------------


def add_threads_argument(p: Any, *, many: bool = False, default: list[int] | None = None,
                         default_text: str = "as --compute leaves them") -> None:
    """``--threads N``, or with ``many`` ``--threads 1,2,4`` (one measurement per count)."""
    p.add_argument("--threads", type=thread_counts if many else thread_count, default=default,
                   metavar="N[,N…]" if many else "N",
                   help=f"torch CPU threads{', a list for one measurement per count' if many else ''} "
                        f"(default: {default_text})")


def add_ratio_argument(p: Any, default: float | None = None) -> None:
    """``--ratio α``: the per-layer compression target (None: the plan's default, 2)."""
    p.add_argument("--ratio", type=float, default=default,
                   help=f"per-layer compression target α (default {default or 2:g}: 1/α of the weights)")


def add_granularity_argument(p: Any, *, many: bool = False, default: list[int] | None = None) -> None:
    """``--granularity G`` (ranks rounded to multiples of G), or with ``many`` a list ``1,64`` timed each."""
    chosen: Any = (default or [1]) if many else 1
    shown = ",".join(map(str, chosen)) if many else "1"
    p.add_argument("--granularity", type=granularities if many else int, default=chosen,  # int: checked >= 1 later
                   metavar="G[,G…]" if many else "G",
                   help=f"round ranks down to multiples of G (default {shown}){'; a list times each' if many else ''}")


def granularities(text: str) -> list[int]:
    """argparse type of ``--granularity 1,64``: distinct whole numbers ≥ 1."""
    try:
        values = [int(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma list of whole numbers, e.g. 1,64") from None
    if min(values) < 1 or len(set(values)) != len(values):
        raise argparse.ArgumentTypeError(f"{text!r}: granularities are distinct whole numbers ≥ 1, e.g. 1,64")
    return values


def one_granularity(text: str) -> int:
    """argparse type of ``--search-granularity 16``: one whole number ≥ 1."""
    values = granularities(text)
    if len(values) != 1:
        raise argparse.ArgumentTypeError(f"{text!r}: one granularity, e.g. 16")
    return values[0]


_POLICY_OPTIONS = ("ratio", "energy", "vbmf", "rank", "paper", "include", "exclude", "option")


def load_or_make_plan(model, args):
    from lrdlab.lowrank.plan import Plan

    if not getattr(args, "plan", None):
        return plan_from_args(model, args)
    given = [f"--{k}" for k in _POLICY_OPTIONS if getattr(args, k, None) not in (None, False)]
    if given:
        raise ValueError(f"--plan {args.plan} fixes every layer's ranks, so {', '.join(given)} would be ignored; "
                         f"drop {'them' if len(given) > 1 else 'it'} or drop --plan")
    return Plan.load(args.plan)


# --- errors, outputs, compute, progress bars: what every subcommand shares ---------------------------------


class CommandLineError(Exception):
    """A usage error argparse found, as the one line the CLI prints."""


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (``lrdlab bench: error: …``) and exit code 2, like every other error."""

    def error(self, message: str):
        raise CommandLineError(f"{self.prog}: error: {' '.join(message.split())} (see {self.prog} --help)")


def _thread_values(text: str) -> list[int]:
    from lrdlab.measure.compute import available_cores

    cores = available_cores()
    try:
        values = [int(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a thread count: give whole numbers, e.g. 2 or 1,2") from None
    for n in values:
        if not 1 <= n <= cores:
            raise argparse.ArgumentTypeError(f"{n} threads: this machine has {cores} cores, give 1 to {cores}")
    return values


def thread_count(text: str) -> int:
    """argparse type of ``--threads N``: a whole number from 1 to the cores available."""
    values = _thread_values(text)
    if len(values) != 1:
        raise argparse.ArgumentTypeError(f"{text!r}: one thread count here (only `lrdlab bench` and `bench-lm` "
                                         f"take a list)")
    return values[0]


def thread_counts(text: str) -> list[int]:
    """argparse type of ``--threads 1,2,4``: distinct whole numbers from 1 to the cores available."""
    values = _thread_values(text)
    if len(set(values)) != len(values):
        raise argparse.ArgumentTypeError(f"{text!r} repeats a thread count")
    return values


def add_compute_argument(parser: argparse.ArgumentParser) -> None:
    """``--compute default|shared|auto`` on ``parser`` and on each of its subcommands (before or after the name)."""
    from lrdlab.measure.compute import ENV, MODES

    def add(p: argparse.ArgumentParser, default: Any) -> None:
        p.add_argument("--compute", choices=MODES, default=default,
                       help=f"default: torch's threads and waits (the user's own machine); shared: passive waits and "
                            f"the free cores (a loaded shared machine); auto: shared when the load is high "
                            f"(default: ${ENV}, else default)")
        for action in p._actions:
            if isinstance(action, argparse._SubParsersAction):
                for child in set(action.choices.values()):
                    add(child, argparse.SUPPRESS)

    add(parser, None)


def apply_compute_from_args(args: argparse.Namespace) -> None:
    """Apply ``--compute`` (or ``$LRDLAB_COMPUTE``) and ``--threads N`` before torch loads.

    A setting that cannot take effect is a one-line warning; timed commands print the compute with their results.
    """
    import warnings

    from lrdlab.measure.compute import apply_compute

    threads = args.threads if isinstance(getattr(args, "threads", None), int) else None
    if isinstance(getattr(args, "threads", None), list) and len(args.threads) == 1:
        threads = args.threads[0]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        apply_compute(getattr(args, "compute", None), threads)  # current_compute() reads it back
    for w in caught:
        print(f"lrdlab {args.command}: warning: {' '.join(str(w.message).split())}", file=sys.stderr)


# (command, what) whose --out is a folder
FOLDER_OUTPUTS: set[tuple[str, str | None]] = {("decompose", None), ("train", None), ("reproduce", None)}


def _check_output(path: Path, flag: str, folder: bool) -> None:
    kind = "folder" if folder else "file"
    if path.exists():
        if folder != path.is_dir():
            raise ValueError(f"{flag} {path} is a {'file' if folder else 'folder'}; give a {kind} to write")
        if not os.access(path, os.W_OK):
            raise ValueError(f"{flag} {path} is not writable; give a {kind} you may write")
        return
    parent = path.parent if not folder else next(p for p in path.absolute().parents if p.exists())
    if not parent.exists():
        raise ValueError(f"{flag} {path}: the folder {parent} does not exist; create it or give another path")
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise ValueError(f"{flag} {path}: {parent} is not a writable folder; give another path")


def check_outputs(args: argparse.Namespace, folders: set[tuple[str, str | None]] = FOLDER_OUTPUTS) -> None:
    """Every output path (``--out``, ``--traces``, ``--record``) checked for writability before the work starts;
    ``--out`` is a folder for the (``command``, ``what``) pairs in ``folders``."""
    folder = (args.command, getattr(args, "what", None)) in folders
    for key, is_folder in (("out", folder), ("traces", False), ("record", False)):
        path = getattr(args, key, None)
        if isinstance(path, Path):
            _check_output(path, f"--{key}", is_folder)


def _env_true(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() not in ("", "0", "false", "no", "off")


@contextmanager
def honour_tqdm_disable() -> Iterator[None]:
    """With ``TQDM_DISABLE`` set, no progress bar, even where lrdlab passes ``disable=`` explicitly.

    tqdm reads the variable only as a default, which an explicit ``disable=False`` overrides.
    """
    if not _env_true("TQDM_DISABLE"):
        yield
        return
    from tqdm import std

    init = std.tqdm.__init__

    def quiet(self, *a, **k):
        k["disable"] = True
        init(self, *a, **k)

    std.tqdm.__init__ = quiet
    try:
        yield
    finally:
        std.tqdm.__init__ = init
