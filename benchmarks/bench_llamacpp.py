"""llama.cpp against ONNX Runtime GenAI at 1.1B, on this machine: prefill and decode speed, memory.

The 1.1B Llama-shaped model of :mod:`benchmarks.bench_realsize` (random bf16 weights) and the
rank-16 adapter on all seven projections of :mod:`benchmarks.bench_generation`, deployed the
two ways adaptkit exports it:

- **llama.cpp**: the base as GGUF (written from the checkpoint in float16, then quantized by
  llama.cpp's own quantizer to ``Q4_0`` and ``Q4_K_M``; :mod:`benchmarks.gguf_models`) plus
  ``adaptkit export --gguf``'s ``adapter.gguf``, applied unmerged at run time as llama.cpp does;
- **ONNX Runtime GenAI**: ``adaptkit export --onnx --precision int4`` (the adapter baked in)
  for several ``--int4-block-size`` / ``--int4-accuracy-level`` settings.

Each contender runs in its own process (its peak RSS, ``VmHWM``, is its own), batch 1, greedy:
a 128-token prompt in one call (prefill tokens/s), then 64 tokens one at a time (decode
tokens/s), after a warm-up, best of 3; with 1 and with 2 threads. Random weights make the tokens
meaningless: quality is :mod:`benchmarks.bench_quality`'s, on a trained model.

    python -m benchmarks.bench_llamacpp            # 1.1B (about 25 minutes on 2 cores)
    python -m benchmarks.bench_llamacpp --quick    # the 0.2B model of the same family
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.bench_generation import adapter
from benchmarks.bench_realsize import build
from benchmarks.common import emit, parser, run_info

PROMPT, NEW = 128, 64
#: How the llama-cpp-python measured here was built (docs/benchmarks.md says why).
NO_AMX = (
    "-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON "
    "-DGGML_AVX_VNNI=ON -DGGML_AVX512=ON -DGGML_AVX512_VBMI=ON -DGGML_AVX512_VNNI=ON "
    "-DGGML_AVX512_BF16=ON -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF -DLLAVA_BUILD=OFF"
)
#: Each speed is the best of this many runs in the same process (the machine is shared).
REPEATS = 3
THREADS = (1, 2)
#: (block size, accuracy level) of the int4 exports measured; (32, 4) is the builder's CPU default.
INT4 = ((32, 4), (128, 4), (32, 0), (128, 0))
GGUF = ("Q4_0", "Q4_K_M")


def peak_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def prompt_ids() -> list[int]:
    import random

    rng = random.Random(1)
    return [rng.randrange(3, 32000) for _ in range(PROMPT)]


def measure_llamacpp(base: str, adapter_file: str, threads: int) -> dict:
    import numpy as np

    from adaptkit_gguf.runtime import LlamaCppSession

    ids = prompt_ids()
    with LlamaCppSession(
        Path(base), [(Path(adapter_file), 1.0)], n_ctx=PROMPT + NEW, threads=threads, kv_f32=False
    ) as s:
        s.greedy(ids[:16], 4)  # warm-up: buffers, repacking
        prefill, decode = [], []
        for _ in range(REPEATS):
            s.llm.reset()
            t = time.perf_counter()
            s.llm.eval(ids)
            prefill.append(time.perf_counter() - t)
            t = time.perf_counter()
            for _ in range(NEW):
                token = int(np.argmax(s._last_logits()))
                s.llm.eval([token])
            decode.append(time.perf_counter() - t)
    return {"prefill_tok_s": PROMPT / min(prefill), "decode_tok_s": NEW / min(decode)}


def measure_genai(folder: str, threads: int) -> dict:
    import numpy as np

    from adaptkit_onnx.runtime.genai import GenaiModel

    ids = prompt_ids()
    runtime = GenaiModel(Path(folder), threads=threads)
    runtime.generate(ids[:16], 4)  # warm-up: session start, kernel selection
    og = runtime._og
    prefill, decode = [], []
    for _ in range(REPEATS):
        params = og.GeneratorParams(runtime.model)
        params.set_search_options(max_length=PROMPT + NEW, do_sample=False)
        generator = og.Generator(runtime.model, params)
        t = time.perf_counter()
        generator.append_tokens(np.asarray([ids], dtype=np.int32))
        prefill.append(time.perf_counter() - t)
        t = time.perf_counter()
        for _ in range(NEW):
            generator.generate_next_token()
        decode.append(time.perf_counter() - t)
        del generator
    return {"prefill_tok_s": PROMPT / min(prefill), "decode_tok_s": NEW / min(decode)}


def worker(spec: dict) -> None:
    """One contender in this process; prints one JSON line."""
    if spec["kind"] == "llamacpp":
        result = measure_llamacpp(spec["base"], spec["adapter"], spec["threads"])
    else:
        result = measure_genai(spec["folder"], spec["threads"])
    print(json.dumps({**result, "peak_rss_mib": peak_mib()}), flush=True)


def run(spec: dict) -> dict:
    argv = [sys.executable, "-m", "benchmarks.bench_llamacpp", "--worker", json.dumps(spec)]
    out = subprocess.run(argv, capture_output=True, text=True, check=False)
    if out.returncode == -4:  # SIGILL
        raise SystemExit(
            f"{spec['kind']} died of an illegal instruction: a native build of llama.cpp uses CPU "
            "instructions this machine advertises but refuses (AMX, in some virtual machines). "
            f"Rebuild it without them: CMAKE_ARGS='{NO_AMX}' pip install --force-reinstall "
            "--no-cache-dir llama-cpp-python"
        )
    if out.returncode != 0:
        raise SystemExit(f"failed: {spec}\n{out.stderr[-3000:]}")
    result = json.loads(out.stdout.strip().splitlines()[-1])
    return {k: round(v, 1) for k, v in result.items()}


def export_gguf(model: Path, native: Path) -> Path:
    out = model.parent / f"{model.name}-r16-gguf"
    if not (out / "adapter.gguf").exists():
        argv = [sys.executable, "-m", "adaptkit", "export", "--gguf", "--model", str(model)]
        subprocess.run([*argv, "-a", str(native), "-o", str(out)], check=True, capture_output=True)
    return out / "adapter.gguf"


def export_int4(model: Path, native: Path, block: int, level: int) -> Path:
    out = model.parent / f"{model.name}-r16-int4-b{block}-a{level}"
    if not (out / "genai_config.json").exists():
        argv = [
            sys.executable, "-m", "adaptkit", "export", "--onnx", "--precision", "int4",
            "--model", str(model), "-a", str(native), "-o", str(out), "--force", "--no-verify",
            "--int4-block-size", str(block), "--int4-accuracy-level", str(level),
        ]  # fmt: skip
        subprocess.run(argv, check=True, capture_output=True)
    return out


def size_mib(path: Path) -> float:
    files = [path] if path.is_file() else [p for p in path.iterdir() if p.suffix in (".onnx", ".data")]
    return round(sum(f.stat().st_size for f in files) / 2**20, 1)


def main(argv=None) -> None:
    ap = parser(__doc__)
    ap.add_argument("--worker", help=argparse.SUPPRESS)  # one contender, in its own process
    args = ap.parse_args(argv)
    if args.worker:
        worker(json.loads(args.worker))
        return
    from benchmarks.gguf_models import quantized

    name = "llama-0.2b" if args.quick else "tinyllama-1.1b"
    model = build(name)
    native, _ = adapter(model)
    adapter_file = export_gguf(model, native)
    rows = []
    for kind in GGUF:
        base = quantized(model, kind)
        for threads in THREADS:
            spec = {"kind": "llamacpp", "base": str(base), "adapter": str(adapter_file), "threads": threads}
            row = {"runtime": f"llama.cpp {kind} + adapter.gguf", "threads": threads, **run(spec)}
            row["file_mib"] = round(size_mib(base) + size_mib(adapter_file), 1)
            print(json.dumps(row), flush=True)
            rows.append(row)
    for block, level in INT4:
        folder = export_int4(model, native, block, level)
        for threads in THREADS:
            row = {
                "runtime": f"ORT GenAI int4 block {block} level {level}",
                "threads": threads,
                **run({"kind": "genai", "folder": str(folder), "threads": threads}),
                "file_mib": size_mib(folder),
            }
            print(json.dumps(row), flush=True)
            rows.append(row)
    emit(
        "llamacpp",
        {
            **run_info(args.quick, "adaptkit", "llama-cpp-python", "onnxruntime-genai-cuda", "gguf"),
            "model": name,
            "setup": {"prompt_tokens": PROMPT, "new_tokens": NEW, "adapter_rank": 16, "batch": 1},
            "rows": rows,
        },
        args.json,
    )


if __name__ == "__main__":
    main()
