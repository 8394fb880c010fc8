"""``adaptkit export``: bake adapters into a deployable model."""

from __future__ import annotations

from pathlib import Path

import click

from adaptkit.cli.output import echo_json, say
from adaptkit.errors import AdaptkitError


@click.command("export")
@click.option("--onnx", "exporter", flag_value="onnx", help="ONNX graph for onnxruntime, parity-checked.")
@click.option(
    "--merged",
    "exporter",
    flag_value="merged",
    help="Hugging Face model directory, W + ΔW baked in.",
)
@click.option("--exporter", "exporter", help="Any registered exporter by name (see `adaptkit plugins`).")
@click.option(
    "--model", required=True, help="Hugging Face model directory or Hub id (org/name; safetensors only)."
)
@click.option(
    "-a",
    "--adapter",
    "adapters",
    multiple=True,
    metavar="SPEC",
    help="Adapter SPEC, repeatable; several are combined exactly (a recipe with its strategy).",
)
@click.option("-o", "--output", type=click.Path(path_type=Path), required=True, help="Output folder.")
@click.option("--opset", type=int, help="ONNX opset (default: the exporter's).")
@click.option(
    "--dtype",
    type=click.Choice(["float32", "float16"]),
    help="ONNX weights dtype (default float32).",
)
@click.option(
    "--base-dtype",
    type=click.Choice(["auto", "bf16", "fp16", "fp32"]),
    help="--onnx: dtype the base loads in and adapters merge in (default fp32; auto = the checkpoint's). "
    "--merged always keeps each tensor's own dtype.",
)
@click.option("--atol", type=float, help="Parity tolerance vs PyTorch (default 1e-4; 5e-2 for float16).")
@click.option("--no-verify", is_flag=True, help="Skip the onnxruntime parity check and latency report.")
@click.option(
    "--lora-inputs",
    is_flag=True,
    help="Base graph with LoRA factors as inputs, plus one .onnx_adapter per adapter.",
)
@click.option(
    "--external-data",
    type=click.Choice(["auto", "always", "never"]),
    default="auto",
    show_default=True,
    help="Weights in a side file: auto above the 2 GB protobuf limit.",
)
@click.option(
    "--merge-base",
    type=click.Choice(["original", "dequantized"]),
    help="--merged: add ΔW to the original 16-bit weights (default) or to their NF4 round trip "
    "(what a QLoRA adapter was trained against).",
)
@click.option("-f", "--force", is_flag=True, help="Replace an existing non-empty output folder.")
@click.option("--json", "as_json", is_flag=True, help="Print the export report as JSON.")
def command(
    exporter,
    model,
    adapters,
    output,
    opset,
    dtype,
    base_dtype,
    atol,
    no_verify,
    lora_inputs,
    external_data,
    merge_base,
    force,
    as_json,
) -> None:
    """Export a base model with adapters.

    \b
    --merged  a Hugging Face model directory with W + ΔW in its safetensors, streamed
              tensor by tensor (memory ≈ the largest tensor); config/tokenizer copied.
    --onnx    pre-merge, export with torch.onnx (dynamo), dynamic batch/sequence axes, then
              verify onnxruntime against PyTorch with the adapters *unmerged* on two input
              shapes, check the adapters change the output, and time ORT-merged vs ORT-base vs
              PyTorch-unmerged. Writes OUT/export-report.json.
    --onnx --lora-inputs
              the base graph takes each target's LoRA factors as inputs; each adapter
              becomes an .onnx_adapter file switched at run time with
              RunOptions.add_active_adapter (see adapters.json and docs/export.md).

    The output folder appears only when complete; an existing one survives a failed run.

    \b
    Examples:
      adaptkit export --onnx --model ./tiny-llama --adapter a.yaml -o onnx_out
      adaptkit export --merged --model ./tiny-llama --adapter a.yaml --adapter b.yaml -o merged
      adaptkit export --onnx --lora-inputs --model ./tiny-llama -a a.yaml -a b.yaml -o multi
    """
    from adaptkit.exporting import ExportRequest, load_export_adapters, prepare_output
    from adaptkit.plugins import get_registry

    if not exporter:
        raise AdaptkitError("choose what to export: --onnx, --merged or --exporter NAME")
    registry = get_registry()
    exp = registry.get("exporter", exporter)
    if lora_inputs and exporter != "onnx":
        raise AdaptkitError("--lora-inputs goes with --onnx")
    if base_dtype and exporter == "merged":
        raise AdaptkitError(
            "--base-dtype goes with --onnx: --merged streams the checkpoint and keeps each tensor's dtype"
        )
    local_model = Path(model) if Path(model).exists() else None
    prepare_output(output, force, inputs=[local_model, *adapters])
    named = load_export_adapters(list(adapters), registry)
    prepare_output(output, force, inputs=[local_model, *(p for a in named for p in a.reads)])
    options = {
        "opset": opset,
        "dtype": dtype,
        "atol": atol,
        "verify": not no_verify,
        "lora_inputs": lora_inputs,
        "external_data": external_data,
        "merge_base": merge_base,
        "base_dtype": base_dtype,
    }
    request = ExportRequest(model=model, adapters=named, output=output, force=force, options=options)
    report = exp.export(request, (lambda m: None) if as_json else say)
    if as_json:
        echo_json(report)
    else:
        click.echo(f"wrote {output} ({exporter})")
