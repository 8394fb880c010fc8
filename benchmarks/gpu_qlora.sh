#!/usr/bin/env bash
# One command on a CUDA machine: qlora vs PEFT + bitsandbytes QLoRA (BitsAndBytesConfig) on
# Llama-shaped random models of 1.1B and 7B parameters, each written once to the cache in bf16
# shards by the script (7B: 13.5 GB of disk, about 2 minutes to write). Whole processes side by
# side; records peak CUDA memory (max allocated), step time and losses to
# benchmarks/results/gpu-realsize-<shape>.json. Run from the repository root after installing
# adaptkit with its test extra. The first shape alone takes a few minutes.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p benchmarks/results
for shape in tinyllama-1.1b llama-7b; do
  python -m benchmarks.bench_realsize --device cuda --shape "$shape" \
    --json "benchmarks/results/gpu-realsize-$shape.json" | tail -n 30
done
