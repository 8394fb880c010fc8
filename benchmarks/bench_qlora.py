"""adaptkit's ``qlora`` backend vs PEFT + bitsandbytes QLoRA, on CPU, in one process.

Both quantize the same Llama-shaped base to NF4 with double quantization (blocksize 64;
PEFT through transformers' ``BitsAndBytesConfig``), attach rank-16 LoRA to every linear
layer but the head with identical initial factors, and train with the same bitsandbytes
AdamW on the same batches; steps alternate. Reports the step-time and peak-RSS ratios, the
4-bit size, and the loss difference over the first steps.

    python -m benchmarks.bench_qlora            # hidden 512, 4 layers
    python -m benchmarks.bench_qlora --quick
"""

from __future__ import annotations

import argparse
import copy
import statistics
import tempfile
import time

import torch

from benchmarks.common import emit, machine, mib, peak_rss, release_memory, versions


def main(argv=None):
    import bitsandbytes as bnb
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    from adaptkit import nn as lora
    from adaptkit.nn.settings import LoraSettings
    from adaptkit.training.settings import TrainConfig
    from adaptkit_qlora.backend import QloraBackend
    from benchmarks.bench_train import build, step

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--json", help="also write the results to this file")
    args = ap.parse_args(argv)
    hidden, layers, batch, seq, steps = (256, 2, 4, 64, 6) if args.quick else (512, 4, 4, 128, 12)
    vocab, rank, alpha, lr = 2048, 16, 32, 1e-3
    base = build(hidden, layers, vocab)
    with tempfile.TemporaryDirectory() as tmp:
        base.save_pretrained(tmp, safe_serialization=True)
        qcfg = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.float32,
        )
        peft_base = AutoModelForCausalLM.from_pretrained(tmp, quantization_config=qcfg, device_map="cpu")
    ours = copy.deepcopy(base)
    cfg = TrainConfig(backend="qlora", lr=lr, lora=LoraSettings(targets="all-linear", rank=rank, alpha=alpha))
    backend = QloraBackend()
    params = backend.prepare(ours, cfg.lora, cfg, lambda m: None)
    peft = get_peft_model(peft_base, LoraConfig(r=rank, lora_alpha=alpha, target_modules="all-linear"))
    with torch.no_grad():
        for name, layer in lora.lora_layers(ours).items():
            target = peft.base_model.model.get_submodule(name)
            target.lora_A["default"].weight.copy_(layer.lora_A)
            target.lora_B["default"].weight.copy_(layer.lora_B)
    opt_ours = bnb.optim.AdamW(params, lr=lr)
    opt_peft = bnb.optim.AdamW([p for p in peft.parameters() if p.requires_grad], lr=lr)
    del base
    release_memory()
    g = torch.Generator().manual_seed(1)
    batches = [torch.randint(0, vocab, (batch, seq), generator=g) for _ in range(steps)]
    runs = {"adaptkit": (ours.train(), opt_ours), "peft": (peft.train(), opt_peft)}
    losses = {k: [] for k in runs}
    times = {k: [] for k in runs}
    for name, (model, opt) in runs.items():
        losses[name].append(step(model, opt, batches[0]))
    peaks: dict[str, int] = {}
    for order in (("adaptkit", "peft"), ("peft", "adaptkit")):  # see bench_train
        for name in order:
            model, opt = runs[name]
            with peak_rss() as peak:
                step(model, opt, batches[1])
            peaks[name] = min(peaks.get(name, peak.bytes), peak.bytes)
    for ids in batches[1:]:
        for name, (model, opt) in runs.items():
            t = time.perf_counter()
            losses[name].append(step(model, opt, ids))
            times[name].append(time.perf_counter() - t)
    med = {k: statistics.median(v) for k, v in times.items()}
    report = backend.memory_report(ours)
    emit(
        "qlora",
        {
            "mode": "quick" if args.quick else "full",
            "machine": machine(),
            "versions": versions("adaptkit", "peft", "torch", "bitsandbytes", "transformers"),
            "model": {"hidden": hidden, "layers": layers, "vocab": vocab},
            "batch": [batch, seq],
            "rank": rank,
            "step_s": {k: round(v, 4) for k, v in med.items()},
            "step_time_ratio_adaptkit_over_peft": round(med["adaptkit"] / med["peft"], 3),
            "peak_extra_rss_mib": {k: round(mib(v), 1) for k, v in peaks.items()},
            "peak_rss_ratio_adaptkit_over_peft": round(peaks["adaptkit"] / max(peaks["peft"], 1), 3),
            "bits_per_quantized_param": round(report["bits_per_quantized_param"], 4),
            "quantized_mib": round(mib(report["quantized_bytes"]), 2),
            "bf16_equivalent_mib": round(mib(report["bf16_equivalent_bytes"]), 2),
            "max_loss_difference_first_5_steps": max(
                abs(a - b) for a, b in zip(losses["adaptkit"][:5], losses["peft"][:5], strict=True)
            ),
            "losses": {k: [round(x, 5) for x in v] for k, v in losses.items()},
        },
        args.json,
    )


if __name__ == "__main__":
    main()
