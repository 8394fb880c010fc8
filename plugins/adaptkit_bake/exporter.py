"""The ``merged`` exporter (see the package docstring): ``W ← W + ΔW`` in the base's own
safetensors, streamed tensor by tensor by core's :func:`adaptkit.api.nn.bake_checkpoint` (which
the ONNX exporter's generation graph starts from too). The host resolves the model, loads the
adapters and owns the output folder; this class bakes and reports."""

from __future__ import annotations

from typing import Any, ClassVar

from adaptkit.api import AdaptkitError, ExportRequest


class BakeExporter:
    """Bakes the exact weighted sum of the adapters into a Hugging Face model folder.

    For each target ``W ← W + Σᵢ wᵢ·sᵢ·Bᵢ·Aᵢ``, computed in float32 and cast back to the stored
    dtype; every other tensor is copied byte for byte.
    """

    name = "merged"
    description = "HF model directory with W + ΔW baked in, streamed tensor by tensor"
    help = """
        a Hugging Face model directory with W + ΔW in its safetensors, streamed
        tensor by tensor (memory ≈ the largest tensor); config/tokenizer copied.
          adaptkit export --merged --model ./tiny-llama -a a.yaml -a b.yaml -o merged
        """
    requires: ClassVar[dict[str, str]] = {"torch": "torch", "safetensors": "safetensors"}
    options_schema: ClassVar[dict[str, Any]] = {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "merge_base": {
                "type": "string",
                "enum": ["original", "dequantized"],
                "default": "original",
                "description": "add ΔW to the original 16-bit weights, or to their NF4 round trip "
                "(what a QLoRA adapter was trained against)",
            },
        },
    }

    def export(self, request: ExportRequest, log: Any) -> dict[str, Any]:
        from adaptkit.api.export import combined
        from adaptkit.api.nn import bake_checkpoint

        adapter = combined(request.adapters)
        if adapter is None:
            raise AdaptkitError("export --merged needs at least one --adapter")
        # Given explicitly, either base also has the report measure the NF4 gap ‖W − dequant(W4)‖
        # per target; left out, that (slow) diagnosis runs only for a QLoRA adapter.
        merge_base = request.options["merge_base"] if "merge_base" in request.given else None
        report = bake_checkpoint(request.model_dir, adapter, request.out_dir, merge_base=merge_base)
        log(
            f"baked {report['targets_baked']} targets into {request.output} (largest tensor "
            f"{report['largest_tensor_bytes'] / 2**20:.1f} MiB; max ||ΔW||/||W|| "
            f"{report['update_ratio']['max']:.3g})"
        )
        return report
