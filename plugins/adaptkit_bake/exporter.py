"""The ``merged`` exporter (see the package docstring); the streaming itself is core's
:func:`adaptkit.nn.checkpoint.bake_checkpoint`, which the ONNX exporter uses too."""

from __future__ import annotations

import json
from typing import Any, ClassVar

from adaptkit.api import AdaptkitError

_ONNX_ONLY = "it shapes an ONNX graph, and --merged writes a Hugging Face model folder"
_NO_PARITY = "--merged adds ΔW exactly, tensor by tensor, and runs no parity check"
#: Options of ``adaptkit export`` that ``--merged`` does not use, and why (refused when given).
UNUSED = {
    **dict.fromkeys(("graph", "precision", "device", "opset", "dtype", "external_data"), _ONNX_ONLY),
    "lora_inputs": "it switches adapters in an ONNX graph; --merged bakes them in",
    "base_dtype": "--merged streams the checkpoint and keeps each tensor's dtype",
    "atol": _NO_PARITY,
    "min_agreement": _NO_PARITY,
    "verify": _NO_PARITY,
}


class MergedExporter:
    name = "merged"
    description = "HF model directory with W + ΔW baked in, streamed tensor by tensor"
    requires: ClassVar[dict[str, str]] = {"torch": "torch", "safetensors": "safetensors"}

    def export(self, request: Any, log: Any) -> dict[str, Any]:
        from adaptkit.api.export import combined, may_replace, refuse_unused_options
        from adaptkit.api.files import atomic_directory
        from adaptkit.api.models import resolve_model
        from adaptkit.api.nn import bake_checkpoint

        refuse_unused_options(request.options, UNUSED, "--merged")
        folder = resolve_model(request.model)
        adapter = combined(request.adapters)
        if adapter is None:
            raise AdaptkitError("export --merged needs at least one --adapter")
        merge_base = request.options.get("merge_base")
        blocksize = int(request.options.get("blocksize") or 64)
        with atomic_directory(request.output, overwrite=may_replace(request.output, request.force)) as tmp:
            baked = bake_checkpoint(folder, adapter, tmp, merge_base=merge_base, blocksize=blocksize)
            report = {
                "exporter": "merged",
                "model": str(folder),
                "adapters": [
                    {"name": a.name, "weight": a.weight, "source": str(a.source)} for a in request.adapters
                ],
                **baked,
            }
            (tmp / "adaptkit-export.json").write_text(json.dumps(report, indent=2) + "\n")
        log(
            f"merged {baked['targets_merged']} targets into {request.output} (largest tensor "
            f"{baked['largest_tensor_bytes'] / 2**20:.1f} MiB; max ||ΔW||/||W|| "
            f"{report['update_ratio']['max']:.3g})"
        )
        return report
