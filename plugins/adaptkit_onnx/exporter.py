"""The ``onnx`` exporter: merged graph + parity report, or LoRA-input graph + ORT adapters."""

from __future__ import annotations

import copy
import json
import math
import shutil
from pathlib import Path
from typing import Any, ClassVar

from adaptkit.errors import AdaptkitError

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
DEFAULT_ATOL = {"float32": 1e-4, "float16": 5e-2}


class OnnxExporter:
    name = "onnx"
    description = "pre-merged ONNX verified with onnxruntime; or LoRA inputs + .onnx_adapter files"
    requires: ClassVar[dict[str, str]] = {
        "onnx": "onnx",
        "onnxscript": "onnxscript",
        "onnxruntime": "onnxruntime-gpu",
        "torch": "torch",
    }

    def export(self, request: Any, log: Any) -> dict[str, Any]:
        import torch

        from adaptkit.exporting import combined, may_replace
        from adaptkit.io.atomic import atomic_directory
        from adaptkit.io.models import load_causal_lm

        o = request.options
        dtype = o.get("dtype") or "float32"
        if dtype not in DEFAULT_ATOL:
            raise AdaptkitError(f"unknown dtype {dtype!r}; valid: float32, float16", key="--dtype")
        atol = float(DEFAULT_ATOL[dtype] if o.get("atol") is None else o["atol"])
        if not (math.isfinite(atol) and atol > 0):
            # NaN would make every comparison false: the parity check would pass anything.
            raise AdaptkitError(f"--atol must be a positive finite number, got {atol!r}", key="--atol")
        verify = o.get("verify", True)
        # Adapters merge in the dtype the base loads in: float32 unless asked (a bf16 merge would
        # round small updates away before the graph is even built).
        base, tokenizer = load_causal_lm(str(request.model), dtype=o.get("base_dtype") or "fp32")
        torch_dtype = torch.float16 if dtype == "float16" else torch.float32
        report: dict[str, Any] = {
            "exporter": "onnx",
            "model": request.model,
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
                        external_data=o.get("external_data", "auto"),
                    )
                )
            else:
                report.update(
                    self._merged(base, combined(request.adapters), tmp, torch_dtype, o, atol, verify)
                )
            _copy_side_files(request.model, tokenizer, base, tmp)
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
        import tempfile

        import torch

        from adaptkit import nn as lora
        from adaptkit.nn.baking import bake_adapter
        from adaptkit_onnx import verify as v
        from adaptkit_onnx.graph import export_causal_lm

        merged = copy.deepcopy(base)
        if adapter is not None:
            bake_adapter(merged, adapter)
        merged = merged.to(torch_dtype)
        info = export_causal_lm(
            merged,
            out / "model.onnx",
            opset=o.get("opset"),
            external_data=o.get("external_data", "auto"),
        )
        result: dict[str, Any] = {"graph": info}
        if not verify:
            return result
        reference = copy.deepcopy(base)  # PyTorch with the adapters applied *unmerged*
        if adapter is not None:
            lora.load(reference, adapter)
        sess = v.session(out / "model.onnx")
        vocab = base.get_input_embeddings().num_embeddings
        parity, effect = [], 0.0
        for ids, mask in v.probes(vocab):
            ref = v.torch_logits(reference, ids, mask)
            parity.append({"shape": list(ids.shape), **v.compare(v.ort_logits(sess, ids, mask), ref, mask)})
            effect = max(effect, v.compare(v.torch_logits(base, ids, mask), ref, mask)["max_abs"])
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
        # Latency: ORT merged vs ORT base (exported to a scratch folder) vs PyTorch unmerged.
        ids = torch.randint(0, vocab, (1, 32), generator=torch.Generator().manual_seed(1))
        mask = torch.ones_like(ids)
        with tempfile.TemporaryDirectory() as scratch:
            export_causal_lm(
                copy.deepcopy(base).to(torch_dtype),
                Path(scratch) / "base.onnx",
                opset=o.get("opset"),
            )
            base_sess = v.session(Path(scratch) / "base.onnx")
            times = v.median_latencies(
                {
                    "ort_merged_s": lambda: v.ort_logits(sess, ids, mask),
                    "ort_base_s": lambda: v.ort_logits(base_sess, ids, mask),
                }
            )
        # Timed apart: PyTorch's OpenMP threads keep spinning after a call and would slow
        # whichever ORT session ran next.
        times.update(v.median_latencies({"pytorch_unmerged_s": lambda: v.torch_logits(reference, ids, mask)}))
        lat = {
            "input_shape": list(ids.shape),
            **times,
            "ort_merged_over_base": times["ort_merged_s"] / times["ort_base_s"],
        }
        result["latency"] = lat
        return result


def _copy_side_files(model_spec: str, tokenizer: Any, base: Any, out: Path) -> None:
    from adaptkit.io.models import side_file

    folder = Path(model_spec)
    if folder.is_dir():
        for name in _COPY:
            if (path := side_file(folder, name)) is not None:
                shutil.copy2(path, out / name)
        return
    base.config.to_json_file(out / "config.json")
    if tokenizer is not None:
        tokenizer.save_pretrained(out)


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
            f"ORT base {lat['ort_base_s'] * 1e3:.2f} ms (x{lat['ort_merged_over_base']:.2f}), "
            f"PyTorch unmerged {lat['pytorch_unmerged_s'] * 1e3:.2f} ms"
        )
