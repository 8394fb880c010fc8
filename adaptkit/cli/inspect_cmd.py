"""``adaptkit inspect``: ranks, alphas, scales and update norms of an adapter."""

from __future__ import annotations

import click

from adaptkit.cli.output import echo_json, echo_table


@click.command("inspect")
@click.argument("spec")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def command(spec: str, as_json: bool) -> None:
    """Show what an adapter SPEC holds.

    Per target: rank r, alpha, scaling mode, scale s (dW = s·B@A), shape (out × in), dtype
    and ||dW||_F, computed from the factors without forming dW. Totals at the end.
    """
    from adaptkit.plugins import get_registry
    from adaptkit.specs import detect_format, load_ref, resolve_spec
    from adaptkit.summary import describe_adapter

    registry = get_registry()
    ref = resolve_spec(spec)
    fmt = detect_format(ref.path, registry).name
    adapter = load_ref(ref, registry)
    info = {
        "spec": spec,
        "path": str(ref.path),
        "format": fmt,
        "weight": ref.weight,
        "name": ref.name,
        **describe_adapter(adapter),
    }
    if as_json:
        echo_json(info)
        return
    click.echo(f"{info['path']}  (format: {fmt}, base: {info['base_model'].get('name', '-')})")
    rows = [
        (
            t["name"],
            t["rank"],
            t["alpha"],
            t["scaling"],
            t["scale"],
            "×".join(map(str, t["shape"])),
            t["dtype"],
            t["delta_norm"],
        )
        for t in info["targets"]
    ]
    echo_table(("target", "rank", "alpha", "scaling", "scale", "shape", "dtype", "||dW||_F"), rows)
    tot = info["totals"]
    click.echo(
        f"{tot['targets']} targets, {tot['params']:,} parameters ({tot['bytes']:,} bytes), "
        f"ranks {tot['ranks']}, total ||dW||_F = {tot['delta_norm']:.6g}"
    )
