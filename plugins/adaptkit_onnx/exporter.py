"""The ``onnx`` exporter: which graph, and the logits-only graph itself.

``--graph auto`` (the default) writes the generation graph (:mod:`adaptkit_onnx.genai_export`,
:mod:`adaptkit_onnx.genai_lora`) when the model builder supports the model, and otherwise the
logits-only graph (``input_ids, attention_mask → logits``, torch.onnx dynamo), saying why.
"""

from __future__ import annotations

import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

from adaptkit.api import AdaptkitError, ExportRequest

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
DEFAULT_ATOL = {"float32": 1e-4, "float16": 5e-2}  # logits-only graph

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
                "enum": ["fp32", "fp16", "int4"],  # adaptkit_onnx.builder.PRECISIONS
                "default": "fp32",
                "description": "generation graph weights: fp32, fp16, or int4 (blockwise, MatMulNBits)",
            },
            "device": {
                "type": "string",
                "enum": ["cpu", "cuda"],  # adaptkit_onnx.builder.DEVICES
                "default": "cpu",
                "description": "generation graph: the execution provider it is built for",
            },
            "min_agreement": {
                "type": ["number", "null"],
                "minimum": 0.0,
                "maximum": 1.0,
                "default": None,
                "description": "fp16/int4 generation graph: refuse below this teacher-forced top-1 "
                "agreement with PyTorch (default 0.9 fp16, 0.6 int4)",
            },
            "opset": {
                "type": ["integer", "null"],
                "minimum": 18,
                "maximum": 40,  # the installed onnx narrows it (graph.check_opset)
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
        from adaptkit_onnx.builder import genai_unsupported
        from adaptkit_onnx.genai_export import DEFAULT_ATOL as DEFAULT_GENAI_ATOL
        from adaptkit_onnx.genai_export import DEFAULT_MIN_AGREEMENT
        from adaptkit_onnx.graph import check_opset

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

        agreement = o["min_agreement"]
        options = {
            "precision": precision,
            "device": o["device"],
            "verify": o["verify"],
            "atol": DEFAULT_GENAI_ATOL if o["atol"] is None else o["atol"],
            "min_agreement": DEFAULT_MIN_AGREEMENT[precision] if agreement is None else agreement,
        }
        folder, tmp = request.model_dir, request.out_dir
        if o["lora_inputs"]:
            from adaptkit_onnx.genai_lora import export_lora_generation

            return export_lora_generation(folder, config, request.adapters, tmp, options, log)
        from adaptkit_onnx.genai_export import export_merged_generation

        return export_merged_generation(folder, config, request.adapters, tmp, options, log)

    def _logits_only(self, request: ExportRequest, reason: str | None, log: Any) -> dict[str, Any]:
        import torch

        from adaptkit.api.export import combined
        from adaptkit.api.models import load_causal_lm

        o, folder, tmp = request.options, request.model_dir, request.out_dir
        if o["precision"] == "int4":
            raise AdaptkitError(f"int4 needs the generation graph, and {reason or 'it was not chosen'}")
        dtype = o["dtype"] if "dtype" in request.given else {"fp16": "float16"}.get(o["precision"], "float32")
        atol = DEFAULT_ATOL[dtype] if o["atol"] is None else o["atol"]
        verify = o["verify"]
        # Adapters merge in the dtype the base loads in: float32 unless asked (a bf16 merge would
        # round small updates away before the graph is even built).
        base, tokenizer = load_causal_lm(folder, dtype=o["base_dtype"])
        torch_dtype = torch.float16 if dtype == "float16" else torch.float32
        report: dict[str, Any] = {
            "graph": "logits",
            **({"fallback_reason": reason} if reason else {}),
            "dtype": dtype,
            "atol": atol,
        }
        if o["lora_inputs"]:
            from adaptkit_onnx.lora_inputs import export_with_lora_inputs

            report.update(
                export_with_lora_inputs(
                    base,
                    request.adapters,
                    tmp,
                    torch_dtype=torch_dtype,
                    opset=o["opset"],
                    atol=atol,
                    verify=verify,
                    external_data=o["external_data"],
                )
            )
        else:
            report.update(self._merged(base, combined(request.adapters), tmp, torch_dtype, o, atol, verify))
        _copy_side_files(folder, tokenizer, base, tmp)
        _log_table(report, log)
        return report

    def _merged(
        self,
        base: Any,
        adapter: Any,
        out: Path,
        torch_dtype: Any,
        o: Mapping[str, Any],
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
        from adaptkit_onnx import verify as v
        from adaptkit_onnx.graph import export_causal_lm

        vocab = base.get_input_embeddings().num_embeddings
        ids = torch.randint(0, vocab, (1, 32), generator=torch.Generator().manual_seed(1))
        mask = torch.ones_like(ids)
        result: dict[str, Any] = {}
        references, effect, times = [], 0.0, {}
        if verify:
            base_logits = [v.torch_logits(base, i, m) for i, m in v.probes(vocab)]
            if adapter is not None:
                lora.load(base, adapter, dtype="fp32")
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
        info = export_causal_lm(base, out / "model.onnx", opset=o["opset"], external_data=o["external_data"])
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
        worst = max(p["max_abs"] for p in parity)
        if worst > atol:
            raise AdaptkitError(
                f"ONNX Runtime output differs from PyTorch by {worst:.3g} > atol {atol:g}; "
                "nothing was written",
                hint="raise --atol if this precision is expected",
            )
        if adapter is not None and effect <= atol:
            raise AdaptkitError(
                f"the adapters do not change the model's output (max |Δlogits| = {effect:.3g}); "
                "nothing was written",
                hint="check the adapter matches this base model",
            )
        times.update(v.median_latencies({"ort_merged_s": lambda: v.ort_logits(sess, ids, mask)}))
        result["latency"] = {
            "input_shape": list(ids.shape),
            **times,
            "pytorch_unmerged_over_ort_merged": times["pytorch_unmerged_s"] / times["ort_merged_s"],
        }
        return result


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
