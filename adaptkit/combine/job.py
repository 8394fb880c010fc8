"""Combining SPECs end to end: resolve, check the output, load, combine, write.

This is ``adaptkit combine``'s whole job, reusable from Python (the demo runs exactly this).
Everything that can be checked before reading tensors is checked before anything is written.
It is also the one path from a recipe to an adapter: :func:`combine_recipe` (what ``adaptkit
export -a RECIPE`` uses) runs the same plan, ``tune:`` included, without writing it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from adaptkit.adapter import WeightedAdapter
from adaptkit.errors import AdaptkitError
from adaptkit.io.recipe import Recipe


def parse_weights(text: str | None, count: int) -> list[float] | None:
    """``"1,-0.5"`` → ``[1.0, -0.5]``, checked: ``count`` finite numbers."""
    if text is None:
        return None
    try:
        weights = [float(x) for x in text.split(",")]
    except ValueError:
        raise AdaptkitError(f"--weights {text!r} is not a comma-separated list of numbers") from None
    if len(weights) != count:
        raise AdaptkitError(f"--weights has {len(weights)} values for {count} adapters")
    bad = [w for w in weights if not math.isfinite(w)]
    if bad:
        raise AdaptkitError(f"--weights contains {bad[0]!r}; weights must be finite")
    return weights


@dataclass
class CombinePlan:
    """A combination as a recipe and the command line say it, checked but not yet loaded.

    Attributes:
        recipe: The recipe (one made up of the SPECs when there is none).
        strategy, params, rank, seed, intersect: The request, flags over the recipe's keys.
        tune: The ``tune:`` block, flags over the recipe's keys (empty: no tuning).
    """

    recipe: Recipe
    strategy: str
    params: dict[str, Any]
    rank: int | str | None
    seed: int
    intersect: bool
    tune: dict[str, Any] = field(default_factory=dict)

    @property
    def tuning(self) -> bool:
        return bool(self.tune.get("sets"))

    @property
    def reads(self) -> tuple[Any, ...]:
        """Every input the combination reads (recipe, manifests, adapters, tuning sets and model):
        the output guard keeps outputs away from all of them."""
        extra = [*self.tune.get("sets", ()), self.tune.get("model")] if self.tuning else []
        return (*self.recipe.reads, *extra)


def plan_combine(
    specs: list[str],
    *,
    strategy: str | None = None,
    weights: str | None = None,
    rank: int | str | None = None,
    params: dict[str, Any] | None = None,
    seed: int | None = None,
    intersect: bool | None = None,
    tune: dict[str, Any] | None = None,
    allow_outside: bool = False,
) -> CombinePlan:
    """Read one recipe YAML or adapter SPECs and lay the arguments over it (set ones win).

    Nothing is loaded but the YAML files; ``allow_outside`` lets the recipe's ``output`` point
    outside its folder (see :func:`adaptkit.io.recipe.load_recipe`)."""
    from adaptkit.io.recipe import load_recipe, yaml_kind
    from adaptkit.io.specs import is_yaml, resolve_spec

    recipes = [s for s in specs if is_yaml(Path(s)) and yaml_kind(Path(s)) == "recipe"]
    if recipes and len(specs) > 1:
        raise AdaptkitError("give either one recipe YAML or adapter SPECs, not both", key="SPEC")
    if recipes:
        recipe = load_recipe(recipes[0], allow_outside=allow_outside)
    else:
        recipe = Recipe(path=None, adapters=[resolve_spec(s) for s in specs])

    override = parse_weights(weights, len(recipe.adapters))
    if override is not None:
        for ref, w in zip(recipe.adapters, override, strict=True):
            ref.weight = w
    # A recipe's params belong to the recipe's strategy; a different strategy drops them.
    recipe_params = recipe.params if strategy in (None, recipe.strategy) else {}
    tune_block = {**(recipe.tune or {}), **{k: v for k, v in (tune or {}).items() if v is not None}}
    plan = CombinePlan(
        recipe=recipe,
        strategy=strategy or recipe.strategy or "linear",
        params={**recipe_params, **(params or {})},
        rank=rank if rank is not None else recipe.rank,
        seed=seed if seed is not None else (recipe.seed or 0),
        intersect=bool(intersect if intersect is not None else recipe.intersect),
        tune=tune_block,
    )
    if tune_block and not plan.tuning:
        raise AdaptkitError("tuning options need evaluation sets: --tune EVAL.jsonl", key="--tune")
    if plan.tuning and not tune_block.get("model"):
        raise AdaptkitError(
            "--tune needs --model: the base model the adapters were trained on", key="--model"
        )
    return plan


def check_recipe(recipe: Recipe, registry: Any) -> tuple[dict[str, Any], Any]:
    """Everything about a recipe checkable without tensors (strategy, number of inputs, params,
    rank); returns the filled params and the parsed rank request (see
    :func:`adaptkit.combine.check_request`)."""
    from adaptkit.combine import check_request

    strategy = registry.get("strategy", recipe.strategy or "linear")
    return check_request(strategy, len(recipe.adapters), recipe.params, recipe.rank)


def run_plan(
    plan: CombinePlan,
    registry: Any,
    *,
    progress: bool = False,
    log: Any = None,
    plot: Path | None = None,
    force: bool = False,
) -> tuple[Any, list[Any], dict[str, Any] | None]:
    """Check the request, load the adapters, tune (when the plan says so) and combine.

    The one way a recipe becomes an adapter: ``adaptkit combine`` writes the result, ``adaptkit
    export`` exports it. Returns the :class:`~adaptkit.combine.CombineResult`, the loaded inputs
    and the tuning report (``None`` without tuning)."""
    from adaptkit.combine import check_request, check_saved_modules, combine
    from adaptkit.io.specs import load_ref

    # The request is checked before a single adapter is read (100 inputs to a 2-input slerp
    # are refused at once, not after loading 100 files).
    strategy = registry.get("strategy", plan.strategy)
    check_request(strategy, len(plan.recipe.adapters), plan.params, plan.rank)
    inputs = [
        WeightedAdapter(adapter=load_ref(ref, registry), weight=ref.weight, name=ref.name, source=ref.path)
        for ref in plan.recipe.adapters
    ]
    # Before tuning loads a model: a saved module at a weight it cannot take is refused now.
    check_saved_modules(inputs, strategy)

    def run(items: list[WeightedAdapter]) -> Any:
        return combine(
            items,
            plan.strategy,
            params=plan.params,
            rank=plan.rank,
            seed=plan.seed,
            intersect=plan.intersect,
            registry=registry,
            progress=progress,
        )

    tuned: dict[str, Any] | None = None
    if plan.tuning:
        result, tuned = _tuned(inputs, run, plan.tune, plan.seed, registry, progress, plot, log, force)
    else:
        result = run(inputs)
    if plan.recipe.path is not None:
        result.adapter.provenance["recipe"] = str(plan.recipe.path)
    return result, inputs, tuned


def combine_recipe(path: Path, registry: Any, *, log: Any = None) -> WeightedAdapter:
    """A recipe YAML combined as ``adaptkit combine RECIPE`` would, ``tune:`` included, as one
    adapter at weight 1 (its ``output`` is not written, so it may point anywhere)."""
    plan = plan_combine([str(path)], allow_outside=True)
    result, _, _ = run_plan(plan, registry, log=log)
    return WeightedAdapter(result.adapter, 1.0, Path(path).stem, Path(path), plan.reads)


def combine_specs(
    specs: list[str],
    *,
    output: Path | None = None,
    strategy: str | None = None,
    weights: str | None = None,
    rank: int | str | None = None,
    params: dict[str, Any] | None = None,
    seed: int | None = None,
    intersect: bool | None = None,
    to_format: str | None = None,
    force: bool = False,
    allow_outside: bool = False,
    progress: bool = True,
    registry: Any = None,
    tune: dict[str, Any] | None = None,
    plot: Path | None = None,
    log: Any = None,
) -> dict[str, Any]:
    """Combine adapter SPECs (or one recipe YAML, which the other arguments override) and
    write the result; returns the JSON summary ``adaptkit combine --json`` prints.

    ``tune`` (keys of a recipe's ``tune:`` block; set ones override the recipe's) fits
    per-adapter × group weights on evaluation sets first (:mod:`adaptkit.combine.tune`); ``plot``
    writes their heat map."""
    from adaptkit.io.output_guard import PLOT, check_output, kind_of_writer
    from adaptkit.plugins import get_registry
    from adaptkit.plugins.contracts import WritableFormat

    registry = registry or get_registry()
    plan = plan_combine(
        specs,
        strategy=strategy,
        weights=weights,
        rank=rank,
        params=params,
        seed=seed,
        intersect=intersect,
        tune=tune,
        allow_outside=allow_outside or output is not None,
    )
    to_name = to_format or plan.recipe.to or "adaptkit"
    out = Path(output) if output is not None else plan.recipe.output
    if out is None:
        raise AdaptkitError("no output: pass -o OUT (or set 'output' in the recipe)", key="-o")
    if plot is not None and not plan.tuning:
        raise AdaptkitError("--plot draws the tuned weights; it needs --tune", key="--plot")

    writer = registry.registration("format", to_name).require_available()
    if not isinstance(writer, WritableFormat):
        writable = [r.name for r in registry.all("format") if isinstance(r.obj, WritableFormat)]
        raise AdaptkitError(f"format {to_name!r} cannot write adapters; writable: {', '.join(writable)}")
    read = list(plan.reads)
    check_output(out, kind_of_writer(writer), inputs=read, force=force)
    if plot is not None:
        check_output(plot, PLOT, inputs=read, force=force, flag="--plot", siblings={"-o": out})
    result, inputs, tuned = run_plan(plan, registry, progress=progress, log=log, plot=plot, force=force)
    written = writer.write(result.adapter, out, overwrite=force)
    summary_tune = {"tune": tuned} if tuned is not None else {}
    return {
        **summary_tune,
        "output": str(written),
        "format": to_name,
        "strategy": plan.strategy,
        "params": result.adapter.provenance["combine"]["params"],
        "rank": result.adapter.provenance["combine"]["rank"],
        "seed": plan.seed,
        "inputs": [{"name": i.name, "weight": i.weight, "path": str(i.source)} for i in inputs],
        "targets": [vars(r) for r in result.report],
    }


def _tuned(
    inputs: list[Any],
    run: Any,
    block: dict[str, Any],
    seed: int,
    registry: Any,
    progress: bool,
    plot: Path | None,
    log: Any,
    force: bool,
) -> tuple[Any, dict[str, Any]]:
    """Tune, fold the weights into the inputs, combine; the result and the tuning report."""
    from adaptkit.combine import combined_saved_modules, combined_tokens
    from adaptkit.combine.tune import (
        evaluate_adapter,
        fold,
        heat_map,
        load_base,
        load_sets,
        model_limits,
        settings_from,
        tune_weights,
    )
    from adaptkit.io.models import load_tokenizer, resolve_model

    settings = settings_from(block, seed)
    say = log or (lambda _m: None)
    targets = sorted({t for i in inputs for t in i.adapter.targets})
    # The sets are read and checked against the model's vocabulary and context before the
    # model itself loads (minutes at 7B): a bad record costs the tokenizer, not the model.
    folder = resolve_model(block["model"])
    vocab, context = model_limits(folder)

    def read_sets(tokenizer: Any, vocab: int) -> list[Any]:
        return load_sets(list(block["sets"]), tokenizer, vocab, settings, context)

    sets = read_sets(load_tokenizer(folder), vocab) if vocab is not None else None
    model, tokenizer = load_base(
        folder, quantize=bool(block.get("quantize")), targets=targets, registry=registry, log=say
    )
    if sets is None:  # a config without vocab_size: the embedding table says
        sets = read_sets(tokenizer, int(model.get_input_embeddings().num_embeddings))
    pad = getattr(tokenizer, "pad_token_id", None) if tokenizer is not None else None
    pad_id = 0 if pad is None else int(pad)
    saved, tokens = combined_saved_modules(inputs), combined_tokens(inputs)
    if saved or tokens:
        # The output carries these modules and token rows whole: tune and report with them in
        # place, as the combined adapter will run.
        from adaptkit.adapter import Adapter
        from adaptkit.nn.baking import apply_saved_modules

        apply_saved_modules(model, Adapter(targets={}, saved=saved, tokens=tokens))
    static = run(inputs)
    before = evaluate_adapter(model, static.adapter, sets, pad_id)
    found = tune_weights(model, inputs, sets, settings, pad_id=pad_id, progress=progress)
    result = run(fold(inputs, found, settings.granularity))
    after = evaluate_adapter(model, result.adapter, sets, pad_id)
    report = {
        "settings": {k: getattr(settings, k) for k in vars(settings)},
        "groups": found.groups,
        "adapters": found.names,
        "weights": found.weights,
        "held_out_loss_before": before,
        "held_out_loss_after": after,
        "sets": [
            {
                "name": s.name,
                "path": p,
                "sha256": s.sha256,
                "tune_records": len(s.tune),
                "held_out_records": len(s.held_out),
            }
            for s, p in zip(sets, block["sets"], strict=True)
        ],
        "model": str(block["model"]),
        "quantized_base": bool(block.get("quantize")),
        "seconds": round(found.seconds, 3),
        "final_objective": found.trace[-1] if found.trace else None,
    }
    result.adapter.provenance["tune"] = report
    if plot is not None:
        heat_map(found, plot, replace=force)
    return result, report
