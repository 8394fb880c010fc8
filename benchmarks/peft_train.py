"""What a PEFT user runs instead of ``adaptkit train``: the peer side of ``bench_realsize``.

    python -m benchmarks.peft_train --mode qlora|lora --model DIR --data JSONL --steps N
        --rank R --alpha A --lr LR --targets q_proj,... --seed S

``qlora``: transformers ``BitsAndBytesConfig(load_in_4bit, nf4, double quant)`` quantizing while
loading, PEFT's ``prepare_model_for_kbit_training``, bitsandbytes AdamW (paged on CUDA).
``lora``: the base in bf16, ``torch.optim.AdamW``. Both start from the same LoRA factors adaptkit
initialises for the same seed (A Kaiming-uniform in module order after ``manual_seed``, B zero),
take the same records in the same order, and print one JSON line: losses and step times.
"""

from __future__ import annotations

import argparse
import json
import math
import time

import torch


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--mode", choices=["qlora", "lora"], required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--rank", type=int, default=16)
    ap.add_argument("--alpha", type=float, default=32)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--targets", default="q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    from adaptkit.training import step_indices

    t0 = time.perf_counter()
    cuda = torch.cuda.is_available()
    device = "cuda" if cuda else "cpu"
    if args.mode == "qlora":
        quant = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.bfloat16 if cuda else torch.float32,
        )
        model = AutoModelForCausalLM.from_pretrained(
            args.model, quantization_config=quant, device_map={"": device}, dtype=torch.bfloat16
        )
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    else:
        model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.bfloat16).to(device)
    targets = args.targets.split(",")
    model = get_peft_model(model, LoraConfig(r=args.rank, lora_alpha=args.alpha, target_modules=targets))
    # adaptkit's initial factors for the same seed: A Kaiming-uniform(a=√5) in module order.
    torch.manual_seed(args.seed)
    with torch.no_grad():
        for module in model.base_model.model.modules():
            if hasattr(module, "lora_A") and "default" in getattr(module, "lora_A", {}):
                a = module.lora_A["default"].weight
                fresh = torch.empty(a.shape, dtype=torch.float32)
                torch.nn.init.kaiming_uniform_(fresh, a=math.sqrt(5))
                a.copy_(fresh)
                module.lora_B["default"].weight.zero_()
    params = [p for p in model.parameters() if p.requires_grad]
    if args.mode == "qlora":
        import bitsandbytes as bnb

        cls = bnb.optim.PagedAdamW if cuda else bnb.optim.AdamW
        opt = cls(params, lr=args.lr, weight_decay=0.0)
    else:
        opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.0)
    with open(args.data) as fh:
        records = [json.loads(line)["input_ids"] for line in fh]
    order = step_indices(len(records), args.batch, args.steps, args.seed)
    model.train()
    losses, times = [], []
    for indices in order:
        t = time.perf_counter()
        ids = torch.tensor([records[i] for i in indices], device=device)
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(float(loss))
        times.append(time.perf_counter() - t)
    peak_cuda = torch.cuda.max_memory_allocated() if cuda else None
    print(
        json.dumps(
            {
                "losses": losses,
                "step_s": times,
                "seconds": time.perf_counter() - t0,
                "peak_cuda_bytes": peak_cuda,
            }
        )
    )


if __name__ == "__main__":
    main()
