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
@click.option(
    "--graph",
    type=click.Choice(["auto", "generation", "logits"]),
    help="--onnx: 'generation' = KV-cache decoder for ONNX Runtime GenAI; 'logits' = one forward "
    "(input_ids → logits); 'auto' (default) = generation where the model builder supports the model.",
)
@click.option(
    "--precision",
    type=click.Choice(["fp32", "fp16", "int4"]),
    help="--onnx generation graph: weights fp32 (default), fp16, or int4 (blockwise, MatMulNBits).",
)
@click.option(
    "--device",
    type=click.Choice(["cpu", "cuda"]),
    help="--onnx generation graph: the execution provider it is built for (default cpu).",
)
@click.option(
    "--min-agreement",
    type=float,
    help="--onnx fp16/int4: refuse below this teacher-forced top-1 agreement with PyTorch "
    "(default 0.9 fp16, 0.6 int4).",
)
@click.option(
    "--opset",
    type=int,
    help="Logits-only graph: ONNX opset, 18 up to what onnx knows (default: the exporter's).",
)
@click.option(
    "--dtype",
    type=click.Choice(["float32", "float16"]),
    help="Logits-only graph: weights dtype (default float32).",
)
@click.option(
    "--base-dtype",
    type=click.Choice(["auto", "bf16", "fp16", "fp32"]),
    help="Logits-only graph: dtype the base loads in and adapters merge in (default fp32; auto = the "
    "checkpoint's). "
    "--merged always keeps each tensor's own dtype.",
)
@click.option(
    "--atol",
    type=float,
    help="Logits tolerance vs PyTorch: generation fp32 1e-3; logits-only 1e-4 (5e-2 float16).",
)
@click.option("--no-verify", is_flag=True, help="Skip the parity check (and the latency report).")
@click.option(
    "--lora-inputs",
    is_flag=True,
    help="Base graph with LoRA factors as inputs, plus one .onnx_adapter per adapter.",
)
@click.option(
    "--external-data",
    type=click.Choice(["auto", "always", "never"]),
    help="Logits-only graph: weights in a side file (default auto: above the 2 GB protobuf limit).",
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
    graph,
    precision,
    device,
    min_agreement,
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
    --onnx    a generation-ready model for ONNX Runtime GenAI: the --merged checkpoint
              (streamed) goes through ONNX Runtime GenAI's model builder (KV cache, fused
              attention; --precision fp32|fp16|int4), then greedy generation on probe
              prompts is compared with PyTorch + the adapters *unmerged*: fp32 must give
              the same tokens and logits within --atol; fp16/int4 must reach
              --min-agreement. Try it with `adaptkit generate OUT`. Models the builder
              does not support (GPT-2, head sizes not a multiple of 16) get the
              logits-only graph (torch.onnx dynamo), verified on logits, as the report
              says. Writes OUT/export-report.json.
    --onnx --lora-inputs
              one base graph whose targeted projections take LoRA factors as inputs;
              each adapter becomes an .onnx_adapter file, switched per request
              (og.Adapters / generator.set_active_adapter; see adapters.json and
              docs/export.md); every adapter is verified as above.

    The output folder appears only when complete; an existing one survives a failed run.

    \b
    Examples:
      adaptkit export --onnx --model ./tiny-llama --adapter a.yaml -o onnx_out
      adaptkit export --onnx --precision int4 --model ./llama -a a.yaml -o llama-int4
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
    onnx_only = {
        "--graph": graph,
        "--precision": precision,
        "--device": device,
        "--min-agreement": min_agreement,
    }
    for flag, value in onnx_only.items():
        if value is not None and exporter != "onnx":
            raise AdaptkitError(f"{flag} goes with --onnx")
    options = {
        "graph": graph,
        "precision": precision,
        "device": device,
        "min_agreement": min_agreement,
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
