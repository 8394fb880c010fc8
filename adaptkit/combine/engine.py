"""The combine engine: align several adapters by module path and merge them per target.

``combine()`` is the one code path behind ``adaptkit combine``, the Python API and the
exporters: it folds each source's scale ``s_i`` and weight ``w_i`` in, aligns targets (a
target missing from an adapter contributes zero; ``intersect=True`` keeps only shared
targets; a shape clash is an error), runs the strategy per target, and returns an
:class:`~adaptkit.adapter.Adapter` with provenance plus a per-target report.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from adaptkit.adapter import WeightedAdapter
from adaptkit.combine.strategy import MergeContext, MergeInput, MergeResult, SumStrategy
from adaptkit.combine.targets import dora_passed_through, merge_experts, merge_one, with_target_extras
from adaptkit.errors import AdaptkitError, InvalidAdapterError, SchemaError
from adaptkit.rank import RankRequest

if TYPE_CHECKING:
    from adaptkit.adapter import Adapter
    from adaptkit.plugins import Registry


@dataclass
class TargetReport:
    target: str
    inputs: int
    rank: int
    energy: float
    relative_error: float
    note: str | None = None


@dataclass
class CombineResult:
    adapter: Adapter
    report: list[TargetReport] = field(default_factory=list)


def fill_params(strategy: Any, params: Mapping[str, Any] | None) -> dict[str, Any]:
    """Validate ``params`` against the strategy's ``params_schema`` and fill defaults.

    Raises:
        SchemaError: listing every bad or unknown parameter (and the valid names).
    """
    from adaptkit.io.schemas import schema_problems_for

    schema = getattr(strategy, "params_schema", None) or {"type": "object"}
    given = dict(params or {})
    known = sorted((schema.get("properties") or {}).keys())
    unknown = sorted(set(given) - set(known)) if schema.get("additionalProperties") is False else []
    if unknown:
        valid = ", ".join(known) if known else f"none ({strategy.name} takes no parameters)"
        raise AdaptkitError(
            f"unknown parameter {unknown[0]!r} for strategy {strategy.name!r}; valid: {valid}",
            key="params",
        )
    problems = schema_problems_for(given, schema)
    problems += [f"{k}: {v!r} is not a finite number" for k, v in given.items() if _non_finite(v)]
    if problems:
        raise SchemaError.from_problems([f"strategy {strategy.name!r} params.{p}" for p in problems])
    filled = {
        key: spec["default"] for key, spec in (schema.get("properties") or {}).items() if "default" in spec
    }
    filled.update(given)
    return filled


def check_request(
    strategy: Any, count: int, params: Mapping[str, Any] | None, rank: int | str | RankRequest | None
) -> tuple[dict[str, Any], RankRequest]:
    """Everything about a combination that needs no tensors: the number of inputs the
    strategy takes, its parameters (filled) and the rank request (parsed). Callers that load
    adapters from disk run this first, so a bad request costs nothing to refuse.

    Raises:
        AdaptkitError / SchemaError: naming the strategy and the parameter.
    """
    lo, hi = getattr(strategy, "min_inputs", 1), getattr(strategy, "max_inputs", None)
    if count < lo or (hi is not None and count > hi):
        want = f"exactly {lo}" if lo == hi else f"at least {lo}" + (f" and at most {hi}" if hi else "")
        raise AdaptkitError(f"strategy {strategy.name!r} takes {want} adapters, got {count}")
    filled = fill_params(strategy, params)
    request = rank if isinstance(rank, RankRequest) else RankRequest.parse(rank)
    return filled, request


def _non_finite(value: Any) -> bool:
    if isinstance(value, float):
        return not math.isfinite(value)
    if isinstance(value, dict):
        return any(_non_finite(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return any(_non_finite(v) for v in value)
    return False


def _check_weights(inputs: Sequence[WeightedAdapter]) -> None:
    for item in inputs:
        w = item.weight
        if isinstance(w, bool) or not isinstance(w, (int, float)) or not math.isfinite(w):
            raise AdaptkitError(
                f"weight {w!r} of adapter {item.name!r} is not a finite number",
                path=item.source,
                key="weight",
            )
    if all(item.weight == 0 for item in inputs):
        raise AdaptkitError("all weights are zero: the combination would change nothing", key="weights")


def check_saved_modules(inputs: Sequence[WeightedAdapter], strategy: Any) -> None:
    """Refuse a combination that would carry a saved module it cannot honour.

    Weights and strategies act on LoRA updates. A saved module (PEFT ``modules_to_save``, a
    retrained head or embedding) *replaces* the base's module whole: it cannot be negated,
    scaled or interpolated, and passing it through unchanged would keep, say, the head of an
    adapter the user meant to subtract. So an adapter that saves modules counts only at
    weight 1 (or 0, which leaves it out, saved modules included), and only under a strategy
    whose result is linear in its inputs (not ``slerp``). Every path that combines —
    ``combine`` and its ``-w``, recipes' weights, exports' manifests, ``--tune`` — goes
    through :func:`combine`, which calls this.

    A saved *base* weight (origin ``base_layer``: the embedding table or head PEFT stores beside
    a LoRA on it) is not a trained change but the weight the update applies to, so it restricts
    nothing: ``W_saved + w·ΔW`` is what weight ``w`` means there.

    Raises:
        InvalidAdapterError: naming the adapter, its saved module and the weight or strategy.
    """
    for i, item in enumerate(inputs):
        trained = sorted(m for m, e in item.adapter.saved.items() if e.origin != "base_layer")
        rows = sorted(item.adapter.tokens)
        if not (trained or rows) or item.weight == 0:
            continue
        name = item.name or f"adapter{i}"
        if trained:
            module = trained[0]
            what = f"adapter {name!r} saves {module} whole ({item.adapter.saved[module].origin})"
        else:
            what = f"adapter {name!r} saves trainable token rows of {rows[0]} whole"
        if item.weight != 1:
            raise InvalidAdapterError(
                f"{what}; weight {item.weight:g} would apply to its LoRA updates only, and a saved "
                "module replaces the base's: it cannot be negated or scaled",
                path=item.source,
                key="weight",
                hint="give this adapter weight 1, or 0 to leave it out",
            )
        if not getattr(strategy, "linear", False):
            raise InvalidAdapterError(
                f"{what}; strategy {getattr(strategy, 'name', strategy)!r} blends updates "
                "non-linearly, and a saved module, which replaces the base's, cannot be blended",
                path=item.source,
                hint="use a linear strategy (linear, cat, svd, ties, dare_*) for this adapter",
            )


def _align(inputs: Sequence[WeightedAdapter], intersect: bool) -> list[str]:
    """Target names to produce, checking that shared targets agree on shape."""
    shapes: dict[str, tuple[tuple[int, int], str]] = {}
    kinds: dict[str, tuple[str, str]] = {}
    for item in inputs:
        for name, pair in item.adapter.targets.items():
            shape = (pair.out_features, pair.in_features)
            shape = shape if pair.experts is None else (pair.experts, *shape)
            if name in kinds and kinds[name][0] != pair.kind:
                raise InvalidAdapterError(
                    f"kind clash: {item.name!r} adapts it as {pair.kind} but {kinds[name][1]!r} as "
                    f"{kinds[name][0]}",
                    path=item.source,
                    key=name,
                    hint="the adapters were made for different base models",
                )
            kinds.setdefault(name, (pair.kind, item.name))
            if name in shapes and shapes[name][0] != shape:
                other_shape, other = shapes[name]
                raise InvalidAdapterError(
                    f"shape clash: {item.name!r} has {'×'.join(map(str, shape))} but {other!r} has "
                    f"{'×'.join(map(str, other_shape))}",
                    path=item.source,
                    key=name,
                    hint="the adapters were made for different base models",
                )
            shapes.setdefault(name, (shape, item.name))
    names = set(shapes)
    if intersect:
        for item in inputs:
            names &= set(item.adapter.targets)
        if not names:
            raise AdaptkitError("--intersect leaves no target shared by every adapter")
    return sorted(names)


def file_sha256(path: Path) -> str:
    """SHA-256 of a file, or of a folder's files (sorted relative names and contents)."""
    h = hashlib.sha256()
    if path.is_dir():
        for sub in sorted(p for p in path.rglob("*") if p.is_file()):
            h.update(str(sub.relative_to(path)).encode() + b"\0")
            h.update(bytes.fromhex(file_sha256(sub)))
        return h.hexdigest()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _versions() -> dict[str, str]:
    import importlib.metadata

    out = {}
    for dist in ("adaptkit", "torch", "safetensors"):
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            out[dist] = importlib.metadata.version(dist)
    return out


