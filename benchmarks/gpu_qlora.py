"""CUDA only: peak GPU memory and tokens/s of ``qlora`` vs ``lora`` vs PEFT + bitsandbytes on a
~1.1B-parameter Llama-shaped model built from a config (no download). Each variant runs in its
own process (``--variant``) so peak memory is per variant; ``gpu_qlora.sh`` runs all three.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time

import torch


def build():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=32000,
        hidden_size=2048,
        intermediate_size=5632,
        num_hidden_layers=22,
        num_attention_heads=32,
        num_key_value_heads=4,
        max_position_embeddings=2048,
    )
    return LlamaForCausalLM(cfg).to(torch.bfloat16)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--variant", choices=["qlora", "lora", "peft-qlora"], required=True)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=512)
    args = ap.parse_args()
    assert torch.cuda.is_available(), "gpu_qlora needs CUDA"
    torch.cuda.reset_peak_memory_stats()
    model = build()
    n_params = sum(p.numel() for p in model.parameters())
    if args.variant == "peft-qlora":
        from peft import LoraConfig, get_peft_model
        from transformers import AutoModelForCausalLM, BitsAndBytesConfig

        with tempfile.TemporaryDirectory() as tmp:
            model.save_pretrained(tmp, safe_serialization=True)
            del model
            q = BitsAndBytesConfig(
                load_in_4bit=True,
                bnb_4bit_quant_type="nf4",
                bnb_4bit_use_double_quant=True,
                bnb_4bit_compute_dtype=torch.bfloat16,
            )
            model = AutoModelForCausalLM.from_pretrained(tmp, quantization_config=q, device_map="cuda")
        model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, target_modules="all-linear"))
        import bitsandbytes as bnb

        opt = bnb.optim.PagedAdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    else:
        from adaptkit.plugins import get_registry
        from adaptkit.training.settings import LoraSettings, TrainConfig

        backend = get_registry().get("backend", args.variant)
        cfg = TrainConfig(
            backend=args.variant,
            lr=1e-4,
            lora=LoraSettings(targets="all-linear", rank=16, alpha=32, dtype="bf16"),
        )
        model.to("cuda")
        params = backend.prepare(model, cfg.lora, cfg, print)
        opt = backend.optimizer(params, cfg, print)
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    ids = torch.randint(0, 32000, (args.batch, args.seq), device="cuda")
    times = []
    for i in range(args.steps):
        torch.cuda.synchronize()
        t = time.perf_counter()
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        torch.cuda.synchronize()
        if i >= 2:
            times.append(time.perf_counter() - t)
    step = sorted(times)[len(times) // 2]
    print(
        json.dumps(
            {
                "variant": args.variant,
                "params": n_params,
                "peak_gpu_gib": torch.cuda.max_memory_allocated() / 2**30,
                "tokens_per_s": args.batch * args.seq / step,
                "step_s": step,
                "gpu": torch.cuda.get_device_name(),
            }
        )
    )


if __name__ == "__main__":
    main()
