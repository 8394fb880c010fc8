#!/usr/bin/env bash
# One command on a CUDA machine (< 10 minutes): qlora vs lora vs PEFT+bitsandbytes QLoRA on a
# ~1.1B-parameter Llama-shaped model. Prints one JSON line per variant and writes them to
# benchmarks/results/gpu_qlora.jsonl. Run from the repository root after installing adaptkit.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p benchmarks/results
out=benchmarks/results/gpu_qlora.jsonl
: > "$out"
for variant in qlora lora peft-qlora; do
  python -m benchmarks.gpu_qlora --variant "$variant" | tail -n 1 | tee -a "$out"
done