def combine(
    inputs: Sequence[WeightedAdapter],
    strategy: str | Any = "linear",
    *,
    params: Mapping[str, Any] | None = None,
    rank: int | str | RankRequest | None = None,
    seed: int = 0,
    intersect: bool = False,
    registry: Registry | None = None,
    progress: bool = False,
) -> CombineResult:
    """Combine adapters with a registered merge strategy.

    Args:
        inputs: The adapters with weights and names.
        strategy: Registered strategy name (``adaptkit plugins`` lists them), or a strategy
            object (e.g. one under test that is not registered).
        params: Strategy parameters (validated against its schema).
        rank: Output rank: an int, ``"auto"``/``"auto:E"``, or ``None`` for the strategy's
            default.
        seed: Seed for randomised strategies (DARE) and randomised SVDs.
        intersect: Keep only targets every adapter has (default: the union, a missing
            target counting as zero).
        registry: Plugin registry (default: the process-wide one).
        progress: Show a progress bar over targets.

    Returns:
        The combined adapter (scale folded into its factors) and a per-target report.
    """

    from adaptkit.adapter import Adapter, BaseModelInfo, Producer
    from adaptkit.plugins import get_registry

    if isinstance(strategy, str):
        strat = (registry or get_registry()).get("strategy", strategy)
    else:
        strat, strategy = strategy, strategy.name
    if not inputs:
        raise AdaptkitError("no adapters to combine")
    named = _with_unique_names(inputs)
    _check_weights(named)
    check_saved_modules(named, strat)
    filled, request = check_request(strat, len(named), params, rank)
    targets = _align(named, intersect)

    out: dict[str, Any] = {}
    report: list[TargetReport] = []
    iterator: Any = targets
    if progress:
        from tqdm.auto import tqdm

        iterator = tqdm(targets, desc=f"combine ({strategy})", unit="target", leave=False, disable=None)
    for target in iterator:
        these = [
            MergeInput(
                name=item.name,
                weight=float(item.weight),
                pair=item.adapter.targets[target],
                index=i,
            )
            for i, item in enumerate(named)
            if target in item.adapter.targets and item.weight != 0
        ]
        if not these:
            continue
        if any(i.pair.magnitude is not None for i in these):
            out[target] = dora_passed_through(these, strat, filled, request, target)
            report.append(
                TargetReport(target, 1, out[target].rank, 1.0, 0.0, "DoRA: passed through unchanged")
            )
            continue
        if these[0].pair.kind == "experts":  # one LoRA per expert: merged expert by expert
            result = merge_experts(strat, these, MergeContext(target, filled, request, seed), strategy)
        else:
            result = merge_one(strat, these, MergeContext(target, filled, request, seed), strategy)
        pair = result.pair
        pair = with_target_extras(pair, these, strat, target)
        bad = pair.check_finite()
        if bad:
            raise InvalidAdapterError(
                f"merged {bad[0]} has NaN/Inf values (overflow?); nothing was written", key=target
            )
        out[target] = pair
        report.append(
            TargetReport(target, len(these), pair.rank, result.energy, result.relative_error, result.note)
        )

    bases = {item.adapter.base_model.name for item in named}
    layouts = {item.adapter.base_model.fan_in_fan_out for item in named}
    base = BaseModelInfo(
        name=bases.pop() if len(bases) == 1 else None,
        fan_in_fan_out=layouts.pop() if len(layouts) == 1 else None,
    )
    versions = _versions()
    provenance = {
        "combine": {
            "strategy": strategy,
            "params": filled,
            "rank": request.describe(),
            "seed": seed,
            "intersect": intersect,
        },
        "inputs": [
            {
                "name": item.name,
                "weight": item.weight,
                **(
                    {"path": os.fspath(item.source), "sha256": file_sha256(item.source)}
                    if item.source is not None and item.source.exists()
                    else {}
                ),
            }
            for item in named
        ],
        "versions": versions,
    }
    adapter = Adapter(
        targets=out,
        base_model=base,
        producer=Producer(version=versions.get("adaptkit"), component=f"strategy:{strategy}"),
        provenance=provenance,
        saved=combined_saved_modules(named),
        tokens=combined_tokens(named),
    )
    return CombineResult(adapter=adapter, report=report)


