"""The ``onnx`` exporter: its options, and which graph an export gets.

``--graph auto`` (the default) writes the generation graph (:mod:`adaptkit_onnx.generation`)
when the model builder supports the model, and otherwise the logits-only graph
(:mod:`adaptkit_onnx.logits`: ``input_ids, attention_mask → logits``, torch.onnx dynamo),
saying why. Tolerances come from the one table in :mod:`adaptkit_onnx.parity`.
"""

from __future__ import annotations

from typing import Any, ClassVar

from adaptkit.api import AdaptkitError, ExportRequest

_MERGED_ONLY = "it chooses the base --merged adds ΔW to (an --onnx export bakes into the original weights)"
_NO_PARITY = "--no-verify skips the parity check this option sets"
#: Options of ``adaptkit export`` that a graph never uses, and why (refused when given).
#: The block sizes ONNX Runtime's MatMulNBits takes for int4 weights.
INT4_BLOCK_SIZES = (16, 32, 64, 128, 256)
#: The int4 defaults, chosen from the quality and speed tables in docs/benchmarks.md.
DEFAULT_INT4 = {"block_size": 32, "accuracy_level": 4}

UNUSED_BY_GRAPH: dict[str, dict[str, str]] = {
    "generation": {
        "opset": "the model builder chooses the generation graph's opset (--opset is for the "
        "logits-only graph)",
        "dtype": "its weights follow --precision fp32|fp16|int4 (--dtype is for the logits-only graph)",
        "base_dtype": "it bakes W + ΔW in float32 for --precision fp32 and in the checkpoint's own "
        "dtype for fp16/int4 (--base-dtype is for the logits-only graph)",
        "external_data": "the model builder decides where its weights go (--external-data is for "
        "the logits-only graph)",
        "merge_base": _MERGED_ONLY,
    },
    "logits": {
        "device": "it is not built for a provider; --device builds the generation graph",
        "int4_block_size": "int4 needs the generation graph",
        "int4_accuracy_level": "int4 needs the generation graph",
        "min_agreement": "it is checked on logits against --atol; --min-agreement checks the fp16/int4 "
        "generation graph",
        "merge_base": _MERGED_ONLY,
    },
}


def unused_options(graph: str, request: ExportRequest) -> dict[str, str]:
    """``option -> why it does nothing`` for the path an export takes: the graph's own table
    (:data:`UNUSED_BY_GRAPH`) plus what the precision and ``--no-verify`` leave unused."""
    o, precision = request.options, request.options["precision"]
    unused = dict(UNUSED_BY_GRAPH[graph])
    if not o["verify"]:
        unused.update(atol=_NO_PARITY, min_agreement=_NO_PARITY)
    elif graph == "generation" and precision == "fp32":
        unused["min_agreement"] = (
            "an fp32 graph must reproduce PyTorch's greedy tokens and logits within --atol; "
            "--min-agreement is for fp16/int4"
        )
    elif graph == "generation":
        unused["atol"] = f"a {precision} graph is checked on top-1 agreement (--min-agreement), not on --atol"
    if precision != "int4":
        unused.update(
            int4_block_size=f"only int4 weights are quantized in blocks (this is {precision})",
            int4_accuracy_level=f"only int4 weights use MatMulNBits (this is {precision})",
        )
    if graph == "logits" and "dtype" in request.given:
        unused["precision"] = "--dtype sets its weights' dtype; give --dtype or --precision, not both"
    return unused


