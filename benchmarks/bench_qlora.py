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

import copy
import tempfile

import torch

from benchmarks.common import emit, mib, parser, release_memory, run_info


def main(argv=None):
    import bitsandbytes as bnb
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    from adaptkit import nn as lora
    from adaptkit.nn.settings import LoraSettings
    from adaptkit.training.settings import TrainConfig
    from adaptkit_qlora.backend import QloraBackend
    from benchmarks.bench_train import build, compared, copy_factors, race

    args = parser(__doc__).parse_args(argv)
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
    copy_factors(peft, {n: (m.lora_A, m.lora_B) for n, m in lora.lora_layers(ours).items()})
    opt_ours = bnb.optim.AdamW(params, lr=lr)
    opt_peft = bnb.optim.AdamW([p for p in peft.parameters() if p.requires_grad], lr=lr)
    del base
    release_memory()
    g = torch.Generator().manual_seed(1)
    batches = [torch.randint(0, vocab, (batch, seq), generator=g) for _ in range(steps)]
    runs = {"adaptkit": (ours.train(), opt_ours), "peft": (peft.train(), opt_peft)}
    losses, times, peaks = race(runs, batches)  # see bench_train
    report = backend.memory_report(ours)
    emit(
        "qlora",
        {
            **run_info(args.quick, "adaptkit", "peft", "torch", "bitsandbytes", "transformers"),
            "model": {"hidden": hidden, "layers": layers, "vocab": vocab},
            "batch": [batch, seq],
            "rank": rank,
            "bits_per_quantized_param": round(report["bits_per_quantized_param"], 4),
            "quantized_mib": round(mib(report["quantized_bytes"]), 2),
            "bf16_equivalent_mib": round(mib(report["bf16_equivalent_bytes"]), 2),
            **compared(losses, times, peaks),
        },
        args.json,
    )


if __name__ == "__main__":
    main()
