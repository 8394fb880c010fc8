"""LoRA+ (the third-party example backend) vs the builtin ``lora`` backend on the demo task.

Both train the demo's skill A (``upper``) and skill B (``digits``) adapters on the built-in
demo base (pre-trained once, cached) through the same trainer: same data, seed, initial
factors, step budget, rank, alpha, schedule and base learning rate. The only difference is
LoRA+'s ``lr_B = ratio · lr_A`` (ratio 16). Reported per learning rate and skill: the training
loss (mean of the last 20 steps), the held-out evaluation loss, and held-out exact-match
accuracy.

    python -m benchmarks.bench_loraplus            # 200 steps, lr 3e-4, 1e-3 and 3e-3
    python -m benchmarks.bench_loraplus --quick    # 60 steps, lr 1e-3
"""

from __future__ import annotations

import copy
import statistics
import sys
import time
from pathlib import Path

from benchmarks.common import emit, parser, run_info

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "loraplus_backend"


def main(argv=None):
    args = parser(__doc__).parse_args(argv)
    steps, lrs = (60, [1e-3]) if args.quick else (200, [3e-4, 1e-3, 3e-3])

    sys.path.insert(0, str(EXAMPLE))  # the example package, installed or not
    from adaptkit_loraplus import LoraPlusBackend

    from adaptkit.demo import base_model, skills
    from adaptkit.nn.settings import LoraSettings
    from adaptkit.training import evaluate_loss
    from adaptkit.training.loop import run_training
    from adaptkit.training.settings import TrainConfig
    from adaptkit_lora import LoraBackend

    base_model.build(print, False)
    base, tokenizer = base_model.load(print, False)
    rows = []
    for lr in lrs:
        for skill in ("upper", "digits"):
            others = [skills.DIGITS] if skill == "upper" else [skills.LETTERS, skills.LETTERS.upper()]
            pairs = skills.examples(skill, 3000, seed=1) + skills.identity_examples(others, 1500, seed=2)
            records = skills.training_records(tokenizer, pairs)
            held_out = skills.examples(skill, 100, seed=1000)
            held_records = skills.training_records(tokenizer, held_out)
            row = {"lr": lr, "skill": skill, "steps": steps}
            for backend in (LoraBackend(), LoraPlusBackend()):
                cfg = TrainConfig(
                    backend=backend.name,
                    lora=LoraSettings(targets="all-linear", rank=8, alpha=16),
                    lr=lr,
                    lr_schedule="cosine",
                    warmup_steps=10,
                    max_steps=steps,
                    batch_size=32,
                    seq_len=32,
                    seed=0,
                    options={"ratio": 16} if backend.name == "loraplus" else {},
                )
                model = copy.deepcopy(base)
                t = time.perf_counter()
                result = run_training(
                    cfg,
                    model=model,
                    tokenizer=tokenizer,
                    records=records,
                    backend=backend,
                    progress=False,
                    log=lambda m: None,
                )
                seconds = time.perf_counter() - t
                model.eval()
                row[backend.name] = {
                    "train_loss_last20": round(statistics.fmean(result.losses[-20:]), 4),
                    "held_out_loss": round(evaluate_loss(model, held_records, 0, 32, model.device), 4),
                    "held_out_accuracy": round(skills.exact_match(model, tokenizer, held_out), 3),
                    "seconds": round(seconds, 1),
                }
                print(lr, skill, backend.name, row[backend.name], flush=True)
            rows.append(row)
    emit(
        "loraplus",
        {
            **run_info(args.quick, "torch", "transformers"),
            "ratio": 16,
            "rank": 8,
            "rows": rows,
        },
        args.json,
    )


if __name__ == "__main__":
    main()
