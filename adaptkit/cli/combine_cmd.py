"""``adaptkit combine``: several adapters in, one adapter out."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import click

from adaptkit.cli.output import echo_json, echo_table
from adaptkit.errors import AdaptkitError, OutputError


def parse_weights(text: str | None, count: int) -> list[float] | None:
    if text is None:
        return None
    try:
        weights = [float(x) for x in text.split(",")]
    except ValueError:
        raise AdaptkitError(
            f"--weights {text!r} is not a comma-separated list of numbers"
        ) from None
    if len(weights) != count:
        raise AdaptkitError(f"--weights has {len(weights)} values for {count} adapters")
    bad = [w for w in weights if not math.isfinite(w)]
    if bad:
        raise AdaptkitError(f"--weights contains {bad[0]!r}; weights must be finite")
    return weights


def parse_params(items: tuple[str, ...]) -> dict[str, Any]:
    """``KEY=VALUE`` pairs; values are YAML scalars (``0.3`` → float, ``true`` → bool)."""
    from adaptkit.yamlio import loads_yaml

    params: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise AdaptkitError(f"--param {item!r} is not KEY=VALUE")
        parsed = loads_yaml(value, source="--param") if value.strip() else ""
        if isinstance(parsed, (dict, list)):
            raise AdaptkitError(f"--param {key}: expected a single value, got {value!r}")
        params[key.strip()] = parsed
    return params


def _same_or_inside(out: Path, inp: Path) -> bool:
    o, i = out.resolve(), inp.resolve()
    if o == i:
        return True
    if i.is_dir():
        try:
            o.relative_to(i)
            return True
        except ValueError:
            return False
    return False


@click.command("combine")
@click.argument("specs", nargs=-1, required=True)
@click.option(
    "-o",
    "--output",
    type=click.Path(path_type=Path),
    help="Output adapter (file, or folder for --to peft). Default: the recipe's output.",
)
@click.option("-s", "--strategy", help="Merge strategy (default: linear). See `adaptkit plugins`.")
@click.option(
    "-w", "--weights", help="Comma-separated weights, one per adapter (override YAML weights)."
)
@click.option(
    "-r", "--rank", help="Output rank: N, auto (= auto:0.99) or auto:E (energy fraction)."
)
@click.option(
    "-p",
    "--param",
    "params",
    multiple=True,
    metavar="KEY=VALUE",
    help="Strategy parameter, repeatable (e.g. -p density=0.3).",
)
@click.option("--seed", type=int, help="Seed for randomised strategies (default 0).")
@click.option(
    "--intersect", is_flag=True, default=None, help="Keep only targets every adapter has."
)
@click.option(
    "--to", "to_format", help="Output format: adaptkit (default) or another writable format."
)
@click.option("-f", "--force", is_flag=True, help="Replace an existing output.")
@click.option(
    "--allow-outside", is_flag=True, help="Let a recipe's output point outside its folder."
)
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def command(
    specs,
    output,
    strategy,
    weights,
    rank,
    params,
    seed,
    intersect,
    to_format,
    force,
    allow_outside,
    as_json,
) -> None:
    """Combine adapters into one.

    SPEC is an adapter (file or directory), an adapter manifest YAML (adapter/weight/name),
    or a single recipe YAML (adapters, strategy, params, rank, seed, output); flags override
    the recipe.

    \b
    Strategies (exact unless a rank is asked for):
      linear  Σ w_i·s_i·B_i·A_i kept factored; --rank k gives the optimal rank-k truncation
      cat     concatenated factors, rank Σ r_i
      svd     linear truncated to the largest input rank (PEFT's name)
      slerp   spherical interpolation of two updates (-p t=0.5)
    Dense (elementwise, re-factorised, error reported):
      ties, dare_linear, dare_ties, magnitude_prune   (-p density=0.5 ...)

    \b
    Examples:
      adaptkit combine a.yaml b.yaml -o merged.safetensors
      adaptkit combine a.safetensors b.safetensors -w 1,-0.5 -r 16 -o out.safetensors
      adaptkit combine recipe.yaml --json
    """
    from adaptkit.combine import AdapterInput, combine
    from adaptkit.plugins import get_registry
    from adaptkit.recipe import Recipe, load_recipe, yaml_kind
    from adaptkit.specs import is_yaml, load_ref, resolve_spec

    registry = get_registry()
    recipes = [s for s in specs if is_yaml(Path(s)) and yaml_kind(Path(s)) == "recipe"]
    if recipes and len(specs) > 1:
        raise AdaptkitError("give either one recipe YAML or adapter SPECs, not both", key="SPEC")
    if recipes:
        recipe = load_recipe(recipes[0], allow_outside=allow_outside or output is not None)
    else:
        recipe = Recipe(path=None, adapters=[resolve_spec(s) for s in specs])

    refs = recipe.adapters
    override = parse_weights(weights, len(refs))
    if override is not None:
        for ref, w in zip(refs, override, strict=True):
            ref.weight = w
    # A recipe's params belong to the recipe's strategy; a different --strategy drops them.
    recipe_params = recipe.params if strategy in (None, recipe.strategy) else {}
    strategy = strategy or recipe.strategy or "linear"
    merged_params = {**recipe_params, **parse_params(params)}
    rank_value = rank if rank is not None else recipe.rank
    seed_value = seed if seed is not None else (recipe.seed or 0)
    intersect_value = bool(intersect if intersect is not None else recipe.intersect)
    to_name = to_format or recipe.to or "adaptkit"
    out = output or recipe.output
    if out is None:
        raise AdaptkitError("no output: pass -o OUT (or set 'output' in the recipe)", key="-o")

    # Everything that can be checked before reading tensors is checked before writing.
    writer_reg = registry.registration("format", to_name)
    writer = writer_reg.require_available()
    if not hasattr(writer, "write"):
        writable = [r.name for r in registry.all("format") if hasattr(r.obj, "write")]
        raise AdaptkitError(
            f"format {to_name!r} cannot write adapters; writable: {', '.join(writable)}"
        )
    for ref in refs:
        if ref.path.exists() and _same_or_inside(out, ref.path):
            raise OutputError("output would overwrite an input adapter", path=out, key=ref.name)
    if out.exists() and not force:
        raise OutputError("output exists", path=out, hint="pass --force to replace it")
    registry.get("strategy", strategy)

    inputs = [
        AdapterInput(
            adapter=load_ref(ref, registry), weight=ref.weight, name=ref.name, source=ref.path
        )
        for ref in refs
    ]
    result = combine(
        inputs,
        strategy,
        params=merged_params,
        rank=rank_value,
        seed=seed_value,
        intersect=intersect_value,
        registry=registry,
        progress=not as_json,
    )
    if recipe.path is not None:
        result.adapter.provenance["recipe"] = str(recipe.path)
    written = writer.write(result.adapter, out, overwrite=force)

    rows = result.report
    summary = {
        "output": str(written),
        "format": to_name,
        "strategy": strategy,
        "params": result.adapter.provenance["combine"]["params"],
        "rank": result.adapter.provenance["combine"]["rank"],
        "seed": seed_value,
        "inputs": [{"name": i.name, "weight": i.weight, "path": str(i.source)} for i in inputs],
        "targets": [vars(r) for r in rows],
    }
    if as_json:
        echo_json(summary)
        return
    echo_table(
        ("target", "inputs", "rank", "energy kept", "rel. error", "note"),
        [(r.target, r.inputs, r.rank, r.energy, r.relative_error, r.note or "") for r in rows],
    )
    worst = max((r.relative_error for r in rows), default=0.0)
    click.echo(
        f"wrote {written} ({to_name}): {len(rows)} targets from {len(inputs)} adapters with "
        f"{strategy}; worst relative error {worst:.3g}"
    )
