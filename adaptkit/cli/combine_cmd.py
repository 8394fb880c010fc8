"""``adaptkit combine``: several adapters in, one adapter out."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from adaptkit.cli.output import echo_json, echo_table, say
from adaptkit.errors import AdaptkitError


def parse_params(items: tuple[str, ...]) -> dict[str, Any]:
    """``KEY=VALUE`` pairs; values are YAML scalars (``0.3`` → float, ``true`` → bool)."""
    from adaptkit.io.yamlio import loads_yaml

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
@click.option(
    "--tune",
    "tune_sets",
    multiple=True,
    type=click.Path(path_type=Path),
    metavar="EVAL.jsonl",
    help="Fit combination weights on this evaluation set (repeatable; the JSONL formats train reads).",
)
@click.option("--model", help="--tune: the base model the adapters were trained on (directory or Hub id).")
@click.option(
    "--tune-granularity",
    type=click.Choice(["adapter", "layer", "target", "component"]),
    help="One weight per adapter, per adapter x layer (default), per adapter x target, or per "
    "adapter x target x rank-1 component (the finest; see docs/strategies.md).",
)
@click.option(
    "--tune-objective",
    type=click.Choice(["mean", "max"]),
    help="Minimise the mean of the per-set losses (default) or the worst one.",
)
@click.option(
    "--tune-method",
    type=click.Choice(["gradient", "search"]),
    help="Gradient descent on the weights (default) or gradient-free search (LoraHub-style).",
)
@click.option("--tune-steps", type=click.IntRange(min=1), help="Tuning steps / evaluations (default 100).")
@click.option(
    "--tune-holdout",
    type=float,
    help="Fraction of each set held out for the report, never tuned on (default 0.25).",
)
@click.option(
    "--tune-quantize", is_flag=True, default=None, help="Load the base in NF4 for tuning (less memory)."
)
@click.option(
    "--plot", type=click.Path(path_type=Path), help="--tune: write a heat map of the weights (PNG)."
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
    tune_sets,
    model,
    tune_granularity,
    tune_objective,
    tune_method,
    tune_steps,
    tune_holdout,
    tune_quantize,
    plot,
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
      adaptkit combine a.yaml b.yaml --tune eval_a.jsonl --tune eval_b.jsonl --model ./base -o t.safetensors

    \b
    Tuning (--tune): fits one weight per adapter and layer (or per adapter, per target, or per
    rank-1 component) on the evaluation sets, base and factors frozen, then folds the weights
    into the factors: the output is an ordinary adapter. A part of each set is held out and the
    report shows its loss before and after. Adapters trained independently interfere where they
    share a target; --tune-granularity component separates them best. See
    docs/strategies.md#tuned-weights.
    """
    from adaptkit.combine.job import combine_specs

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
        tune={
            "sets": [str(p) for p in tune_sets] or None,
            "model": model,
            "granularity": tune_granularity,
            "objective": tune_objective,
            "method": tune_method,
            "steps": tune_steps,
            "holdout": tune_holdout,
            "quantize": tune_quantize,
        },
        plot=plot,
        log=say,
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
    tuned = summary.get("tune")
    if tuned:
        _print_tune(tuned)
    worst = max((r["relative_error"] for r in rows), default=0.0)
    click.echo(
        f"wrote {summary['output']} ({summary['format']}): {len(rows)} targets from "
        f"{len(summary['inputs'])} adapters with {summary['strategy']}; worst relative error {worst:.3g}"
    )


def _print_tune(tuned: dict[str, Any]) -> None:
    names = tuned["adapters"]
    if tuned["settings"]["granularity"] == "component":
        # Hundreds of components: one row per target, "mean (min…max)" of its components'
        # weights per adapter; --json and provenance hold every value.
        by_target: dict[str, list[list[float]]] = {}
        for g in tuned["groups"]:
            by_target.setdefault(g.rpartition("#")[0], []).append(tuned["weights"][g])
        rows = [
            (t, *(f"{sum(c) / len(c):.3g} ({min(c):.3g}…{max(c):.3g})" for c in zip(*ws, strict=True)))
            for t, ws in by_target.items()
        ]
        echo_table(("target (components)", *names), rows)
    else:
        echo_table(("group", *names), [(g, *tuned["weights"][g]) for g in tuned["groups"]])
    before, after = tuned["held_out_loss_before"], tuned["held_out_loss_after"]
    echo_table(("set (held out)", "loss static", "loss tuned"), [(k, before[k], after[k]) for k in before])
    click.echo(
        f"tuned {len(tuned['groups'])} group(s) x {len(names)} adapters in {tuned['seconds']:.1f}s "
        f"({tuned['settings']['method']}, objective {tuned['settings']['objective']})"
    )
