"""``adaptkit combine``: several adapters in, one adapter out."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from adaptkit.cli.output import echo_json, echo_table
from adaptkit.errors import AdaptkitError


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


@click.command("combine")
@click.argument("specs", nargs=-1, required=True)
@click.option(
    "-o",
    "--output",
    type=click.Path(path_type=Path),
    help="Output adapter (file, or folder for --to peft). Default: the recipe's output.",
)
@click.option("-s", "--strategy", help="Merge strategy (default: linear). See `adaptkit plugins`.")
@click.option("-w", "--weights", help="Comma-separated weights, one per adapter (override YAML weights).")
@click.option("-r", "--rank", help="Output rank: N, auto (= auto:0.99) or auto:E (energy fraction).")
@click.option(
    "-p",
    "--param",
    "params",
    multiple=True,
    metavar="KEY=VALUE",
    help="Strategy parameter, repeatable (e.g. -p density=0.3).",
)
@click.option("--seed", type=int, help="Seed for randomised strategies (default 0).")
@click.option("--intersect", is_flag=True, default=None, help="Keep only targets every adapter has.")
@click.option("--to", "to_format", help="Output format: adaptkit (default) or another writable format.")
@click.option("-f", "--force", is_flag=True, help="Replace an existing output.")
@click.option("--allow-outside", is_flag=True, help="Let a recipe's output point outside its folder.")
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
    from adaptkit.combine_job import combine_specs

    summary = combine_specs(
        list(specs),
        output=output,
        strategy=strategy,
        weights=weights,
        rank=rank,
        params=parse_params(params),
        seed=seed,
        intersect=intersect,
        to_format=to_format,
        force=force,
        allow_outside=allow_outside,
        progress=not as_json,
    )
    if as_json:
        echo_json(summary)
        return
    rows = summary["targets"]
    echo_table(
        ("target", "inputs", "rank", "energy kept", "rel. error", "note"),
        [
            (r["target"], r["inputs"], r["rank"], r["energy"], r["relative_error"], r["note"] or "")
            for r in rows
        ],
    )
    worst = max((r["relative_error"] for r in rows), default=0.0)
    click.echo(
        f"wrote {summary['output']} ({summary['format']}): {len(rows)} targets from "
        f"{len(summary['inputs'])} adapters with {summary['strategy']}; worst relative error {worst:.3g}"
    )
