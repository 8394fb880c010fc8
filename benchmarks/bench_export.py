"""Inference latency: ORT merged vs ORT base vs PyTorch (PEFT unmerged, merged), one process.

A Llama-shaped model (built from a config, random weights) with a rank-16 adapter on every
linear layer but the head. The merged export should cost what the base costs (goal: ratio
<= 1.02) while PEFT's unmerged adapter pays for its extra small matmuls. Batches 1 and 8,
sequence 128; ORT sessions are timed interleaved (medians), PyTorch separately.

    python -m benchmarks.bench_export            # hidden 512, 4 layers
    python -m benchmarks.bench_export --quick
"""

from __future__ import annotations

import copy
import tempfile
from pathlib import Path

import torch

from benchmarks.common import emit, parser, run_info


def torch_ms(v, model, ids, mask):
    return v.median_latencies({"x": lambda: v.torch_logits(model, ids, mask)}, budget_s=4)["x"]


def main(argv=None):
    from peft import LoraConfig, get_peft_model

    from adaptkit import nn as lora
    from adaptkit.nn.baking import bake_adapter
    from adaptkit_onnx import parity as v
    from adaptkit_onnx.logits.graph import export_causal_lm
    from benchmarks.bench_train import build, copy_factors

    args = parser(__doc__).parse_args(argv)
    hidden, layers, vocab = (256, 2, 2048) if args.quick else (512, 4, 8192)
    base = build(hidden, layers, vocab).eval()
    tuned = copy.deepcopy(base)
    lora.attach(tuned, lora.LoraSettings(targets="all-linear", rank=16, alpha=32))
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for layer in lora.lora_layers(tuned).values():
            layer.lora_B.copy_(torch.randn(layer.lora_B.shape, generator=g) * 0.01)
    adapter = lora.extract(tuned)
    peft = get_peft_model(
        copy.deepcopy(base), LoraConfig(r=16, lora_alpha=32, target_modules="all-linear")
    ).eval()
    copy_factors(peft, {name: (pair.A, pair.B) for name, pair in adapter.targets.items()})
    merged = copy.deepcopy(base)
    bake_adapter(merged, adapter)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        export_causal_lm(copy.deepcopy(merged), Path(tmp) / "merged.onnx")
        export_causal_lm(copy.deepcopy(base), Path(tmp) / "base.onnx")
        s_merged, s_base = v.session(Path(tmp) / "merged.onnx"), v.session(Path(tmp) / "base.onnx")
        for batch in (1, 8):
            ids = torch.randint(0, vocab, (batch, 128), generator=g)
            mask = torch.ones_like(ids)
            ort = v.median_latencies(
                {
                    "ort_merged": lambda ids=ids, mask=mask: v.ort_logits(s_merged, ids, mask),
                    "ort_base": lambda ids=ids, mask=mask: v.ort_logits(s_base, ids, mask),
                },
                budget_s=4,
            )
            pt_peft = v.median_latencies(
                {"x": lambda ids=ids, mask=mask: v.torch_logits(peft, ids, mask)}, budget_s=4
            )["x"]
            pt_merged = v.median_latencies(
                {"x": lambda ids=ids, mask=mask: v.torch_logits(merged, ids, mask)}, budget_s=4
            )["x"]
            rows.append(
                {
                    "batch": batch,
                    "seq": 128,
                    "ort_merged_ms": round(1e3 * ort["ort_merged"], 3),
                    "ort_base_ms": round(1e3 * ort["ort_base"], 3),
                    "pytorch_peft_unmerged_ms": round(1e3 * pt_peft, 3),
                    "pytorch_merged_ms": round(1e3 * pt_merged, 3),
                    "ort_merged_over_base": round(ort["ort_merged"] / ort["ort_base"], 3),
                    "peft_unmerged_over_ort_merged": round(pt_peft / ort["ort_merged"], 2),
                }
            )
    emit(
        "export",
        {
            **run_info(args.quick, "adaptkit", "peft", "torch", "onnxruntime-gpu", "onnxruntime"),
            "model": {"hidden": hidden, "layers": layers, "vocab": vocab},
            "rank": 16,
            "rows": rows,
        },
        args.json,
    )


if __name__ == "__main__":
    main()
