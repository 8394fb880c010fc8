"""Sharded training at real size: ``torchrun --nproc_per_node 2 -m adaptkit train --shard``
(FSDP2) against one process with the same global batch.

The base is the ``realsize`` fixture (:func:`benchmarks.bench_realsize.build`: TinyLlama's
1.1B shape, random weights, bf16, 1 GB shards, built once and cached). Both sides train
``lora`` (or ``qlora``) with rank 16 / alpha 32 on all seven projections on the same
``input_ids`` and seed, ``--eval-records 0``:

- one process, ``--batch-size 2`` (on CPU: all cores' threads);
- two sharded processes, ``--batch-size 1`` each (torchrun gives each one thread).

Each process's peak comes from its own ``--metrics`` log: on CPU the kernel's RSS high-water
mark of that process (``VmHWM``, from exec to the end of training), on CUDA its allocator's
peak. Step time is the median over the steps after the first; the losses of both sides are
compared (the same batches, bf16 rounding apart).

    python -m benchmarks.bench_shard                 # 1.1B on CPU, lora --base-dtype bf16
    python -m benchmarks.bench_shard --quick         # the 0.2B model of the same family
    python -m benchmarks.bench_shard --device cuda --backend qlora --shape llama-7b   # 2+ GPUs
"""

from __future__ import annotations

import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.bench_realsize import SHAPES, TARGETS, build, data
from benchmarks.common import emit, parser, run_info


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def train(
    model: Path,
    data_file: Path,
    *,
    backend: str,
    processes: int,
    batch: int,
    seq: int,
    steps: int,
    extra: list,
) -> dict:
    """One ``adaptkit train`` run (``--shard`` over ``processes`` when more than one): wall
    time, losses, step times and every process's peak from its metrics log."""
    with tempfile.TemporaryDirectory() as tmp:
        metrics = Path(tmp) / "m.jsonl"
        args = [
            "-m", "adaptkit", "train", "--backend", backend, "--model", str(model), "--data", str(data_file),
            "-o", str(Path(tmp) / "a.safetensors"), "--targets", TARGETS, "--rank", "16", "--alpha", "32",
            "--max-steps", str(steps), "--batch-size", str(batch), "--seq-len", str(seq), "--lr", "1e-4",
            "--metrics", str(metrics), "--eval-records", "0", "--json", *extra,
        ]  # fmt: skip
        if processes > 1:
            launcher = ["-m", "torch.distributed.run", "--nproc_per_node", str(processes)]
            args = [*launcher, "--master_port", str(_port()), *args, "--shard"]
        t = time.perf_counter()
        res = subprocess.run(
            [sys.executable, *args], capture_output=True, text=True, stdin=subprocess.DEVNULL
        )
        wall = time.perf_counter() - t
        if res.returncode != 0:
            raise SystemExit(f"failed: {' '.join(args)}\n{res.stderr[-4000:]}")
        lines = [json.loads(x) for x in metrics.read_text().splitlines()]
    steps_ = [x for x in lines if "step" in x]
    peak = lines[-1]["peak_memory"]
    tokens = batch * processes * seq
    return {
        "wall_s": round(wall, 1),
        "losses": [x["loss"] for x in steps_],
        "step_s": round(statistics.median(tokens / x["tokens_per_s"] for x in steps_[1:]), 3),
        "peak_gib_per_process": [
            round(b / 2**30, 3) for b in peak.get("peak_bytes_per_rank", [peak["peak_bytes"]])
        ],
        "peak_measured": peak["peak_measured"],
        "memory_account": lines[0]["memory"],
    }


def compare(
    model: Path, data_file: Path, *, backend: str, batch: int, seq: int, steps: int, extra: list
) -> dict:
    """One process with ``batch`` against two sharded ones with ``batch / 2`` each."""
    one = train(
        model, data_file, backend=backend, processes=1, batch=batch, seq=seq, steps=steps, extra=extra
    )
    two = train(
        model, data_file, backend=backend, processes=2, batch=batch // 2, seq=seq, steps=steps, extra=extra
    )
    for key, r in (("one process", one), ("two sharded", two)):
        print(
            f"{backend} {key}: peak {r['peak_gib_per_process']} GiB, step {r['step_s']} s, "
            f"losses {r['losses']}",
            flush=True,
        )
    single = one["peak_gib_per_process"][0]
    return {
        "one_process": one,
        "sharded_2": two,
        "peak_ratio_per_process": [round(p / single, 3) for p in two["peak_gib_per_process"]],
        "step_time_ratio": round(two["step_s"] / one["step_s"], 3),
        "max_loss_difference": max(abs(a - b) for a, b in zip(one["losses"], two["losses"], strict=True)),
    }


def main(argv=None) -> None:
    ap = parser(__doc__)
    ap.add_argument("--shape", choices=sorted(SHAPES), help="default tinyllama-1.1b (--quick: llama-0.2b)")
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--backend", choices=["lora", "qlora"], default="lora")
    args = ap.parse_args(argv)
    name = args.shape or ("llama-0.2b" if args.quick else "tinyllama-1.1b")
    t = time.perf_counter()
    model = build(name)
    build_s = time.perf_counter() - t
    if args.device == "cuda":
        return gpu(name, model, args.backend, args.json)
    batch, seq, steps = 2, 64, 4
    data_file = data(model)
    load_before = os.getloadavg()[0]  # other jobs on the cores slow the steps, not the peaks
    result = compare(
        model,
        data_file,
        backend=args.backend,
        batch=batch,
        seq=seq,
        steps=steps,
        extra=["--base-dtype", "bf16"],
    )
    emit(
        "shard",
        {
            **run_info(args.quick, "adaptkit", "torch", "transformers"),
            "model": {
                "name": name,
                "path_note": "random weights, bf16, 1 GB shards",
                "build_s": round(build_s, 1),
            },
            "setup": {
                "backend": args.backend,
                "base_dtype": "bf16",
                "rank": 16,
                "alpha": 32,
                "targets": TARGETS,
                "global_batch": [batch, seq],
                "steps": steps,
                "command": "python -m benchmarks --only shard",
            },
            "load_average": [round(load_before, 2), round(os.getloadavg()[0], 2)],
            **result,
        },
        args.json,
    )


def gpu(name: str, model: Path, backend: str, json_path: str | None) -> None:
    """Two GPUs: ``backend`` on one GPU against ``--shard`` over two, peak CUDA memory per GPU."""
    import torch

    if torch.cuda.device_count() < 2:
        raise SystemExit(
            f"--shard over two processes needs two GPUs; this machine has {torch.cuda.device_count()}"
        )
    batch, seq, steps = 4, 512, 10
    data_file = data(model, n=16, length=seq)
    result = compare(
        model, data_file, backend=backend, batch=batch, seq=seq, steps=steps, extra=["--device", "cuda"]
    )
    emit(
        f"gpu-shard-{backend}-{name}",
        {
            **run_info(False, "adaptkit", "torch", "transformers", "bitsandbytes"),
            "mode": "cuda",
            "model": {"name": name},
            "setup": {
                "backend": backend,
                "rank": 16,
                "alpha": 32,
                "global_batch": [batch, seq],
                "steps": steps,
            },
            **result,
        },
        json_path,
    )


if __name__ == "__main__":
    main()
