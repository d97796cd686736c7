"""The Plan: one row per candidate layer, what to do with it and why; model-wide decomposition.

A Plan is what a user reads (a table), what a widget edits, what the measured search refines and
what is saved as JSON beside a ``state_dict`` so a decomposed model reloads exactly.
"""

from __future__ import annotations

import fnmatch
import json
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from torch import nn

from lrdlab.lowrank import attention, conv_kinds, experts, force_check, guards, hf, methods, usage
from lrdlab.lowrank.layers import LowRankLayer, describe, unsupported_reason
from lrdlab.lowrank.methods import TUCKER2, Method, MethodOptions, get_method
from lrdlab.lowrank.plan_config import (  # noqa: F401  (the configs re-exported beside make_plan)
    VBMF,
    Energy,
    FixedRank,
    Layers,
    RankPolicy,
    Ratio,
    check_policy,
    policy_from_settings,
)
from lrdlab.lowrank.policies import (  # noqa: F401  (MIN_RANK and params_of re-exported)
    MIN_RANK,
    params_of,
    reduce_capped,
    round_and_check,
)


@dataclass
class LayerPlan:
    """One layer's row: what it is, what happens to it, and why."""

    name: str
    type: str
    in_channels: int
    out_channels: int
    kernel_size: list[int]
    method: str | None
    ranks: list[int] | None
    params_before: int
    params_after: int
    reason: str
    target_ranks: list[int] | None = None
    branches: int = 1

    @property
    def decomposed(self) -> bool:
        return self.method is not None

    @property
    def spec(self) -> tuple[str, tuple[int, ...]]:
        """``(method, ranks)`` of a decomposed row (a ValueError for a row that keeps its layer)."""
        if self.method is None or self.ranks is None:
            raise ValueError(f"layer {self.name!r} is not decomposed by the plan ({self.reason})")
        return self.method, tuple(self.ranks)

    def keep(self, reason: str) -> None:
        """Mark this row as left unchanged, saying why."""
        self.method, self.ranks, self.target_ranks, self.params_after = None, None, None, self.params_before
        self.reason = reason


