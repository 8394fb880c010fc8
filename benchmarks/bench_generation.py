"""Generation-ready ONNX at real size: export memory/time against the graph builder alone, and
generation speed against what PyTorch users run.

The 1.1B Llama-shaped model of :mod:`benchmarks.bench_realsize` (random bf16 weights, 1 GB
shards, no tokenizer) and a rank-16 adapter on all seven projections. Measured:

- **export**: ``adaptkit export --onnx --precision P`` (streamed bake + model builder +
  generation parity) against the model builder alone run on the same merged checkpoint (int4:
  the ``export --merged`` output, bf16; fp32: the same bake written in float32, which is what
  an fp32 export hands the builder), each a fresh process tree whose summed RSS is sampled
  every 20 ms (the builder runs in a child process, so the tree is what counts). The builder alone is
  ``adaptkit_onnx.generation.builder_worker`` — ONNX Runtime GenAI's builder with the LM-head and
  tokenizer-less adjustments, which change no tensor it holds; the plain builder CLI refuses a
  model without a tokenizer.
- **generation**, batch 1, 64 new tokens from a 16-token prompt, greedy, in one process on the
  same prompt: ONNX Runtime GenAI (int4 and fp32 exports) vs transformers ``generate`` on the
  merged checkpoint (fp32 and bf16) and on the base with the PEFT adapter unmerged (fp32 and
  bf16). Tokens/s = 64 / wall time of the whole ``generate`` call (prefill included).

    python -m benchmarks.bench_generation            # 1.1B (about 15 minutes on 2 cores)
    python -m benchmarks.bench_generation --quick    # the 0.2B model of the same family
"""

from __future__ import annotations

import gc
import json
import math
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from adaptkit.io.safetensors_strict import checked_header
from benchmarks.bench_realsize import TARGETS, build, cache_dir
from benchmarks.common import emit, parser, release_memory, run_info

PROMPT_TOKENS, NEW_TOKENS = 16, 64


def tree_peak(argv: list[str]) -> dict:
    """Run ``argv``; the peak of its whole process tree's summed RSS, sampled every 20 ms."""
    import psutil

    start = time.perf_counter()
    # Output to files, not pipes: a pipe nobody reads while we poll fills up and blocks the child.
    with tempfile.TemporaryFile("w+") as out_file, tempfile.TemporaryFile("w+") as err_file:
        proc = subprocess.Popen(argv, stdout=out_file, stderr=err_file, text=True)
        ps = psutil.Process(proc.pid)
        peak = 0
        while proc.poll() is None:
            try:
                total = ps.memory_info().rss + sum(c.memory_info().rss for c in ps.children(recursive=True))
                peak = max(peak, total)
            except psutil.Error:
                pass
            time.sleep(0.02)
        out_file.seek(0)
        err_file.seek(0)
        out, err = out_file.read(), err_file.read()
    if proc.returncode != 0:
        raise SystemExit(f"failed: {' '.join(argv)}\n{err[-3000:]}")
    return {
        "wall_s": round(time.perf_counter() - start, 1),
        "peak_rss_gib": round(peak / 2**30, 3),
        "stdout": out,
    }


def adapter(model: Path) -> tuple[Path, Path]:
    """A rank-16 adapter on all seven projections (native file + PEFT folder), made once."""
    native = model.parent / f"{model.name}-r16.safetensors"
    peft_dir = model.parent / f"{model.name}-r16-peft"
    if native.exists() and peft_dir.exists():
        return native, peft_dir
    import torch

    from adaptkit import Adapter, BaseModelInfo, LoraPair
    from adaptkit.io.native import save_adapter

    config = json.loads((model / "config.json").read_text())
    h, inter, layers = config["hidden_size"], config["intermediate_size"], config["num_hidden_layers"]
    kv = config["num_key_value_heads"] * h // config["num_attention_heads"]
    shapes = {
        "self_attn.q_proj": (h, h), "self_attn.k_proj": (kv, h), "self_attn.v_proj": (kv, h),
        "self_attn.o_proj": (h, h), "mlp.gate_proj": (inter, h), "mlp.up_proj": (inter, h),
        "mlp.down_proj": (h, inter),
    }  # fmt: skip
    g = torch.Generator().manual_seed(0)
    targets = {
        f"model.layers.{i}.{name}": LoraPair(
            A=torch.randn(16, n_in, generator=g) / n_in**0.5,
            B=torch.randn(n_out, 16, generator=g) * 0.02,
            alpha=32.0,
        )
        for i in range(layers)
        for name, (n_out, n_in) in shapes.items()
    }
    save_adapter(Adapter(targets, base_model=BaseModelInfo(name=model.name)), native)
    subprocess.run(
        [sys.executable, "-m", "adaptkit", "convert", str(native), "-o", str(peft_dir), "--to", "peft"],
        check=True,
        capture_output=True,
    )
    return native, peft_dir