def combined_saved_modules(inputs: Sequence[WeightedAdapter]) -> dict[str, Any]:
    """The saved modules of a combination: each input's, from inputs of non-zero weight.

    A saved module replaces the base module whole, so it cannot be weighted or blended like an
    update: it passes through unchanged, and two inputs saving the same module must save
    identical tensors.

    Raises:
        InvalidAdapterError: two inputs save the same module with different tensors.
    """
    import torch

    out: dict[str, Any] = {}
    owner: dict[str, str] = {}
    problems = []
    for item in inputs:
        if item.weight == 0:
            continue
        for module, entry in item.adapter.saved.items():
            if module not in out:
                out[module], owner[module] = entry, item.name
                continue
            held = out[module]
            same = held.origin == entry.origin and set(held.params) == set(entry.params)
            same = same and all(torch.equal(held.params[k], entry.params[k]) for k in held.params)
            if not same:
                problems.append(
                    f"{module}: adapters {owner[module]!r} and {item.name!r} both save this module "
                    "whole, with different tensors; a saved module replaces the base's and cannot be "
                    "blended (combine the adapters without one of them, or re-save one without it)"
                )
    if problems:
        raise InvalidAdapterError.from_problems(problems)
    return out


def combined_tokens(inputs: Sequence[WeightedAdapter]) -> dict[str, Any]:
    """The trainable tokens of a combination: each input's, from inputs of non-zero weight.

    Token rows replace the table's rows whole, as a saved module does: they pass through
    unchanged, and two inputs training rows of the same table must agree on the token ids and
    their values.

    Raises:
        InvalidAdapterError: two inputs train rows of one table differently.
    """
    import torch

    out: dict[str, Any] = {}
    owner: dict[str, str] = {}
    problems = []
    for item in inputs:
        if item.weight == 0:
            continue
        for module, entry in item.adapter.tokens.items():
            if module not in out:
                out[module], owner[module] = entry, item.name
                continue
            held = out[module]
            if held.indices != entry.indices or not torch.equal(held.values, entry.values):
                problems.append(
                    f"{module}: adapters {owner[module]!r} and {item.name!r} both train token rows of "
                    "this table, with different token ids or values; the rows replace the table's and "
                    "cannot be blended (combine the adapters without one of them)"
                )
    if problems:
        raise InvalidAdapterError.from_problems(problems)
    return out


