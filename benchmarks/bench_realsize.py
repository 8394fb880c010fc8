"""Real-size training, whole processes side by side: ``adaptkit train`` vs what PEFT users run.

A 1.1B-parameter Llama-shaped model (TinyLlama's shape: hidden 2048, 22 layers, intermediate
5632, vocab 32000, 4 KV heads) with random weights is built once on the meta device,
materialised in bf16 and written in 1 GB shards to a cache folder (``$ADAPTKIT_CACHE`` or
``~/.cache/adaptkit``/bench). Data: ``input_ids`` JSONL, no tokenizer. Each run is its own
process; its peak RSS (the kernel's high-water mark) and wall time are measured from outside:

- ``qlora`` vs PEFT + transformers ``BitsAndBytesConfig`` (+ ``prepare_model_for_kbit_training``):
  same rank/alpha/targets/data/seed/initial factors, bitsandbytes AdamW; losses must agree;
- ``lora --base-dtype bf16`` vs PEFT on the same bf16 base: peak RSS and step time.

    python -m benchmarks.bench_realsize            # 1.1B, rank 16 on all 7 projections
    python -m benchmarks.bench_realsize --quick    # a 0.2B model of the same family
    python -m benchmarks.bench_realsize --device cuda --shape llama-7b   # GPU: peak CUDA memory
                                                                         # of qlora vs PEFT only
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import emit, parser, run_info

TARGETS = "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj"
SHAPES = {
    "tinyllama-1.1b": dict(
        hidden_size=2048, intermediate_size=5632, num_hidden_layers=22, num_attention_heads=32
    ),
    "llama-0.2b": dict(
        hidden_size=1024, intermediate_size=2816, num_hidden_layers=12, num_attention_heads=16
    ),
    # Llama-2-7B's shape, for the CUDA runs (benchmarks/gpu_qlora.sh): 6.7B parameters.
    "llama-7b": dict(
        hidden_size=4096,
        intermediate_size=11008,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=32,
    ),
}


def cache_dir() -> Path:
    return Path(os.environ.get("ADAPTKIT_CACHE") or Path.home() / ".cache" / "adaptkit") / "bench"


def build(name: str) -> Path:
    """The random bf16 model in 1 GB shards, written once (atomically) and reused."""
    folder = cache_dir() / f"{name}-random-bf16"
    if (folder / "config.json").is_file():
        return folder
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=32000, max_position_embeddings=2048, **{"num_key_value_heads": 4, **SHAPES[name]}
    )
    with torch.device("meta"):
        model = LlamaForCausalLM(config)
    model = model.to_empty(device="cpu").to(torch.bfloat16)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for pname, p in model.named_parameters():
            if pname.endswith("norm.weight"):
                p.fill_(1.0)
            else:
                p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float32).mul_(0.02))
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=folder.parent))
    model.save_pretrained(tmp, max_shard_size="1GB")
    tmp.rename(folder)
    return folder


def data(folder: Path, n: int = 4, length: int = 64) -> Path:
    path = folder.parent / f"realsize-data-{n}x{length}.jsonl"
    g = __import__("random").Random(0)
    path.write_text(
        "".join(
            json.dumps({"input_ids": [g.randrange(3, 32000) for _ in range(length)]}) + "\n" for _ in range(n)
        )
    )
    return path


_WRAPPER = (
    "import resource, subprocess, sys, time, json;"
    "t = time.perf_counter(); r = subprocess.run(sys.argv[1:], capture_output=True, text=True);"
    "w = time.perf_counter() - t;"
    "peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024;"
    "print(json.dumps({'rc': r.returncode, 'wall': w, 'peak': peak,"
    " 'stdout': r.stdout, 'stderr': r.stderr[-4000:]}))"
)


def measured(argv: list[str]) -> dict:
    """Run ``argv`` as the only child of a fresh process: its peak RSS and wall time."""
    res = subprocess.run([sys.executable, "-c", _WRAPPER, *argv], capture_output=True, text=True)
    out = json.loads(res.stdout)
    if out["rc"] != 0:
        raise SystemExit(f"failed: {' '.join(argv)}\n{out['stderr']}")
    return out


def adaptkit_run(
    backend: str, model: Path, data_file: Path, steps: int, extra: list[str], batch: int = 1, seq: int = 64
) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        metrics = Path(tmp) / "m.jsonl"
        out = measured(
            [
                sys.executable, "-m", "adaptkit", "train", "--backend", backend, "--model", str(model),
                "--data", str(data_file), "-o", str(Path(tmp) / "a.safetensors"), "--targets", TARGETS,
                "--rank", "16", "--alpha", "32", "--max-steps", str(steps), "--batch-size", str(batch),
                "--seq-len", str(seq), "--lr", "1e-4", "--metrics", str(metrics), "--json",
                "--eval-records", "0", *extra,
            ]
        )  # fmt: skip
        lines = [json.loads(x) for x in metrics.read_text().splitlines()]
    steps_ = [x for x in lines if "step" in x]
    out["losses"] = [x["loss"] for x in steps_]
    out["step_s"] = [batch * seq / x["tokens_per_s"] for x in steps_]
    out["memory"] = lines[0].get("memory")
    out["peak_memory"] = lines[-1].get("peak_memory")
    return out


def peft_run(mode: str, model: Path, data_file: Path, steps: int, batch: int = 1) -> dict:
    out = measured(
        [
            sys.executable, "-m", "benchmarks.peft_train", "--mode", mode, "--model", str(model),
            "--data", str(data_file), "--steps", str(steps), "--targets", TARGETS, "--batch", str(batch),
        ]
    )  # fmt: skip
    out.update(json.loads(out["stdout"].strip().splitlines()[-1]))
    return out


def main(argv=None) -> None:
    ap = parser(__doc__)
    ap.add_argument("--shape", choices=sorted(SHAPES), help="default tinyllama-1.1b (--quick: llama-0.2b)")
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    args = ap.parse_args(argv)
    name = args.shape or ("llama-0.2b" if args.quick else "tinyllama-1.1b")
    t = time.perf_counter()
    model = build(name)
    build_s = time.perf_counter() - t
    if args.device == "cuda":
        return gpu(name, model, build_s, args.json)
    data_file = data(model)
    q_steps, l_steps = 2, 4
    runs = {
        "adaptkit_qlora": adaptkit_run("qlora", model, data_file, q_steps, []),
        "peft_qlora": peft_run("qlora", model, data_file, q_steps),
        "adaptkit_lora_bf16": adaptkit_run("lora", model, data_file, l_steps, ["--base-dtype", "bf16"]),
        "peft_lora_bf16": peft_run("lora", model, data_file, l_steps),
    }
    for key, r in runs.items():
        print(
            f"{key}: peak {r['peak'] / 2**30:.2f} GiB, wall {r['wall']:.1f} s, losses {r['losses']}",
            flush=True,
        )

    def ratio(a: float, b: float) -> float:
        return round(a / b, 3)

    aq, pq, al, pl = (
        runs[k] for k in ("adaptkit_qlora", "peft_qlora", "adaptkit_lora_bf16", "peft_lora_bf16")
    )
    step_a, step_p = statistics.median(al["step_s"][1:]), statistics.median(pl["step_s"][1:])
    results = {
        **run_info(args.quick, "adaptkit", "peft", "torch", "transformers", "bitsandbytes"),
        "model": {
            "name": name,
            "path_note": "random weights, bf16, 1 GB shards",
            "build_s": round(build_s, 1),
        },
        "setup": {
            "rank": 16,
            "alpha": 32,
            "targets": TARGETS,
            "batch": [1, 64],
            "qlora_steps": q_steps,
            "lora_steps": l_steps,
        },
        "qlora": {
            "adaptkit": {
                "peak_rss_gib": round(aq["peak"] / 2**30, 3),
                "wall_s": round(aq["wall"], 1),
                "losses": aq["losses"],
            },
            "peft": {
                "peak_rss_gib": round(pq["peak"] / 2**30, 3),
                "wall_s": round(pq["wall"], 1),
                "losses": pq["losses"],
            },
            "peak_rss_ratio": ratio(aq["peak"], pq["peak"]),
            "wall_ratio": ratio(aq["wall"], pq["wall"]),
            "max_loss_difference": max(abs(a - b) for a, b in zip(aq["losses"], pq["losses"], strict=True)),
            "memory_account": aq["memory"],
        },
        "lora_bf16": {
            "adaptkit": {
                "peak_rss_gib": round(al["peak"] / 2**30, 3),
                "wall_s": round(al["wall"], 1),
                "step_s": round(step_a, 3),
            },
            "peft": {
                "peak_rss_gib": round(pl["peak"] / 2**30, 3),
                "wall_s": round(pl["wall"], 1),
                "step_s": round(step_p, 3),
            },
            "peak_rss_ratio": ratio(al["peak"], pl["peak"]),
            "step_time_ratio": ratio(step_a, step_p),
            "max_loss_difference": max(abs(a - b) for a, b in zip(al["losses"], pl["losses"], strict=True)),
        },
    }
    emit("realsize", results, args.json)


def gpu(name: str, model: Path, build_s: float, json_path: str | None) -> None:
    """qlora vs PEFT + BitsAndBytesConfig on CUDA: peak CUDA memory, step time, losses."""
    batch, seq, steps = 4, 512, 10
    data_file = data(model, n=16, length=seq)
    ours = adaptkit_run("qlora", model, data_file, steps, ["--device", "cuda"], batch=batch, seq=seq)
    peft = peft_run("qlora", model, data_file, steps, batch=batch)
    ours_peak = ours["peak_memory"]["peak_bytes"]
    results = {
        **run_info(False, "adaptkit", "peft", "torch", "transformers", "bitsandbytes"),
        "mode": "cuda",
        "model": {"name": name, "build_s": round(build_s, 1)},
        "setup": {"rank": 16, "alpha": 32, "targets": TARGETS, "batch": [batch, seq], "steps": steps},
        "adaptkit": {
            "peak_cuda_gib": round(ours_peak / 2**30, 3),
            "peak_rss_gib": round(ours["peak"] / 2**30, 3),
            "wall_s": round(ours["wall"], 1),
            "step_s": round(statistics.median(ours["step_s"][2:]), 4),
            "losses": ours["losses"],
        },
        "peft": {
            "peak_cuda_gib": round(peft["peak_cuda_bytes"] / 2**30, 3),
            "peak_rss_gib": round(peft["peak"] / 2**30, 3),
            "wall_s": round(peft["wall"], 1),
            "step_s": round(statistics.median(peft["step_s"][2:]), 4),
            "losses": peft["losses"],
        },
        "peak_cuda_ratio": round(ours_peak / peft["peak_cuda_bytes"], 3),
    }
    emit(f"gpu-realsize-{name}", results, json_path)


if __name__ == "__main__":
    main()