def merged(model: Path, native: Path) -> Path:
    """``export --merged``: the checkpoint's own dtype (what an int4 export hands the builder)."""
    folder = model.parent / f"{model.name}-r16-merged"
    if not (folder / "config.json").exists():
        run = [sys.executable, "-m", "adaptkit", "export", "--merged", "--model", str(model)]
        subprocess.run([*run, "-a", str(native), "-o", str(folder)], check=True, capture_output=True)
    return folder


def merged_fp32(model: Path, native: Path) -> Path:
    """The same bake written in float32: what an fp32 export hands the builder."""
    folder = model.parent / f"{model.name}-r16-merged-fp32"
    if not (folder / "config.json").exists():
        code = (
            "import sys, torch; from pathlib import Path; from adaptkit.io.native import load_adapter;"
            "from adaptkit.nn.checkpoint import bake_checkpoint; out = Path(sys.argv[3]); out.mkdir();"
            "bake_checkpoint(Path(sys.argv[1]), load_adapter(sys.argv[2]), out, cast=torch.float32)"
        )
        subprocess.run([sys.executable, "-c", code, str(model), str(native), str(folder)], check=True)
    return folder


def export(model: Path, native: Path, precision: str, out: Path) -> dict:
    argv = [
        sys.executable, "-m", "adaptkit", "export", "--onnx", "--precision", precision, "--model", str(model),
        "-a", str(native), "-o", str(out), "--force", "--json",
        # Random weights give near-flat logits over 32000 tokens, so int4 noise flips many
        # argmaxes: the agreement is measured and reported here, not used as a gate.
        *(["--min-agreement", "0"] if precision != "fp32" else []),
    ]  # fmt: skip
    result = tree_peak(argv)
    report = json.loads(result.pop("stdout"))
    rows = report["parity"]
    result["parity"] = {
        "tokens_identical": f"{sum(r['tokens_identical'] for r in rows)}/{len(rows)}",
        "top1_agreement": round(sum(r["top1_agreement"] for r in rows) / len(rows), 3),
        "prefill_max_abs": round(max(r["prefill_max_abs"] for r in rows), 5),
        "prefill_scale": round(max(r["prefill_scale"] for r in rows), 2),
        "adapter_effect_max_abs": round(report["adapter_effect_max_abs"]["merged"], 3),
    }
    result["builder_child"] = report["builder"]
    return result


def builder_alone(merged_dir: Path, precision: str, scratch: Path) -> dict:
    out = scratch / f"builder-{precision}"
    argv = [
        sys.executable, "-m", "adaptkit_onnx.generation.builder_worker", str(merged_dir), str(out),
        precision, "cpu", str(scratch / "cache"),
    ]  # fmt: skip
    result = tree_peak(argv)
    result.pop("stdout")
    return result


