"""``adaptkit demo``: the whole pipeline on a built-in tiny model, offline."""

from __future__ import annotations

from pathlib import Path

import click


@click.command("demo")
@click.option(
    "-o",
    "--output",
    type=click.Path(path_type=Path),
    default=Path("demo-out"),
    show_default=True,
    help="Folder for adapters, YAMLs, combinations, the ONNX export and the summary.",
)
@click.option("--quick", is_flag=True, help="Fewer steps and prompts (about a minute).")
@click.option(
    "--seed", type=int, default=0, show_default=True, help="Seed for training, combining and tuning."
)
@click.option(
    "--replay",
    is_flag=True,
    help="Train each adapter also on the other skill's inputs (copied unchanged), so it learns to "
    "leave them alone: the static combinations then keep more of both skills.",
)
@click.option(
    "-f", "--force", is_flag=True, help="Write into an existing folder that is not an earlier demo's."
)
@click.option("--json", "as_json", is_flag=True, help="Print results as JSON at the end.")
def command(output: Path, quick: bool, seed: int, replay: bool, force: bool, as_json: bool) -> None:
    """Train two skills as LoRA adapters, combine them several ways, evaluate, export to ONNX.

    The adapters are trained independently, each on its own skill, as published adapters are;
    the static combinations then lose much of both skills, and the tuned one
    (combine --tune, one weight per rank-1 component) recovers most of them.

    Uses a built-in tiny byte-level Llama (pre-trained once in a few seconds and cached under
    $ADAPTKIT_CACHE or ~/.cache/adaptkit). Writes OUTPUT/summary.md, results.json, charts
    (with matplotlib: pip install 'adaptkit[demo]'), a.yaml, b.yaml, recipe.yaml, the adapters
    and OUTPUT/onnx/. Rerunning into an earlier demo's folder replaces its files; any other
    non-empty folder needs --force.
    """
    import json

    from adaptkit.demo.run import DemoSettings, run_demo

    def log(msg: str) -> None:
        click.echo(msg, err=as_json)

    settings = DemoSettings.for_mode(quick)
    settings.seed = seed
    settings.replay = replay
    result = run_demo(output, settings, log=log, progress=not as_json, force=force)
    if as_json:
        click.echo(
            json.dumps(
                {
                    "accuracy": result.accuracy,
                    "best": result.best,
                    "seconds": result.seconds,
                    "output": str(output),
                },
                indent=2,
            )
        )
    else:
        click.echo(f"done in {result.seconds['total']:.0f} s: see {output / 'summary.md'}")
