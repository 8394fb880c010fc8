"""``adaptkit inspect``: ranks, alphas, scales and update norms of an adapter."""

from __future__ import annotations

from pathlib import Path

import click

from adaptkit.cli.output import echo_json, echo_table
from adaptkit.errors import AdaptkitError


@click.command("inspect")
@click.argument("spec")
@click.option("--model", help="Base model (directory or Hub id): adds ||ΔW||/||W|| per target.")
@click.option(
    "--plot", type=click.Path(path_type=Path), help="Write a PNG of ||ΔW||/||W|| per target (needs --model)."
)
@click.option("-f", "--force", is_flag=True, help="Replace an existing --plot file.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def command(spec: str, model: str | None, plot: Path | None, force: bool, as_json: bool) -> None:
    """Show what an adapter SPEC holds.

    Per target: rank r, alpha, scaling mode, scale s (dW = s·B@A), shape (out × in), dtype
    and ||dW||_F, computed from the factors without forming dW. Totals at the end.
    """
    from adaptkit.io.specs import detect_format, load_ref, resolve_spec
    from adaptkit.plugins import get_registry
    from adaptkit.summary import describe_adapter

    registry = get_registry()
    ref = resolve_spec(spec)
    if plot is not None and model is None:
        raise AdaptkitError("--plot needs --model (the ratio ||ΔW||/||W|| needs the base weights)")
    if plot is not None:
        from adaptkit.io.output_guard import PLOT, check_output

        local_model = model if model is not None and Path(model).exists() else None
        check_output(plot, PLOT, inputs=[ref.spec, ref.path, local_model], force=force, flag="--plot")
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
    if model is not None:
        from adaptkit.summary import base_weight_norms

        embeddings = {t["name"] for t in info["targets"] if t["kind"] == "embedding"}
        norms = base_weight_norms(model, {t["name"]: tuple(t["shape"]) for t in info["targets"]}, embeddings)
        for t in info["targets"]:
            t["update_ratio"] = t["delta_norm"] / max(norms[t["name"]], 1e-30)
        info["totals"]["max_update_ratio"] = max(t["update_ratio"] for t in info["targets"])
        if plot is not None:
            _plot(info["targets"], plot, replace=force)
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
    headers = ["target", "rank", "alpha", "scaling", "scale", "shape", "dtype", "||dW||_F"]
    if model is not None:
        headers.append("||dW||/||W||")
        rows = [(*row, t["update_ratio"]) for row, t in zip(rows, info["targets"], strict=True)]
    echo_table(headers, rows)
    tot = info["totals"]
    click.echo(
        f"{tot['targets']} targets, {tot['params']:,} parameters ({tot['bytes']:,} bytes), "
        f"ranks {tot['ranks']}, total ||dW||_F = {tot['delta_norm']:.6g}"
    )
    for entry in info["saved_modules"]:
        shapes = ", ".join(f"{k} {'×'.join(map(str, v))}" for k, v in entry["params"].items())
        click.echo(
            f"saved module {entry['name']} ({entry['origin']}; replaces the base's): {shapes}, "
            f"{entry['bytes']:,} bytes"
        )


def _plot(targets: list[dict], path: Path, *, replace: bool) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise AdaptkitError("--plot needs matplotlib", hint="pip install 'adaptkit[demo]'") from None
    from adaptkit.io.atomic import atomic_path

    fig, ax = plt.subplots(figsize=(max(6, 0.25 * len(targets)), 3.5))
    ax.bar(range(len(targets)), [t["update_ratio"] for t in targets])
    ax.set_xticks(range(len(targets)), [t["name"] for t in targets], rotation=80, fontsize=6)
    ax.set_ylabel("||ΔW||_F / ||W||_F")
    ax.set_title("Update magnitude per target")
    fig.tight_layout()
    with atomic_path(path, replace=replace) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)
