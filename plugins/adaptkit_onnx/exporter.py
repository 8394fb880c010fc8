"""The ``onnx`` exporter: which graph, and the logits-only graph itself.

``--graph auto`` (the default) writes the generation graph (:mod:`adaptkit_onnx.generation`)
when the model builder supports the model, and otherwise the
logits-only graph (``input_ids, attention_mask → logits``, torch.onnx dynamo), saying why.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from typing import Any, ClassVar

from adaptkit.api import AdaptkitError

_COPY = (
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "tokenizer.model",
    "vocab.json",
    "merges.txt",
)

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
        from adaptkit_onnx.graph import check_opset
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
        import torch

        from adaptkit.api.export import combined, may_replace
        from adaptkit.api.files import atomic_directory
        from adaptkit.api.models import load_causal_lm
        from adaptkit_onnx.parity import TOLERANCES

        o = request.options
        if precision == "int4":
            raise AdaptkitError(f"int4 needs the generation graph, and {reason or 'it was not chosen'}")
        dtype = o.get("dtype") or {"fp16": "float16"}.get(precision or "", "float32")
        if ("logits", dtype) not in TOLERANCES:
            raise AdaptkitError(f"unknown dtype {dtype!r}; valid: float32, float16", key="--dtype")
        atol = _positive(o.get("atol"), TOLERANCES["logits", dtype].atol, "--atol")
        verify = o.get("verify", True)
        # Adapters merge in the dtype the base loads in: float32 unless asked (a bf16 merge would
        # round small updates away before the graph is even built).
        base, tokenizer = load_causal_lm(folder, dtype=o.get("base_dtype") or "fp32")
        torch_dtype = torch.float16 if dtype == "float16" else torch.float32
        report: dict[str, Any] = {
            "exporter": "onnx",
            "model": request.model,
            "graph": "logits",
            **({"fallback_reason": reason} if reason else {}),
            "dtype": dtype,
            "atol": atol,
            "adapters": [
                {"name": a.name, "weight": a.weight, "source": str(a.source)} for a in request.adapters
            ],
        }
        with atomic_directory(request.output, overwrite=may_replace(request.output, request.force)) as tmp:
            if o.get("lora_inputs"):
                from adaptkit_onnx.lora_inputs import export_with_lora_inputs

                report.update(
                    export_with_lora_inputs(
                        base,
                        request.adapters,
                        tmp,
                        torch_dtype=torch_dtype,
                        opset=o.get("opset"),
                        atol=atol,
                        verify=verify,
                        external_data=o.get("external_data") or "auto",
                    )
                )
            else:
                report.update(
                    self._merged(base, combined(request.adapters), tmp, torch_dtype, o, atol, verify)
                )
            _copy_side_files(folder, tokenizer, base, tmp)
            (tmp / "export-report.json").write_text(json.dumps(report, indent=2) + "\n")
        _log_table(report, log)
        return report

    def _merged(
        self,
        base: Any,
        adapter: Any,
        out: Path,
        torch_dtype: Any,
        o: dict[str, Any],
        atol: float,
        verify: bool,
    ) -> dict[str, Any]:
        """Reference first, then bake in place: one copy of the model, whatever the checks.

        The probes' base logits and the unmerged reference (adapters attached as LoRA layers)
        are computed in float32 and kept; the LoRA layers are then merged into their weights
        and removed, and that same model is cast and exported.
        """
        import torch

        from adaptkit.api import nn as lora
        from adaptkit.api.nn import bake_adapter
        from adaptkit_onnx import parity as v
        from adaptkit_onnx.graph import export_causal_lm

        vocab = base.get_input_embeddings().num_embeddings
        ids = torch.randint(0, vocab, (1, 32), generator=torch.Generator().manual_seed(1))
        mask = torch.ones_like(ids)
        result: dict[str, Any] = {}
        references, effect, times = [], 0.0, {}
        if verify:
            base_logits = [v.torch_logits(base, i, m) for i, m in v.probes(vocab)]
            if adapter is not None:
                v.attach_reference(base, adapter, dtype="fp32")
            for (i, m), plain in zip(v.probes(vocab), base_logits, strict=True):
                ref = v.torch_logits(base, i, m)
                references.append((i, m, ref))
                effect = max(effect, v.compare(plain, ref, m)["max_abs"])
            times = v.median_latencies({"pytorch_unmerged_s": lambda: v.torch_logits(base, ids, mask)})
            if adapter is not None:
                lora.detach(base, merge_first=True)
        elif adapter is not None:
            bake_adapter(base, adapter)
        base.to(torch_dtype)
        info = export_causal_lm(
            base, out / "model.onnx", opset=o.get("opset"), external_data=o.get("external_data") or "auto"
        )
        result["files"] = info
        if not verify:
            return result
        sess = v.session(out / "model.onnx")
        parity = [
            {"shape": list(i.shape), **v.compare(v.ort_logits(sess, i, m), ref, m)}
            for i, m, ref in references
        ]
        result["parity"] = parity
        result["adapter_effect_max_abs"] = effect
        v.check_logits(parity, atol, hint="raise --atol if this precision is expected")
        if adapter is not None:
            v.check_effect(effect, atol)  # the baked graph's effect floor is its own atol
        times.update(v.median_latencies({"ort_merged_s": lambda: v.ort_logits(sess, ids, mask)}))
        result["latency"] = {
            "input_shape": list(ids.shape),
            **times,
            "pytorch_unmerged_over_ort_merged": times["pytorch_unmerged_s"] / times["ort_merged_s"],
        }
        return result


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


def _copy_side_files(folder: Path, tokenizer: Any, base: Any, out: Path) -> None:
    from adaptkit.api.models import side_file

    for name in _COPY:
        if (path := side_file(folder, name)) is not None:
            shutil.copy2(path, out / name)
    if not (out / "config.json").exists():
        base.config.to_json_file(out / "config.json")


def _log_table(report: dict[str, Any], log: Any) -> None:
    for item in report.get("parity", []):
        log(
            f"parity {item.get('adapter', 'merged'):>12} {item['shape']!s:>8}: "
            f"max abs {item['max_abs']:.2e}, max rel {item['max_rel']:.2e}"
        )
    lat = report.get("latency")
    if lat:
        log(
            f"latency {lat['input_shape']}: ORT merged {lat['ort_merged_s'] * 1e3:.2f} ms, "
            f"PyTorch unmerged {lat['pytorch_unmerged_s'] * 1e3:.2f} ms "
            f"(x{lat['pytorch_unmerged_over_ort_merged']:.1f})"
        )
