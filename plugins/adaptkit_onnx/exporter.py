"""The ``onnx`` exporter: its options, and which graph it writes.

``--graph auto`` (the default) writes the generation graph (:mod:`adaptkit_onnx.generation`)
when the model builder supports the model, and otherwise the logits-only graph
(:mod:`adaptkit_onnx.logits`), saying why. Every option the chosen path would ignore is refused
before anything loads.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, ClassVar

from adaptkit.api import AdaptkitError

_MERGED_ONLY = "it chooses the base --merged adds ΔW to (an --onnx export bakes into the original weights)"
_NO_PARITY = "--no-verify skips the parity check this option sets"
#: Options of ``adaptkit export`` that a graph never uses, and why (refused when given).
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
        "min_agreement": "it is checked on logits against --atol; --min-agreement checks the fp16/int4 "
        "generation graph",
        "merge_base": _MERGED_ONLY,
    },
}


def unused_options(graph: str, precision: str | None, options: dict[str, Any]) -> dict[str, str]:
    """``option -> why it does nothing`` for the path an export takes: the graph's own table
    (:data:`UNUSED_BY_GRAPH`) plus what the precision and ``--no-verify`` leave unused."""
    unused = dict(UNUSED_BY_GRAPH[graph])
    if not options.get("verify", True):
        unused.update(atol=_NO_PARITY, min_agreement=_NO_PARITY)
    elif graph == "generation" and (precision or "fp32") == "fp32":
        unused["min_agreement"] = (
            "an fp32 graph must reproduce PyTorch's greedy tokens and logits within --atol; "
            "--min-agreement is for fp16/int4"
        )
    elif graph == "generation":
        unused["atol"] = f"a {precision} graph is checked on top-1 agreement (--min-agreement), not on --atol"
    if graph == "logits" and options.get("dtype") is not None:
        unused["precision"] = "--dtype sets its weights' dtype; give --dtype or --precision, not both"
    return unused


class OnnxExporter:
    name = "onnx"
    description = (
        "generation-ready ONNX (KV cache; fp32/fp16/int4) for ONNX Runtime GenAI, verified on greedy "
        "generation; logits-only graph where the builder cannot go; LoRA inputs + .onnx_adapter files"
    )
    requires: ClassVar[dict[str, str]] = {
        "onnx": "onnx",
        "onnxscript": "onnxscript",
        "onnxruntime": "onnxruntime-gpu",
        "onnxruntime_genai": "onnxruntime-genai-cuda",
        "torch": "torch",
    }

    def export(self, request: Any, log: Any) -> dict[str, Any]:
        from adaptkit.api.export import may_replace, refuse_unused_options
        from adaptkit.api.files import atomic_directory, sweep_stale_scratch
        from adaptkit.api.models import load_config, resolve_model
        from adaptkit_onnx.generation.builder import DEVICES, PRECISIONS, genai_unsupported
        from adaptkit_onnx.logits.graph import check_opset
        from adaptkit_onnx.parity import TOLERANCES

        o = request.options
        graph = o.get("graph") or "auto"
        if graph not in ("auto", "generation", "logits"):
            raise AdaptkitError(f"unknown graph {graph!r}; valid: auto, generation, logits", key="--graph")
        precision = o.get("precision")
        if precision is not None and precision not in PRECISIONS:
            raise AdaptkitError(f"unknown precision {precision!r}; valid: {', '.join(PRECISIONS)}")
        device = o.get("device") or "cpu"
        if device not in DEVICES:
            raise AdaptkitError(f"unknown device {device!r}; valid: {', '.join(DEVICES)}", key="--device")
        folder = resolve_model(request.model)
        # A killed export's model-sized scratch folder beside the output goes with the next one.
        sweep_stale_scratch(Path(request.output).parent)
        config = load_config(folder)
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
        refuse_unused_options(o, unused_options(chosen, precision, o), where)
        if chosen == "logits":
            check_opset(o.get("opset"))
            if graph == "auto":
                log(f"generation graph unavailable ({reason}); writing the logits-only graph")
            return self._logits_only(request, folder, precision, reason, log)

        precision = precision or "fp32"
        default = TOLERANCES["generation", precision]
        options = {
            "precision": precision,
            "device": device,
            "verify": o.get("verify", True),
            "atol": _positive(o.get("atol"), default.atol, "--atol"),
            "min_agreement": _fraction(o.get("min_agreement"), default.min_agreement),
        }
        report: dict[str, Any] = {
            "exporter": "onnx",
            "model": request.model,
            "adapters": [
                {"name": a.name, "weight": a.weight, "source": str(a.source)} for a in request.adapters
            ],
        }
        with atomic_directory(request.output, overwrite=may_replace(request.output, request.force)) as tmp:
            if o.get("lora_inputs"):
                from adaptkit_onnx.generation.switchable import export_switchable

                report.update(export_switchable(folder, config, request.adapters, tmp, options, log))
            else:
                from adaptkit_onnx.generation.baked import export_baked

                report.update(export_baked(folder, config, request.adapters, tmp, options, log))
            (tmp / "export-report.json").write_text(json.dumps(report, indent=2) + "\n")
        return report

    def _logits_only(
        self, request: Any, folder: Path, precision: str | None, reason: str | None, log: Any
    ) -> dict[str, Any]:
        from adaptkit_onnx.logits.export import export_logits
        from adaptkit_onnx.parity import TOLERANCES

        o = request.options
        if precision == "int4":
            raise AdaptkitError(f"int4 needs the generation graph, and {reason or 'it was not chosen'}")
        dtype = o.get("dtype") or {"fp16": "float16"}.get(precision or "", "float32")
        if ("logits", dtype) not in TOLERANCES:
            raise AdaptkitError(f"unknown dtype {dtype!r}; valid: float32, float16", key="--dtype")
        atol = _positive(o.get("atol"), TOLERANCES["logits", dtype].atol, "--atol")
        return export_logits(request, folder, dtype, atol, reason, log)


def _positive(value: Any, default: float, key: str) -> float:
    value = float(default if value is None else value)
    if not (math.isfinite(value) and value > 0):
        # NaN would make every comparison false: the parity check would pass anything.
        raise AdaptkitError(f"{key} must be a positive finite number, got {value!r}", key=key)
    return value


def _fraction(value: Any, default: float) -> float:
    value = float(default if value is None else value)
    if not (0.0 <= value <= 1.0):
        raise AdaptkitError(f"--min-agreement must lie in [0, 1], got {value!r}", key="--min-agreement")
    return value