class OnnxExporter:
    name = "onnx"
    description = (
        "generation-ready ONNX (KV cache; fp32/fp16/int4) for ONNX Runtime GenAI, verified on greedy "
        "generation; logits-only graph where the builder cannot go; LoRA inputs + .onnx_adapter files"
    )
    help = """
        a generation-ready model for ONNX Runtime GenAI: the --merged checkpoint
        (streamed) goes through ONNX Runtime GenAI's model builder (KV cache, fused
        attention; --precision fp32|fp16|int4), then greedy generation on probe
        prompts is compared with PyTorch + the adapters *unmerged*: fp32 must give
        the same tokens and logits within --atol; fp16/int4 must reach
        --min-agreement. Try it with `adaptkit generate OUT`. Models the builder
        does not support (GPT-2, head sizes not a multiple of 16) get the
        logits-only graph (torch.onnx dynamo), verified on logits, as the report
        says. With --lora-inputs: one base graph whose targeted projections take
        LoRA factors as inputs; each adapter becomes an .onnx_adapter file,
        switched per request (og.Adapters / generator.set_active_adapter; see
        adapters.json and docs/export.md); every adapter is verified as above.
          adaptkit export --onnx --model ./tiny-llama -a a.yaml -o onnx_out
          adaptkit export --onnx --precision int4 --model ./llama -a a.yaml -o llama-int4
          adaptkit export --onnx --lora-inputs --model ./tiny-llama -a a.yaml -a b.yaml -o multi
        """
    requires: ClassVar[dict[str, str]] = {
        "onnx": "onnx",
        "onnxscript": "onnxscript",
        "onnxruntime": "onnxruntime-gpu",
        "onnxruntime_genai": "onnxruntime-genai-cuda",
        "torch": "torch",
    }
    #: ``adaptkit export --onnx`` flags. The host checks types, choices and bounds; which option a
    #: graph ignores is :func:`unused_options`. ``None`` defaults depend on the path taken.
    options_schema: ClassVar[dict[str, Any]] = {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "graph": {
                "type": "string",
                "enum": ["auto", "generation", "logits"],
                "default": "auto",
                "description": "'generation' = KV-cache decoder for ONNX Runtime GenAI; 'logits' = one "
                "forward (input_ids → logits); 'auto' = generation where the model builder supports "
                "the model",
            },
            "precision": {
                "type": "string",
                "enum": ["fp32", "fp16", "int4"],  # adaptkit_onnx.generation.builder.PRECISIONS
                "default": "fp32",
                "description": "generation graph weights: fp32, fp16, or int4 (blockwise, MatMulNBits)",
            },
            "device": {
                "type": "string",
                "enum": ["cpu", "cuda"],  # adaptkit_onnx.generation.builder.DEVICES
                "default": "cpu",
                "description": "generation graph: the execution provider it is built for",
            },
            "int4_block_size": {
                "type": "integer",
                "enum": list(INT4_BLOCK_SIZES),
                "minimum": INT4_BLOCK_SIZES[0],
                "maximum": INT4_BLOCK_SIZES[-1],
                "default": DEFAULT_INT4["block_size"],
                "description": "int4: weights per quantization block (one scale each); smaller is closer "
                "to the float model, larger is smaller and faster (docs/benchmarks.md)",
            },
            "int4_accuracy_level": {
                "type": "integer",
                "enum": [0, 1, 2, 3, 4],
                "minimum": 0,
                "maximum": 4,
                "default": DEFAULT_INT4["accuracy_level"],
                "description": "int4: MatMulNBits' activations: 4 = int8 (fastest on CPU; rounds the "
                "activations too), 1 = fp32, 2 = fp16, 3 = bf16, 0 = unset (the kernel's default)",
            },
            "min_agreement": {
                "type": ["number", "null"],
                "minimum": 0.0,
                "maximum": 1.0,
                "default": None,
                "description": "fp16/int4 generation graph: refuse below this teacher-forced top-1 "
                "agreement with PyTorch (default 0.9 fp16, 0.8 int4)",
            },
            "opset": {
                "type": ["integer", "null"],
                "minimum": 18,
                "maximum": 40,  # the installed onnx narrows it (logits.graph.check_opset)
                "default": None,
                "description": "logits-only graph: ONNX opset, 18 up to what the installed onnx knows "
                "(default: the exporter's)",
            },
            "dtype": {
                "type": "string",
                "enum": ["float32", "float16"],
                "default": "float32",
                "description": "logits-only graph: weights dtype (--precision fp16 also picks float16)",
            },
            "base_dtype": {
                "type": "string",
                "enum": ["auto", "bf16", "fp16", "fp32"],
                "default": "fp32",
                "description": "logits-only graph: dtype the base loads in and adapters merge in "
                "(auto = the checkpoint's)",
            },
            "atol": {
                "type": ["number", "null"],
                "exclusiveMinimum": 0.0,
                "maximum": 1.0,
                "default": None,
                "description": "logits tolerance vs PyTorch (default: generation fp32 1e-3; "
                "logits-only 1e-4, 5e-2 float16)",
            },
            "verify": {
                "type": "boolean",
                "default": True,
                "description": "the parity check against PyTorch with the adapters unmerged, and the "
                "latency report (--no-verify skips both)",
            },
            "lora_inputs": {
                "type": "boolean",
                "default": False,
                "description": "base graph with LoRA factors as inputs, plus one .onnx_adapter per adapter",
            },
            "external_data": {
                "type": "string",
                "enum": ["auto", "always", "never"],
                "default": "auto",
                "description": "logits-only graph: weights in a side file (auto: above the 2 GB "
                "protobuf limit)",
            },
        },
    }

    def export(self, request: ExportRequest, log: Any) -> dict[str, Any]:
        from adaptkit.api.models import load_config
        from adaptkit_onnx.generation.builder import genai_unsupported
        from adaptkit_onnx.logits.graph import check_opset
        from adaptkit_onnx.parity import TOLERANCES

        o = request.options
        graph, precision = o["graph"], o["precision"]
        config = load_config(request.model_dir)
        reason = genai_unsupported(config)
        if graph == "generation" and reason:
            raise AdaptkitError(
                f"no generation graph: {reason}", hint="--graph logits writes the logits-only graph"
            )
        chosen = "logits" if graph == "logits" or reason else "generation"
        where = "the logits-only graph" if chosen == "logits" else "the generation graph"
        if graph == "auto" and reason:
            where += f" (the generation graph is unavailable: {reason})"
        # Every option this path would ignore is refused here, before anything loads.
        request.refuse_unused(unused_options(chosen, request), where)
        if chosen == "logits":
            check_opset(o["opset"])
            if graph == "auto":
                log(f"generation graph unavailable ({reason}); writing the logits-only graph")
            return self._logits_only(request, reason, log)

        default = TOLERANCES["generation", precision]
        agreement = o["min_agreement"]
        options = {
            "precision": precision,
            "device": o["device"],
            "int4": {"block_size": o["int4_block_size"], "accuracy_level": o["int4_accuracy_level"]}
            if precision == "int4"
            else None,
            "verify": o["verify"],
            "atol": default.atol if o["atol"] is None else o["atol"],
            "min_agreement": default.min_agreement if agreement is None else agreement,
        }
        folder, tmp = request.model_dir, request.out_dir
        if o["lora_inputs"]:
            from adaptkit_onnx.generation.switchable import export_switchable

            return export_switchable(folder, config, request.adapters, tmp, options, log)
        from adaptkit_onnx.generation.baked import export_baked

        return export_baked(folder, config, request.adapters, tmp, options, log)

    def _logits_only(self, request: ExportRequest, reason: str | None, log: Any) -> dict[str, Any]:
        from adaptkit_onnx.logits.export import export_logits
        from adaptkit_onnx.parity import TOLERANCES

        o = request.options
        if o["precision"] == "int4":
            raise AdaptkitError(f"int4 needs the generation graph, and {reason or 'it was not chosen'}")
        dtype = o["dtype"] if "dtype" in request.given else {"fp16": "float16"}.get(o["precision"], "float32")
        atol = TOLERANCES["logits", dtype].atol if o["atol"] is None else o["atol"]
        return export_logits(request, dtype, atol, reason, log)
