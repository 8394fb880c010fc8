#!/usr/bin/env bash
# One command on a CUDA machine: qlora vs PEFT + bitsandbytes QLoRA (BitsAndBytesConfig) on
# Llama-shaped random models of 1.1B and 7B parameters, each written once to the cache in bf16
# shards by the script (7B: 13.5 GB of disk, about 2 minutes to write). Whole processes side by
# side; records peak CUDA memory (max allocated), step time and losses to
# benchmarks/results/gpu-realsize-<shape>.json. Run from the repository root after installing
# adaptkit with its test extra. The first shape alone takes a few minutes.
#
# With two GPUs or more it adds the two-process FSDP row: qlora on one GPU against
# `torchrun --nproc_per_node 2 -m adaptkit train --shard` over two (the same global batch), each
# process's peak CUDA memory, step time and losses, to
# benchmarks/results/gpu-shard-qlora-<shape>.json.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p benchmarks/results
for shape in tinyllama-1.1b llama-7b; do
  python -m benchmarks.bench_realsize --device cuda --shape "$shape" \
    --json "benchmarks/results/gpu-realsize-$shape.json" | tail -n 30
done
gpus=$(python -c 'import torch; print(torch.cuda.device_count())')
if [ "$gpus" -ge 2 ]; then
  for shape in tinyllama-1.1b llama-7b; do
    python -m benchmarks.bench_shard --device cuda --backend qlora --shape "$shape" \
      --json "benchmarks/results/gpu-shard-qlora-$shape.json" | tail -n 30
  done
else
  echo "skipped the --shard row: it needs 2 GPUs, this machine has $gpus" >&2
fi
