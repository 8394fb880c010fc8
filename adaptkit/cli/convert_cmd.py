"""``adaptkit convert``: between adapter formats (native file <-> PEFT directory, ...)."""

from __future__ import annotations

from pathlib import Path

import click

from adaptkit.cli.output import echo_json
from adaptkit.errors import AdaptkitError


@click.command("convert")
@click.argument("spec")
@click.option(
    "-o",
    "--output",
    type=click.Path(path_type=Path),
    required=True,
    help="Output file (adaptkit) or folder (peft).",
)
@click.option(
    "--to",
    "to_format",
    required=True,
    help="Target format: adaptkit or peft (see `adaptkit plugins`).",
)
@click.option("-f", "--force", is_flag=True, help="Replace an existing output.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable summary.")
def command(spec: str, output: Path, to_format: str, force: bool, as_json: bool) -> None:
    """Convert an adapter SPEC to another format, losslessly or not at all.

    Every target's ΔW is preserved exactly: ranks, alphas, rsLoRA, rank_pattern /
    alpha_pattern and fan_in_fan_out carry over, and DoRA magnitudes, LoRA and trained
    biases, embedding LoRA, experts (target_parameters), trainable tokens and saved modules
    (modules_to_save, task heads, the base weights PEFT saves) are kept bit for bit. What a
    format cannot hold is refused, never dropped.

    \b
    Examples:
      adaptkit convert peft_adapter_dir -o adapter.safetensors --to adaptkit
      adaptkit convert adapter.safetensors -o peft_dir --to peft
    """
    from adaptkit.io.output_guard import check_output, kind_of_writer
    from adaptkit.io.specs import detect_format, load_ref, resolve_spec
    from adaptkit.plugins import get_registry
    from adaptkit.plugins.contracts import WritableFormat

    registry = get_registry()
    writer = registry.get("format", to_format)
    if not isinstance(writer, WritableFormat):
        raise AdaptkitError(f"format {to_format!r} cannot write adapters")
    ref = resolve_spec(spec)
    check_output(output, kind_of_writer(writer), inputs=[ref.spec, ref.path], force=force)
    source_format = detect_format(ref.path, registry).name
    adapter = load_ref(ref, registry)
    written = writer.write(adapter, output, overwrite=force)
    info = {
        "input": str(ref.path),
        "from": source_format,
        "output": str(written),
        "to": to_format,
        "targets": len(adapter.targets),
        "ranks": sorted(set(adapter.ranks.values())),
    }
    if as_json:
        echo_json(info)
    else:
        click.echo(
            f"wrote {written} ({to_format}) from {ref.path} ({source_format}): "
            f"{info['targets']} targets, ranks {info['ranks']}"
        )