@dataclass
class Plan:
    """What ``decompose`` will do to a model, row by row."""

    model: str
    layers: list[LayerPlan]
    settings: dict[str, Any] = field(default_factory=dict)

    # --- reading -------------------------------------------------------------------------------
    def __getitem__(self, name: str) -> LayerPlan:
        for row in self.layers:
            if row.name == name:
                return row
        raise KeyError(f"no layer named {name!r} in this plan")

    @property
    def decomposed_layers(self) -> list[LayerPlan]:
        return [row for row in self.layers if row.decomposed]

    @property
    def policy(self) -> RankPolicy | None:
        """The rank policy the plan was made with (None for a plan that records none, e.g. one made by hand)."""
        return policy_from_settings(self.settings)

    def options_for(self, method: str | Method) -> MethodOptions:
        """The options the plan records for ``method`` (its defaults where it records none)."""
        form = get_method(method)
        return form.options(self.settings.get("options", {}).get(form.name))

    def to_frame(self):
        import pandas as pd

        rows = [
            {
                "name": r.name,
                "type": r.type,
                "C": r.in_channels,
                "S": r.out_channels,
                "kernel": "×".join(map(str, r.kernel_size)),
                "method": r.method or "—",
                "ranks": ",".join(map(str, r.ranks)) if r.ranks else "—",
                "params_before": r.params_before,
                "params_after": r.params_after,
                "reason": r.reason,
            }
            for r in self.layers
        ]
        return pd.DataFrame(rows)

    def summary(self) -> str:
        """One line: layers decomposed, their parameters before → after (kept layers, e.g. a tied lm_head, are not
        counted among them), the parameters outside any row, the whole model's where the plan records it, and a loud
        "NOT PROBED" when no probe forward checked which layers the model calls."""
        done = self.decomposed_layers
        before, after = sum(r.params_before for r in done), sum(r.params_after for r in done)
        removed = 100 * (1 - after / before) if before else 0.0
        text = (f"Plan for {self.model}: {len(done)} of {len(self.layers)} layers decomposed; decomposed layers' "
                f"params {_millions(before)} → {_millions(after)} ({removed:.2f}% removed)")
        for name in self.settings.get("untied", {}):  # an output head untied from the input embedding
            head = self[name]
            text += f"; of which the untied {name} {_millions(head.params_before)} → {_millions(head.params_after)}"
        rest = self.settings.get("uncovered") or {}
        if rest.get("params"):
            text += (f"; {_millions(rest['params'])} params in {rest['tensors']} tensor(s) outside any row, left whole "
                     f"(largest {rest['largest']!r} {rest['largest_shape']})")
        total = self.settings.get("model_params")
        if total:  # an untied head adds its own weight before its decomposition (lrdlab.lowrank.hf.untie_lm_head)
            whole = total + self.settings.get("untied_params", 0) - (before - after)
            text += f"; whole model {_millions(total)} → {_millions(whole)} ({100 * (1 - whole / total):.2f}% removed)"
        probe = str(self.settings.get("probe", ""))
        if probe.startswith("not probed"):
            text += (" — NOT PROBED: layers the model never calls or whose weight it reads may be decomposed and "
                     "make it slower; give an input, Layers(example_input=...)")
        return text

    def __str__(self) -> str:
        return self.summary() + "\n" + self.to_frame().to_string(index=False)

    def _repr_html_(self) -> str:
        return f"<p>{self.summary()}</p>" + self.to_frame().to_html(index=False)

    # --- JSON ----------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model, "settings": self.settings, "layers": [asdict(r) for r in self.layers]}

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Plan:
        try:
            layers = [LayerPlan(**row) for row in data["layers"]]
            plan = cls(model=data["model"], layers=layers, settings=dict(data.get("settings", {})))
        except (KeyError, TypeError) as err:
            raise ValueError(f"not an lrdlab plan ({type(err).__name__}: {err}); "
                             f"write plans with Plan.save or `lrdlab plan MODEL --out plan.json`") from err
        legacy = plan.settings.pop("tucker", None)  # plans written before per-method options: Tucker-2's init
        if legacy is not None:
            plan.settings["options"] = {TUCKER2.name: {"init": legacy}, **plan.settings.get("options", {})}
        for name in set(plan.settings.get("options", {})) & set(methods.method_names()):
            try:
                plan.options_for(name)
            except (ValueError, TypeError) as err:
                raise ValueError(f"plan settings, options of {name!r}: {err}") from err
        for row in plan.layers:
            if row.method is not None:
                try:
                    get_method(row.method)
                except ValueError as err:
                    raise ValueError(f"plan row {row.name!r}: {err}") from err
                _check_params_after(row)
        return plan

    def save(self, path: str | Path) -> None:
        """Write the plan as JSON (the folder must exist)."""
        path = Path(path)
        if not path.parent.is_dir():
            raise FileNotFoundError(f"cannot write the plan to {path}: folder {path.parent} does not exist; "
                                    f"create it or choose another path")
        path.write_text(self.to_json())

    @classmethod
    def load(cls, path: str | Path) -> Plan:
        """Read a plan written by :meth:`save` (``FileNotFoundError`` / ``ValueError`` naming the file)."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"no plan file {path}; write one with `lrdlab plan MODEL --out {path.name}` "
                                    f"or Plan.save")
        try:
            data = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise ValueError(f"{path} is not a JSON plan ({err}); write one with `lrdlab plan MODEL --out "
                             f"{path.name}` or Plan.save") from err
        except RecursionError as err:  # JSON nested deeper than Python's recursion limit
            raise ValueError(f"{path} is not an lrdlab plan (its JSON is nested too deeply to read); write plans "
                             f"with Plan.save or `lrdlab plan MODEL --out {path.name}`") from err
        if not isinstance(data, dict):
            raise ValueError(f"{path} holds JSON but not an lrdlab plan; write one with Plan.save")
        return cls.from_dict(data)


def _check_params_after(row: LayerPlan) -> None:
    """``ValueError`` when a decomposed row's ``params_after`` is not what its method and ranks give (an edited
    plan file): the row's own shape, method and ranks decide the parameters, the number only reports them."""
    info = {"type": row.type, "in_channels": row.in_channels, "out_channels": row.out_channels,
            "kernel_size": tuple(row.kernel_size), "bias": False}
    try:
        bias = row.params_before - params_of(info, None, None)
        expected = params_of(info, row.method, row.ranks, row.branches) + bias
    except (KeyError, TypeError, ValueError, IndexError):  # a row shaped unlike any form: checked by check_plan
        return
    if row.params_after != expected:
        raise ValueError(f"plan row {row.name!r}: params_after is {row.params_after:,} but {row.method} at ranks "
                         f"{row.ranks} gives {expected:,}; the plan file was edited: fix params_after or re-plan")