def generation_speeds(model: Path, merged_dir: Path, peft_dir: Path, exports: dict[str, Path]) -> dict:
    """Tokens/s of every contender on the same prompt, one process, one at a time."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from adaptkit_onnx.runtime.genai import GenaiModel

    g = torch.Generator().manual_seed(1)
    prompt = torch.randint(3, 32000, (PROMPT_TOKENS,), generator=g).tolist()
    speeds: dict[str, float] = {}
    tokens: dict[str, list[int]] = {}
    for precision, folder in exports.items():
        runtime = GenaiModel(folder)
        runtime.generate(prompt, 4)  # warm-up: session start, kernel selection
        t = time.perf_counter()
        got, _ = runtime.generate(prompt, NEW_TOKENS)
        speeds[f"onnx_{precision}"] = len(got) / (time.perf_counter() - t)
        tokens[f"onnx_{precision}"] = got
        del runtime
        release_memory()

    def hf(name: str, net) -> None:
        ids = torch.tensor([prompt])
        kwargs = dict(do_sample=False, pad_token_id=0, attention_mask=torch.ones_like(ids))
        with torch.no_grad():
            net.generate(ids, max_new_tokens=2, min_new_tokens=2, **kwargs)  # warm-up
            t = time.perf_counter()
            out = net.generate(ids, max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS, **kwargs)
        speeds[name] = NEW_TOKENS / (time.perf_counter() - t)
        tokens[name] = out[0, PROMPT_TOKENS:].tolist()

    for dtype, label in ((torch.float32, "fp32"), (torch.bfloat16, "bf16")):
        net = AutoModelForCausalLM.from_pretrained(merged_dir, dtype=dtype).eval()
        hf(f"pytorch_merged_{label}", net)
        del net
        release_memory()
        net = PeftModel.from_pretrained(
            AutoModelForCausalLM.from_pretrained(model, dtype=dtype), peft_dir
        ).eval()
        hf(f"pytorch_peft_unmerged_{label}", net)
        del net
        gc.collect()
        release_memory()
    same = tokens.get("onnx_fp32") == tokens["pytorch_peft_unmerged_fp32"]
    return {
        "tokens_per_s": {k: round(v, 2) for k, v in speeds.items()},
        "onnx_fp32_tokens_equal_peft_fp32": same,
        "speedup_vs_peft_unmerged_fp32": {
            k: round(v / speeds["pytorch_peft_unmerged_fp32"], 2)
            for k, v in speeds.items()
            if k.startswith("onnx")
        },
    }


def main(argv=None) -> None:
    args = parser(__doc__).parse_args(argv)
    name = "llama-0.2b" if args.quick else "tinyllama-1.1b"
    model = build(name)
    native, peft_dir = adapter(model)
    merged_dir = merged(model, native)
    scratch = cache_dir() / f"{name}-generation"
    scratch.mkdir(parents=True, exist_ok=True)
    params = sum(
        math.prod(info["shape"])
        for f in model.glob("*.safetensors")
        for info in checked_header(f)[1].values()
    )
    rows = {}
    exports = {}
    handed = {"int4": merged_dir, "fp32": merged_fp32(model, native)}
    for precision in ("int4", "fp32"):
        alone = builder_alone(handed[precision], precision, scratch)
        print(f"builder alone {precision}: {alone}", flush=True)
        out = scratch / f"export-{precision}"
        ours = export(model, native, precision, out)
        print(f"adaptkit export {precision}: {ours}", flush=True)
        exports[precision] = out
        rows[precision] = {
            "adaptkit_export": ours,
            "builder_alone": alone,
            "peak_ratio": round(ours["peak_rss_gib"] / alone["peak_rss_gib"], 3),
            "wall_ratio": round(ours["wall_s"] / alone["wall_s"], 2),
        }
    rows["fp32"]["peak_over_model_fp32_bytes"] = round(
        rows["fp32"]["adaptkit_export"]["peak_rss_gib"] * 2**30 / (4 * params), 3
    )
    speeds = generation_speeds(model, merged_dir, peft_dir, exports)
    print(json.dumps(speeds), flush=True)
    emit(
        "generation",
        {
            **run_info(
                args.quick,
                "adaptkit",
                "onnxruntime-genai-cuda",
                "onnxruntime-gpu",
                "torch",
                "transformers",
                "peft",
            ),
            "model": {
                "name": name,
                "parameters": params,
                "note": "random weights, bf16 shards, no tokenizer",
            },
            "adapter": {"rank": 16, "alpha": 32, "targets": TARGETS},
            "export": rows,
            "generation": {"prompt_tokens": PROMPT_TOKENS, "new_tokens": NEW_TOKENS, **speeds},
        },
        args.json,
    )


if __name__ == "__main__":
    main()