def _with_unique_names(inputs: Sequence[WeightedAdapter]) -> list[WeightedAdapter]:
    """Copies with names filled in and made unique (``a``, ``a#2``, ...)."""
    seen: dict[str, int] = {}
    out = []
    for i, item in enumerate(inputs):
        base = item.name or f"adapter{i}"
        seen[base] = seen.get(base, 0) + 1
        name = base if seen[base] == 1 else f"{base}#{seen[base]}"
        out.append(dataclasses.replace(item, name=name))
    return out


class Concatenate(SumStrategy):
    """``cat``: ``B = [w₁s₁B₁ … wₙsₙBₙ]``, ``A = [A₁; …; Aₙ]``, so ``BA = Σ wᵢsᵢBᵢAᵢ`` exactly
    (scale 1, ``alpha = rank = Σ rᵢ``). Core uses it wherever an exact sum of adapters is
    needed (exporters); the builtin strategies plugin registers it as ``cat``."""

    name = "cat"
    description = "exact concatenation of factors (rank = Σ r_i)"

    def merge(self, inputs: Sequence[MergeInput], ctx: MergeContext) -> MergeResult:
        import torch

        from adaptkit.combine.factored import stack_factors
        from adaptkit.lora import LoraPair

        if ctx.rank.k is not None or ctx.rank.energy is not None:
            raise AdaptkitError(
                "cat keeps every factor (rank = Σ r_i); it takes no --rank",
                key="rank",
                hint="use --strategy linear --rank K for a smaller rank",
            )
        B, A = stack_factors([i.pair for i in inputs], [i.weight for i in inputs], torch.float32)
        return MergeResult(pair=LoraPair(A=A.contiguous(), B=B.contiguous(), alpha=float(A.shape[0])))
