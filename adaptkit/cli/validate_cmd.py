"""``adaptkit validate``: check YAML files and adapters, reporting every problem at once."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from adaptkit.cli.output import echo_json
from adaptkit.errors import AdaptkitError


def validate_file(path: Path) -> dict[str, Any]:
    """Validate one file; never raises for bad input, returns ``{"path", "kind", "problems"}``."""
    from adaptkit.io.recipe import yaml_kind
    from adaptkit.io.specs import detect_format, is_yaml, read_adapter_yaml
    from adaptkit.plugins import get_registry

    registry = get_registry()
    result: dict[str, Any] = {"path": str(path), "kind": None, "problems": []}
    try:
        if is_yaml(path):
            kind = yaml_kind(path)
            result["kind"] = kind
            if kind == "adapter-spec":
                ref = read_adapter_yaml(path)
                adapter = detect_format(ref.path, registry).require_available().read(ref.path)
            elif kind == "recipe":
                return _validate_recipe(path, result)
            else:
                raise AdaptkitError(
                    "unknown YAML kind: expected an adapter manifest ('adapter' key) or a "
                    "recipe ('adapters' key)",
                    path=path,
                )
        else:
            reg = detect_format(path, registry)
            result["kind"] = f"adapter ({reg.name})"
            adapter = reg.require_available().read(path)
        result["targets"] = len(adapter.targets)
        for target, pair in adapter.targets.items():
            if not bool(pair.B.any()):
                result.setdefault("warnings", []).append(
                    f"{target}.lora_B.weight is all zero: this target changes nothing"
                )
    except AdaptkitError as exc:
        where = exc.path or str(path)
        result["problems"] = [f"{where}: {p}" for p in exc.problems]
    return result


def _validate_recipe(path: Path, result: dict[str, Any]) -> dict[str, Any]:
    """A recipe: its schema, every adapter it names, and its request (strategy, number of
    inputs, params, rank) as :func:`adaptkit.combine.job.check_recipe` sees it."""
    from adaptkit.combine.job import check_recipe
    from adaptkit.io.recipe import load_recipe
    from adaptkit.io.specs import load_ref
    from adaptkit.plugins import get_registry

    registry = get_registry()
    recipe = load_recipe(path)
    problems: list[str] = []
    targets: set[str] = set()
    for ref in recipe.adapters:
        try:
            targets |= set(load_ref(ref, registry).targets)
        except AdaptkitError as exc:
            problems += [f"{exc.path or ref.path}: {p}" for p in exc.problems]
    try:
        check_recipe(recipe, registry)
    except AdaptkitError as exc:
        problems += [f"{path}: {p}" for p in exc.problems]
    result["problems"] = problems
    result["targets"] = len(targets)
    return result


@click.command("validate")
@click.argument("files", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def command(files: tuple[Path, ...], as_json: bool) -> None:
    """Check adapter files and YAML manifests; list every problem found.

    YAML files are checked against their JSON Schema (every violation with its location),
    and the adapters they point to are loaded and checked too. Exit code 2 if anything is
    wrong.
    """
    results = [validate_file(f) for f in files]
    bad = [r for r in results if r["problems"]]
    if as_json:
        echo_json(results)
    else:
        for r in results:
            for w in r.get("warnings", []):
                click.echo(f"warning: {r['path']}: {w}", err=True)
            if r["problems"]:
                for p in r["problems"]:
                    click.echo(f"  {p}", err=True)
            else:
                click.echo(f"ok    {r['path']}  ({r['kind']}, {r.get('targets', 0)} targets)")
    if bad:
        raise AdaptkitError(f"{len(bad)} of {len(results)} files have problems")