# --- building a plan -------------------------------------------------------------------------------


def _millions(n: int) -> str:
    return f"{n / 1e6:.1f}M" if n >= 1e6 else f"{n:,}"


def candidate_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Every Linear, Conv and HF Conv1D layer of ``model`` (supported or not), in module order.

    An ``nn.MultiheadAttention``'s q/k/v projections (slices of its ``in_proj_weight``) come as ``nn.Linear``
    views named ``<mha>.q_proj`` / ``k_proj`` / ``v_proj``, before its ``out_proj`` (:mod:`lrdlab.lowrank.attention`);
    a HuggingFace MoE block's 3-D expert tensors come as one ``nn.Linear`` view per expert matrix,
    ``<experts>.gate_up_proj.<e>`` / ``<experts>.down_proj.<e>`` (:mod:`lrdlab.lowrank.experts`).
    """
    views = _views(model)
    out: list[tuple[str, nn.Module]] = []
    for name, m in model.named_modules():
        out.extend(views.get(name, []))
        if (isinstance(m, (nn.Linear, nn.modules.conv._ConvNd)) or hf.is_conv1d(m)) and not isinstance(m, LowRankLayer):
            out.append((name, m))
    return out


def _views(model: nn.Module) -> dict[str, list[tuple[str, nn.Linear]]]:
    """``{module name: [(row name, nn.Linear view)]}``: the rows of weights that are no module of their own."""
    return {**attention.projection_views(model), **experts.expert_views(model)}


def named_layers(model: nn.Module) -> dict[str, nn.Module]:
    """``named_modules()`` plus the attention q/k/v and expert views: every name a plan row can have."""
    views = {n: v for rows in _views(model).values() for n, v in rows}
    return {**views, **dict(model.named_modules())}


def _matches(name: str, patterns: list[str]) -> str | None:
    for p in patterns:
        if fnmatch.fnmatchcase(name, p):
            return p
    return None


def applicable_patterns(model: nn.Module, patterns: str | Sequence[str] | None) -> list[str]:
    """The glob patterns that match at least one candidate layer of ``model`` (e.g. the paper's
    ``*.downsample.*`` on a CIFAR ResNet, which has no downsample conv, is dropped)."""
    names = [n for n, _ in candidate_layers(model)]
    wanted = [patterns] if isinstance(patterns, str) else list(patterns or [])
    return [p for p in wanted if any(fnmatch.fnmatchcase(n, p) for n in names)]


def _check_patterns(names: list[str], patterns: list[str], what: str) -> list[str]:
    """The patterns of ``patterns`` that match no layer. A list none of whose patterns matches raises a
    ValueError (a typo); one that matches nothing beside one that does is dropped with a warning (the README's
    ``exclude=["conv1", "*.downsample.*"]`` on a ResNet without downsample convs)."""
    unmatched = [p for p in patterns if not any(fnmatch.fnmatchcase(n, p) for n in names)]
    if unmatched and len(unmatched) == len(patterns):
        raise ValueError(
            f"{what} pattern {unmatched[0]!r} matches no Linear/Conv layer of this model; "
            f"layer names look like {names[:3]} (glob patterns, e.g. 'layer1.*')"
        )
    if unmatched:
        warnings.warn(f"{what} pattern(s) {unmatched} match no Linear/Conv layer of this model and are ignored "
                      f"(the other {what} patterns apply); layer names look like {names[:3]}", stacklevel=3)
    return unmatched


def _uncovered(model: nn.Module, candidates: list[tuple[str, nn.Module]]) -> dict[str, Any]:
    """The parameter tensors no plan row covers (norms, embeddings, 3-D expert weights ...): count, size, largest."""
    modules = dict(model.named_modules())
    covered: set[int] = set()
    for name, m in candidates:
        if modules.get(name) is m:
            covered.update(id(p) for p in m.parameters())
        else:  # a q/k/v or expert view: the parameters of the module holding it (packed in_proj, 3-D experts)
            owner = name.rpartition(".")[0]
            while owner not in modules:
                owner = owner.rpartition(".")[0]
            covered.update(id(p) for p in modules[owner].parameters(recurse=False))
    rest = [(n, p) for n, p in model.named_parameters() if id(p) not in covered]
    if not rest:
        return {"params": 0, "tensors": 0}
    name, largest = max(rest, key=lambda item: item[1].numel())
    return {"params": sum(p.numel() for _, p in rest), "tensors": len(rest), "largest": name,
            "largest_shape": list(largest.shape)}


def recorded_options(given: MethodOptions | Sequence[MethodOptions] | None) -> dict[str, dict[str, Any]]:
    """Every registered form's options as a plan records them: ``given`` for its form, else the defaults
    (forms without options are left out)."""
    given = [given] if isinstance(given, MethodOptions) else list(given or [])
    forms = [get_method(n) for n in methods.method_names()]
    chosen: dict[str, MethodOptions] = {}
    for opts in given:
        owners = [f for f in forms if type(opts) is f.options_type]
        if not isinstance(opts, MethodOptions) or len(owners) != 1 or owners[0].name in chosen:
            raise ValueError(f"options must be one options object per method, e.g. Tucker2Options(init='hooi') "
                             f"(got {opts!r})")
        chosen[owners[0].name] = opts
    return {f.name: f.options(chosen.get(f.name)).to_dict() for f in forms if fields(f.options_type)}


def make_plan(model: nn.Module, policy: RankPolicy, layers: Layers | None = None, *, method: str | Method = "auto",
              options: MethodOptions | Sequence[MethodOptions] | None = None, model_name: str | None = None) -> Plan:
    """Plan the decomposition of every Linear/Conv layer of ``model`` (attention projections and HF Conv1D too).

    ``policy``: how ranks are chosen, one of :class:`~lrdlab.lowrank.plan_config.Ratio` (per-layer compression α,
    paper §1), ``Energy`` (fraction of Σσ² kept), ``VBMF`` or ``FixedRank``, each with the shared ``granularity``,
    ``rounding``, ``branches`` and ``allow_larger`` (a rank that would not save parameters keeps the layer unless
    ``allow_larger``). ``layers``: :class:`~lrdlab.lowrank.plan_config.Layers`, the include / exclude / force glob
    patterns and the probe forward's input (default: every layer, probed on the model's known input).
    ``method`` picks the form of k×k convs: ``"auto"`` (Tucker-2, 3 layers; but a layer whose Tucker rank reaches a
    mode's size, as on a 3-channel stem, gets the Tucker-1 form without that useless full-rank factor),
    ``"tucker2"`` (always), ``"channel_svd"`` or ``"input_svd"`` (2 layers; see :mod:`lrdlab.lowrank.methods`);
    Linear and 1×1 convs always use SVD. ``options``: methods' options objects (e.g. ``Tucker2Options(init="hooi")``);
    the plan records every form's options, the defaults where none is given. ``model_name`` is recorded in the plan
    (default: the name :func:`lrdlab.get_model` gave the model, else its class). Attention lrdlab cannot rewrite
    exactly and tied/shared layers are kept, with the reason in the plan, as are the layers the probe forward finds
    unsafe to replace (unless ``force`` names them).

    ``make_plan(model, Ratio(2, granularity=8), Layers(exclude="conv1"))``
    """
    model = guards.unwrap(model)
    if not isinstance(model, nn.Module):
        hint = f"build it first: make_plan(get_model({model!r}), ...)" if isinstance(model, str) else \
            "pass an nn.Module (e.g. lrdlab.get_model('resnet20'))"
        raise ValueError(f"make_plan needs a model (nn.Module), got {type(model).__name__}; {hint}")
    policy = check_policy(policy)
    select = Layers() if layers is None else layers
    if not isinstance(select, Layers):
        raise ValueError(f"layers must be a Layers(...) (got {layers!r}); e.g. Layers(exclude='conv1')")
    kxk = methods.kxk_method_names()
    method = method.name if isinstance(method, Method) else method
    if method != "auto" and method not in kxk:
        raise ValueError(f"method must be 'auto' or one of {kxk} (got {method!r})")
    chosen_options = recorded_options(options)

    guards.check_model(model, LowRankLayer)
    candidates = candidate_layers(model)
    names = [n for n, _ in candidates]
    if not candidates:
        raise ValueError(f"{type(model).__name__} has no Linear or Conv layer to decompose")
    include, exclude, force = (select.patterns(what) for what in ("include", "exclude", "force"))
    unmatched = {what: bad for patterns, what in ((include, "include"), (exclude, "exclude"), (force, "force"))
                 if (bad := _check_patterns(names, patterns, what))}
    if isinstance(policy.value, dict):
        unknown = sorted(set(policy.value) - set(names))
        if unknown:
            raise ValueError(f"FixedRank: the rank dict names layers that do not exist: {unknown}; "
                             f"layer names look like {names[:3]}")
    unrewritable = attention.skip_reasons(model)
    shared = guards.shared_reasons(model, names)
    fastpath = {**attention.fastpath_notes(model), **experts.notes(model)}
    kept, probe_note = usage.usage_reasons(model, [(n, m) for n, m in candidates if not _matches(n, force)],
                                           set(unrewritable) | set(fastpath), select.example_input,
                                           select.input_shape)
    if probe_note.startswith("not probed"):
        warnings.warn(f"make_plan: {probe_note}", UserWarning, stacklevel=2)

    rows = []
    for name, module in candidates:
        info = describe(module)
        row = LayerPlan(
            name=name, type=info["type"], in_channels=info["in_channels"], out_channels=info["out_channels"],
            kernel_size=list(info["kernel_size"]), method=None, ranks=None,
            params_before=params_of(info, None, None), params_after=0, reason="",
        )
        row.params_after = row.params_before
        rows.append(row)
        skip = unsupported_reason(module) or unrewritable.get(name) or shared.get(name) or kept.get(name)
        if skip is None and include and not _matches(name, include):
            skip = "excluded: not in include"
        if skip is None and (p := _matches(name, exclude)):
            skip = f"excluded by {p!r}"
        if skip:
            row.reason = skip
            continue
        form = methods.default_method(info)
        if form.kxk and method != "auto":
            form = get_method(method)
            if (cannot := form.unsupported(info)) is not None:  # e.g. 'cp' on a 1-D/3-D conv
                row.reason = f"kept: {cannot}"
                continue
        target, why = policy.targets(module, info, form, name)
        if not target:
            row.reason = f"kept: {why}"
            continue
        if method == "auto":  # an explicit method="tucker2" keeps Tucker-2 (capped ranks) on every k×k conv
            form, target, why = reduce_capped(module, info, form, target, policy, name, why)
        target, why = policy.fit(name, info, form, target, why)
        row.branches = policy.branches if form.branchable else 1
        round_and_check(row, info, form, target, policy, why)
        policy.review(row, info)
        forced = _matches(name, force)
        notes = [fastpath.get(name), guards.parametrized_note(module), conv_kinds.note(module),
                 forced and f"forced by {forced!r}"]
        if row.decomposed and any(notes):
            row.reason += "".join(f"; {n}" for n in notes if n)

    decomposed = {row.name for row in rows if row.decomposed}
    force_check.check_forced(model, {n: m for n, m in candidates if n in decomposed and _matches(n, force)},
                             select.example_input, select.input_shape)
    settings = {**policy.settings(), "method": method, "options": chosen_options, "include": include,
                "exclude": exclude, "force": force, "probe": probe_note,
                "model_params": sum(p.numel() for p in model.parameters()  # tied counted once; lazy ones unknown
                                    if not isinstance(p, nn.parameter.UninitializedParameter)),
                "uncovered": _uncovered(model, candidates)}
    if unmatched:
        settings["unmatched_patterns"] = unmatched
    name = model_name or getattr(model, "lrdlab_name", None) or type(model).__name__
    return Plan(model=name, layers=rows, settings=settings)
