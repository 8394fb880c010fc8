"""The ``dense-delta`` exporter: each target's whole update ``ΔW`` in one safetensors file.

For target ``t`` and the export's adapters ``i`` (weight ``wᵢ``, factors ``Bᵢ``, ``Aᵢ``, scale
``sᵢ = alpha/r``, or ``alpha/√r`` for rsLoRA)::

    ΔW_t = Σᵢ wᵢ · sᵢ · Bᵢ · Aᵢ        (out × in, the nn.Linear orientation)

formed in float64 and rounded once to ``--delta-dtype``. A serving stack that applies updates
as dense matrices (or a diff tool) reads ``deltas.safetensors`` directly: one tensor per target,
named by its module path, with ``W + ΔW`` being what ``adaptkit export --merged`` bakes.

Only :mod:`adaptkit.api` is imported, as for any third-party plugin.
"""

from __future__ import annotations

from typing import Any, ClassVar

from adaptkit.api import AdaptkitError, ExportRequest

#: The file the export writes (beside the host's ``export-report.json``).
FILE = "deltas.safetensors"
_DTYPES = ("float32", "float16", "bfloat16")


class DenseDeltaExporter:
    """Writes ``ΔW`` per target (see the module docstring); the host does everything else."""

    name = "dense-delta"
    description = "each target's dense update ΔW = Σ w·s·B·A as one safetensors file"
    help = """
        OUT/deltas.safetensors: ΔW_t = Σ w·s·B·A (out × in) per target, formed in
        float64 and rounded once to --delta-dtype.
          adaptkit export --dense-delta --model ./base -a a.yaml --delta-dtype bfloat16 -o deltas
        """
    requires: ClassVar[dict[str, str]] = {"torch": "torch", "safetensors": "safetensors"}
    # A class attribute: adaptkit turns it into `adaptkit export --delta-dtype` without
    # constructing or importing anything heavy, and checks values against it before any work.
    options_schema: ClassVar[dict[str, Any]] = {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "delta_dtype": {
                "type": "string",
                "enum": list(_DTYPES),
                "default": "float32",
                "description": "dtype of the written ΔW (formed in float64, rounded once)",
            },
        },
    }

    def export(self, request: ExportRequest, log: Any) -> dict[str, Any]:
        import torch
        from safetensors.torch import save_file

        from adaptkit.api.models import meta_model
        from adaptkit.api.nn import resolve_targets

        if not request.adapters:
            raise AdaptkitError("export --dense-delta needs at least one --adapter")
        saved = sorted({m for a in request.adapters for m in a.adapter.saved})
        if saved:
            raise AdaptkitError(
                f"{saved[0]} is saved whole, not as an update; a dense ΔW cannot carry it",
                hint="export it with --merged",
            )
        # Every target must exist in the base with the adapter's shape: a ΔW for another model
        # would be written without complaint otherwise.
        model = meta_model(request.model_dir)
        if model is None:
            raise AdaptkitError("transformers does not know this model type; its targets cannot be checked")
        for a in request.adapters:
            resolve_targets(model, a.adapter)

        choice = request.options["delta_dtype"]
        dtype = getattr(torch, choice)
        tensors: dict[str, torch.Tensor] = {}
        norms: dict[str, float] = {}
        # One target at a time: the peak is the written tensors plus one float64 ΔW.
        for target in sorted({t for a in request.adapters for t in a.adapter.targets}):
            delta = sum(
                a.weight * a.adapter.targets[target].delta(torch.float64)
                for a in request.adapters
                if target in a.adapter.targets
            )
            norms[target] = float(delta.norm())
            tensors[target] = delta.to(dtype).contiguous()
        metadata = {"format": "adaptkit-dense-delta", "orientation": "out x in", "dtype": choice}
        save_file(tensors, request.out_dir / FILE, metadata=metadata)
        log(f"wrote ΔW for {len(tensors)} targets to {request.output / FILE} ({choice})")
        return {
            "file": FILE,
            "delta_dtype": choice,
            "targets": len(tensors),
            "bytes": (request.out_dir / FILE).stat().st_size,
            "frobenius_norm": norms,
        }
