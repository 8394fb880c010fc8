"""Render docs/benchmarks.md from benchmarks/results/*.json."""

from __future__ import annotations

import json
import math
from pathlib import Path

HEADER = """# Benchmarks

adaptkit against its peers (PEFT, bitsandbytes) **in one process, on the same inputs**. Regenerate
everything (this file included) with:

```bash
python -m benchmarks            # full sizes
python -m benchmarks --quick    # small sizes, a few minutes
```

Errors are relative Frobenius errors against a float64 reference computed independently inside
the benchmark (the exact weighted sum; dense float64 TIES; optimal rank-k error from the
eigenvalues of the small Gram product). Peak memory is the extra RSS sampled every millisecond
during the call. Times are medians or minima of repeated runs, as each table says.
"""


def _opening(title: str, r: dict) -> list[str]:
    """A section's title and the line saying where and when its numbers were taken."""
    return [f"## {title}", "", _machine(r), ""]


def _machine(r: dict) -> str:
    m = r.get("machine", {})
    v = ", ".join(f"{k} {val}" for k, val in r.get("versions", {}).items())
    return (
        f"*{r.get('mode', '?')} mode; {m.get('cores')} cores ({m.get('cpu')}), torch threads "
        f"{m.get('torch_threads')}, CUDA {m.get('cuda')}; {v}; generated {r.get('date', '')}.*"
    )


def _race(r: dict, peer: str, *rows: str) -> list[str]:
    """The table of a step race (bench_train.race): time per step, ``rows``, peak memory."""
    return [
        f"| | adaptkit | {peer} | ratio (adaptkit / PEFT) |",
        "|---|---|---|---|",
        f"| seconds / step | {r['step_s']['adaptkit']} | {r['step_s']['peft']} | "
        f"{r['step_time_ratio_adaptkit_over_peft']} |",
        *rows,
        f"| peak extra RSS MiB | {r['peak_extra_rss_mib']['adaptkit']} | {r['peak_extra_rss_mib']['peft']} | "
        f"{r['peak_rss_ratio_adaptkit_over_peft']} |",
    ]


def _combine(r: dict) -> list[str]:
    out = [
        *_opening("Combine: `adaptkit combine` vs PEFT `add_weighted_adapter`", r),
        "Best of 3 runs for adaptkit, 1 run for PEFT (its dense SVDs take tens of seconds).",
        "",
        "| layer | adapters | method | PEFT s | adaptkit s | speed-up | PEFT rel. err | adaptkit rel. err "
        "| optimal | PEFT peak MiB | adaptkit peak MiB |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in r["rows"]:
        opt = "" if row["optimal_rel_err"] is None else f"{row['optimal_rel_err']:.4g}"
        out.append(
            f"| {row['shape']} | {row['adapters']} | {row['method']} | {row['peft_s']:.3f} | "
            f"{row['adaptkit_s']:.4f} | {row['speedup']}x | {row['peft_rel_err']:.3e} | "
            f"{row['adaptkit_rel_err']:.3e} | {opt} | {row['peft_peak_mib']} | {row['adaptkit_peak_mib']} |"
        )
    gaps = [abs(row["adaptkit_minus_optimal"]) for row in r["rows"] if row["optimal_rel_err"]]
    if gaps:
        out += [
            "",
            f"Factored `linear --rank 16` vs the optimal rank-16 truncation: relative error differs by at "
            f"most {max(gaps):.1e}.",
        ]
    s = r["llama7b_shaped"]
    out += [
        "",
        f"Llama-7B-shaped target set ({s['targets']} targets, two rank-16 adapters, "
        f"{s['input_mib']} MiB of input files): load + save {s['load_save_s']} s, load + "
        f"`linear --rank 16` + save {s['load_combine_save_s']} s — **{s['ratio']}x** the I/O alone "
        f"({s['combine_ms_per_target']} ms of combining per target; {s['peak_extra_mib']} MiB extra peak).",
        "",
    ]
    return out


def _train(r: dict) -> list[str]:
    out = [
        *_opening("Training: `lora` backend vs PEFT", r),
        f"Model hidden {r['model']['hidden']}, {r['model']['layers']} layers, {r['model']['params']:,} "
        f"parameters; batch {r['batch'][0]}×{r['batch'][1]}; rank {r['rank']} on all linear layers; AdamW; "
        f"steps alternate between the two; median of {r['steps_timed']} steps.",
        "",
        *_race(
            r, "PEFT", f"| tokens / s | {r['tokens_per_s']['adaptkit']} | {r['tokens_per_s']['peft']} | |"
        ),
        "",
        f"Same initial factors: the first five losses agree to {r['max_loss_difference_first_5_steps']:.1e}.",
        "",
    ]
    return out


def _export(r: dict) -> list[str]:
    out = [
        *_opening("Logits-only graph (`--graph logits`): merged ONNX vs base ONNX vs PyTorch", r),
        f"Model hidden {r['model']['hidden']}, {r['model']['layers']} layers, vocab {r['model']['vocab']}; "
        f"rank-{r['rank']} adapter on all linear layers; sequence 128; medians, ORT sessions interleaved.",
        "",
        "| batch | ORT merged ms | ORT base ms | merged / base | PyTorch+PEFT unmerged ms "
        "| PyTorch merged ms | PEFT unmerged / ORT merged |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in r["rows"]:
        out.append(
            f"| {row['batch']} | {row['ort_merged_ms']} | {row['ort_base_ms']} | "
            f"{row['ort_merged_over_base']} | "
            f"{row['pytorch_peft_unmerged_ms']} | {row['pytorch_merged_ms']} | "
            f"{row['peft_unmerged_over_ort_merged']}x |"
        )
    return [*out, ""]


def _generation(r: dict) -> list[str]:
    m = r["model"]
    out = [
        *_opening(
            f"Generation-ready ONNX at real size ({m['name']}, {m['parameters'] / 1e9:.2f}B parameters)", r
        ),
        f"{m['note']}; rank-{r['adapter']['rank']} adapter on all seven projections. Command: "
        "`python -m benchmarks.bench_generation`.",
        "",
        "**Export** — `adaptkit export --onnx --precision P` (streamed bake, ONNX Runtime GenAI's model "
        "builder in a child process, generation parity against PyTorch + the adapter unmerged) against "
        "the builder alone on the same merged checkpoint. Peak RSS of the whole process tree (sampled "
        "every 20 ms), wall time of the whole command.",
        "",
        "| precision | adaptkit peak GiB | builder alone peak GiB | ratio | adaptkit s | builder alone s "
        "| parity |",
        "|---|---|---|---|---|---|---|",
    ]
    for precision, row in r["export"].items():
        a, b, par = row["adaptkit_export"], row["builder_alone"], row["adaptkit_export"]["parity"]
        check = (
            f"tokens identical {par['tokens_identical']}, max abs Δlogits {par['prefill_max_abs']:.1e} "
            f"(logits up to {par['prefill_scale']})"
            if precision == "fp32"
            else f"top-1 agreement {par['top1_agreement']:.0%}, max abs Δlogits {par['prefill_max_abs']:.2f} "
            f"(logits up to {par['prefill_scale']})"
        )
        out.append(
            f"| {precision} | {a['peak_rss_gib']} | {b['peak_rss_gib']} | {row['peak_ratio']}x "
            f"| {a['wall_s']} | {b['wall_s']} | {check} |"
        )
    fp32 = r["export"].get("fp32", {})
    if "peak_over_model_fp32_bytes" in fp32:
        out += [
            "",
            f"The fp32 export's peak is {fp32['peak_over_model_fp32_bytes']}x the model's size in float32. "
            "The export takes longer than the builder alone by the streamed bake and the parity run "
            "(PyTorch generating 3 × 12 tokens with the adapter unmerged, then ONNX Runtime GenAI).",
        ]
    out += [
        "",
        "int4 agreement is measured here, not gated (`--min-agreement 0`): random weights are int4's "
        "worst case — incompressible Gaussian matrices in every layer and near-flat logits over 32000 "
        "tokens, so small errors flip the argmax. A trained checkpoint has neither; the default floor "
        "(80%) is set from one (the quality table below). The fp32 export is exact to the token.",
    ]
    g = r["generation"]
    tps = g["tokens_per_s"]
    names = {
        "onnx_int4": "ONNX Runtime GenAI, int4 export",
        "onnx_fp32": "ONNX Runtime GenAI, fp32 export",
        "pytorch_merged_fp32": "PyTorch `generate`, merged checkpoint, fp32",
        "pytorch_merged_bf16": "PyTorch `generate`, merged checkpoint, bf16",
        "pytorch_peft_unmerged_fp32": "PyTorch `generate`, PEFT adapter unmerged, fp32",
        "pytorch_peft_unmerged_bf16": "PyTorch `generate`, PEFT adapter unmerged, bf16",
    }
    base = tps["pytorch_peft_unmerged_fp32"]
    out += [
        "",
        f"**Generation** — batch 1, {g['new_tokens']} new tokens after a {g['prompt_tokens']}-token prompt, "
        "greedy, one process, same prompt; tokens/s over the whole call (prefill included).",
        "",
        "| runtime | tokens/s | vs PEFT unmerged fp32 |",
        "|---|---|---|",
        *[f"| {names.get(k, k)} | {v} | {v / base:.2f}x |" for k, v in tps.items()],
        "",
        f"The fp32 export's 64 tokens equal PEFT's fp32 tokens: {g['onnx_fp32_tokens_equal_peft_fp32']}.",
        "",
    ]
    return out


def _quality(r: dict) -> list[str]:
    fx, spec, ref = r["fixture"], r["fixture"]["spec"], r["reference"]
    base, lora, held, corpus = fx["base"], fx["adapter"], fx["held_out_loss"], fx["corpus"]
    win, rows, tokens = r["windows"], r["rows"], fx["corpus"]["tokens"]
    cores = r.get("machine", {}).get("cores")
    out = [
        *_opening("Quality of quantized exports on a trained model", r),
        "`python -m benchmarks --only quality` (`benchmarks/bench_quality.py`; the model is "
        "`benchmarks/quality_model.py`, built once and cached). Random weights are int4's worst case "
        "(the real-size table above); this is a model trained on real text, with an adapter.",
        "",
        f"**The model** — a Llama (hidden {spec['hidden']}, {spec['layers']} layers, {spec['heads']} "
        f"heads / {spec['kv_heads']} KV heads, intermediate {spec['intermediate']}, vocabulary "
        f"{spec['vocab']}, untied head; {fx['parameters']:,} parameters) trained from scratch on the "
        f"Python {fx['python']} standard library, which every machine has: {corpus['files']} `*.py` files "
        'under `sysconfig.get_paths()["stdlib"]` (tests, `site-packages` and the codec tables left out; '
        "1 file in 16 held out, by a hash of its path), tokenised by a byte-level BPE trained on the "
        f"training text ({tokens['code']['train']:,} training tokens of code). Plain PyTorch AdamW in "
        f"float32, {spec['steps']} steps of {spec['batch']}×{spec['seq']} tokens "
        f"({base['train_tokens']:,} tokens; warm-up, then cosine from {spec['lr']:g}), "
        f"{base['train_seconds'] / 60:.0f} minutes on {cores} shared cores ({base['tokens_per_s']} "
        f"tokens/s): training loss {base['train_loss_last_10pct']} (the last tenth of the steps), "
        f"held-out code loss {base['held_out_code_loss_initial']} at initialisation → "
        f"{base['held_out_code_loss']}. Small and briefly trained — far from converged — but trained: "
        "its weights are learnt, not Gaussian noise, and its logits depend on the text.",
        "",
        f"**The adapter** — `adaptkit train --backend lora`, rank {spec['lora_rank']} (alpha "
        f"{spec['lora_alpha']:g}) on all linear layers, {spec['lora_steps']} steps of "
        f"{spec['lora_batch']}×{spec['seq']} tokens ({lora['train_seconds'] / 60:.0f} minutes), on the "
        "documentation that ships with Python — the language-reference topics of `pydoc_data` and every "
        f"module, class and function docstring, read with `ast` ({tokens['docs']['train']:,} training "
        f"tokens): held-out docs loss {held['base']['docs']} → {held['base_with_adapter']['docs']}, "
        f"held-out code loss {held['base']['code']} → {held['base_with_adapter']['code']}.",
        "",
        f"**The measurement** — {win['count']} held-out windows of {win['tokens']} tokens, half code, "
        "half docs. The reference is PyTorch in float32 with the adapter attached unmerged (what every "
        f"export's parity check compares with): perplexity {ref['ppl']} (code "
        f"{ref['ppl_by_domain']['code']}, docs {ref['ppl_by_domain']['docs']}). **top-1**: the "
        "variant's argmax is the reference's, over every position; **Δppl**: perplexity against the "
        "reference's; **KL**: KL(reference ‖ variant) per position, nats; **probe**: what `adaptkit "
        "export --onnx` gates on (`--min-agreement`: teacher-forced top-1 agreement over "
        f"{ref['probe_steps']} greedy steps of the reference from the exporter's 3 random-token "
        "prompts), computed for every row; **MiB**: `model.onnx` + `model.onnx.data` (PyTorch: "
        "`model.safetensors`); **score s**: all windows after a warm-up (shared cores: compare within "
        "the table only). `int4 b32/acc4` is what `adaptkit export --onnx --precision int4` writes — "
        "the model builder's defaults for the CPU provider, block size 32 and `accuracy_level` 4 (int8 "
        "activations); the other int4 rows are the same builder child with `block_size`/"
        "`accuracy_level` set (what `adaptkit export --onnx --int4-block-size N "
        "--int4-accuracy-level L` sets) on the same bake; level 0 "
        "(unset: float activations) is what `--device cuda` gets. int4 graphs keep the embedding table "
        f"in float32 ({spec['vocab']}×{spec['hidden']}: {spec['vocab'] * spec['hidden'] * 4 / 2**20:.0f} "
        "MiB of their size; the builder quantizes MatMul weights).",
        "",
        "| variant | MiB | top-1 | ppl | Δppl | KL | probe | score s |",
        "|---|---|---|---|---|---|---|---|",
        f"| PyTorch fp32 + adapter unmerged (reference) | {ref['size_mib']} | | {ref['ppl']} | | | | "
        f"{ref['score_s']} |",
    ]
    for name, row in rows.items():
        out.append(
            f"| {_QUALITY_NAMES.get(name) or _quality_label(name)} | {row['size_mib']} | "
            f"{row['top1_agreement']:.2%} | {row['ppl']} | {row['ppl_delta_pct']:+.2f}% | {row['kl']:.2g} | "
            f"{row['probe_agreement']:.1%} | {row['score_s']} |"
        )
    return [*out, "", *_quality_reading(r), ""]


_QUALITY_NAMES = {
    "pytorch_fp32_no_adapter": "PyTorch fp32, the base without the adapter",
    "onnx_fp32": "ONNX fp32 (`--precision fp32`)",
    "onnx_fp16": "ONNX fp16 (`--precision fp16`)",
    "onnx_int4_b32_acc4": "ONNX int4 b32/acc4 (`--precision int4`)",
    "gguf_q8_0": "llama.cpp Q8_0 base + `adapter.gguf` (`--gguf`)",
    "gguf_q4_k_m": "llama.cpp Q4_K_M base + `adapter.gguf` (`--gguf`)",
    "gguf_q4_0": "llama.cpp Q4_0 base + `adapter.gguf` (`--gguf`)",
}


def _quality_label(name: str) -> str:
    if name.startswith("onnx_int4_"):
        return "ONNX int4 " + name.removeprefix("onnx_int4_").replace("_", "/")
    return f"`{name}`"


def _quality_reading(r: dict) -> list[str]:
    """The paragraphs under the quality table, from its numbers."""
    rows, floors, steps = r["rows"], r["default_floors"], r["reference"]["probe_steps"]
    int4 = {k: v for k, v in rows.items() if k.startswith("onnx_int4_")}
    if not int4:
        return []

    def flips(agreement: float) -> int:
        return round((1 - agreement) * steps)

    def refused_from(floor: float) -> int:  # the fewest flips the floor refuses
        return math.floor((1 - floor) * steps + 1e-9) + 1

    agree = [v["top1_agreement"] for v in int4.values()]
    ppl = [v["ppl_delta_pct"] for v in int4.values()]
    text = (
        f"int4 keeps {min(agree):.1%}–{max(agree):.1%} of the reference's next-token argmaxes at every "
        f"block size and accuracy level measured, perplexity {min(ppl):+.2f}% to {max(ppl):+.2f}%."
    )
    by_block = {v["graph"]["block_size"]: v for k, v in int4.items() if k.endswith("acc4") and "graph" in v}
    if len(by_block) > 1:
        sizes = sorted(by_block)
        text += (
            " The block size shows in the distributions more than in the argmax: from block "
            f"{sizes[0]} to {sizes[-1]} (accuracy level 4) KL goes {by_block[sizes[0]]['kl']:.2g} → "
            f"{by_block[sizes[-1]]['kl']:.2g} and perplexity {by_block[sizes[0]]['ppl_delta_pct']:+.2f}% → "
            f"{by_block[sizes[-1]]['ppl_delta_pct']:+.2f}%."
        )
    pairs = [
        (v, int4[k.replace("acc4", "acc0")])
        for k, v in int4.items()
        if k.endswith("acc4") and k.replace("acc4", "acc0") in int4
    ]
    if pairs:
        gap_agree = max(abs(a["top1_agreement"] - b["top1_agreement"]) for a, b in pairs)
        gap_ppl = max(abs(a["ppl"] / b["ppl"] - 1) for a, b in pairs)
        text += (
            " Accuracy level 4 (int8 activations) against 0 at the same block size: agreement within "
            f"{100 * gap_agree:.2f} points, perplexity within {100 * gap_ppl:.2f}% — it flips next to no "
            "greedy tokens here."
        )
    if "onnx_fp16" in rows:
        fp16 = rows["onnx_fp16"]
        text += f" fp16 agrees on {fp16['top1_agreement']:.2%} (perplexity {fp16['ppl_delta_pct']:+.3f}%)."
    lines = [text]
    gguf = {k: v for k, v in rows.items() if k.startswith("gguf_")}
    if gguf and "onnx_int4_b32_acc4" in rows:
        default, q4km = rows["onnx_int4_b32_acc4"], gguf.get("gguf_q4_k_m")
        text = (
            "llama.cpp, with the base quantized by its own quantizer and the adapter applied unmerged "
            "from `adaptkit export --gguf`: "
            + ", ".join(
                f"{k.removeprefix('gguf_').upper()} {v['top1_agreement']:.2%} ({v['ppl_delta_pct']:+.2f}%)"
                for k, v in gguf.items()
            )
            + "."
        )
        if q4km is not None:
            text += (
                f" At 4 bits its k-quants keep more than ONNX int4 does: Q4_K_M "
                f"{q4km['top1_agreement']:.2%} against {default['top1_agreement']:.2%} for the int4 "
                "export's defaults (block 32; ONNX keeps the embeddings in float32 as well). The adapter "
                "is exact in both: the loss is the base's quantization."
            )
        lines += ["", text]
    lost = rows.get("pytorch_fp32_no_adapter")
    if lost is not None:
        worst = min(int4.values(), key=lambda v: v["top1_agreement"])
        ratio = (1 - lost["top1_agreement"]) / max(1 - worst["top1_agreement"], 1e-9)
        lines += [
            "",
            f"The adapter itself moves {1 - lost['top1_agreement']:.1%} of the argmaxes on the held-out "
            f"text (the base alone agrees on {lost['top1_agreement']:.1%}); the worst int4 graph flips "
            f"{ratio:.0f}x fewer"
            + (", so what the adapter does survives int4." if ratio >= 3 else ": int4 blurs the adapter.")
            + " On the exporter's random-token probe the adapter moves only "
            f"{1 - lost['probe_agreement']:.1%} of the steps.",
        ]
    probes = [v["probe_agreement"] for v in int4.values()]
    fp16_probe = rows.get("onnx_fp16", {}).get("probe_agreement")
    para = (
        f"**Default floors** (`--min-agreement`, `adaptkit_onnx.parity.TOLERANCES`): int4 "
        f"{floors['int4']:.0%}, refusing {refused_from(floors['int4'])} or more flips of the "
        f"{steps} probe steps; fp16 {floors['fp16']:.0%}, refusing {refused_from(floors['fp16'])} or more. "
        f"Measured here: every int4 graph {min(probes):.1%} or more ({flips(min(probes))} flips at most)"
        + ("" if fp16_probe is None else f", fp16 {fp16_probe:.1%} ({flips(fp16_probe)} flips)")
    )
    if lost is not None:
        caught = lost["probe_agreement"] < floors["int4"]
        para += (
            f"; an export that lost the adapter would score {lost['probe_agreement']:.1%} "
            f"({flips(lost['probe_agreement'])} flips), which the int4 floor "
            + ("refuses" if caught else "lets through")
        )
    para += (
        ". A floor catches gross failures — a graph wired wrong, garbled weights, an adapter lost "
        "when it moves enough of the probe's steps — not quantization noise, so it sits well below "
        "what a correct export scores; this is one small model, and bigger vocabularies and real "
        "checkpoints may flip more, so `--min-agreement` overrides it."
    )
    return [*lines, "", para]


def _qlora(r: dict) -> list[str]:
    return [
        *_opening("QLoRA on CPU: `qlora` backend vs PEFT + bitsandbytes", r),
        f"Model hidden {r['model']['hidden']}, {r['model']['layers']} layers; NF4 + double quantization "
        f"(blocksize 64) on all linear layers but the head; rank {r['rank']}; "
        f"batch {r['batch'][0]}×{r['batch'][1]}; the same bitsandbytes AdamW; identical initial factors; "
        "steps alternate.",
        "",
        *_race(r, "PEFT + bitsandbytes"),
        "",
        f"4-bit base: {r['quantized_mib']} MiB vs {r['bf16_equivalent_mib']} MiB in bf16, "
        f"{r['bits_per_quantized_param']} bits per quantized parameter (NF4 + double quantization: 4.127). "
        f"Losses over the first steps differ by at most {r['max_loss_difference_first_5_steps']:.1e}.",
        "",
        "GPU numbers (peak CUDA memory, step time and losses of `qlora` vs PEFT + BitsAndBytesConfig on "
        "1.1B- and 7B-shaped models) come "
        "from `benchmarks/gpu_qlora.sh` on a CUDA machine; it has not been run yet.",
        "",
    ]


def _loraplus(r: dict) -> list[str]:
    out = [
        *_opening("LoRA+ (third-party example backend) vs `lora` on the demo task", r),
        f"`python -m benchmarks --only loraplus`. The demo's two skills on the cached demo base, "
        f"all linear layers at rank {r['rank']}, batch 32, cosine schedule with 10 warm-up steps, the same "
        f"seed, data and initial factors; `loraplus` trains `B` at {r['ratio']}x the rate of `A` "
        "(`examples/loraplus_backend`). Training loss is the mean of the last 20 steps; held-out "
        "loss and exact-match accuracy are on 100 unseen prompts.",
        "",
        "| lr | skill | steps | train loss lora | train loss loraplus | held-out loss lora | "
        "held-out loss loraplus | accuracy lora | accuracy loraplus |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in r["rows"]:
        a, b = row["lora"], row["loraplus"]
        out.append(
            f"| {row['lr']:g} | {row['skill']} | {row['steps']} | {a['train_loss_last20']} | "
            f"{b['train_loss_last20']} | {a['held_out_loss']} | {b['held_out_loss']} | "
            f"{a['held_out_accuracy']:.0%} | {b['held_out_accuracy']:.0%} |"
        )
    wins = sum(row["loraplus"]["train_loss_last20"] < row["lora"]["train_loss_last20"] for row in r["rows"])
    out += [
        "",
        f"LoRA+ ends with the lower training loss in {wins} of {len(r['rows'])} runs; its advantage is "
        "largest at the lower base rates, where plain LoRA's `B` moves too slowly.",
        "",
    ]
    return out


def _realsize(r: dict) -> list[str]:
    q, lo, setup = r["qlora"], r["lora_bf16"], r["setup"]
    return [
        *_opening("Real-size training: whole processes, `adaptkit train` vs PEFT", r),
        f"`python -m benchmarks --only realsize`. A {r['model']['name']}-shaped Llama with random weights "
        f"(bf16, 1 GB shards, built once and cached), rank {setup['rank']} / "
        f"alpha {setup['alpha']} on all seven projections, batch {setup['batch'][0]}×{setup['batch'][1]} "
        "`input_ids`, "
        "2 CPU cores. Each run is its own process; peak RSS is the kernel's high-water mark of that process, "
        "wall time includes start-up, loading (and quantizing) and every step. The PEFT side is "
        "`benchmarks/peft_train.py`: transformers `BitsAndBytesConfig` (NF4, double quantization) + "
        "`prepare_model_for_kbit_training` for QLoRA, the bf16 base for LoRA, with adaptkit's initial "
        "factors and data order. adaptkit runs with `--eval-records 0` (like the PEFT loop, no "
        "before/after evaluation pass; by default it evaluates an eighth of the records it "
        "trains on, at most 64, before and after).",
        "",
        "| | adaptkit peak RSS GiB | PEFT peak RSS GiB | ratio | adaptkit wall s | PEFT wall s | ratio |",
        "|---|---|---|---|---|---|---|",
        f"| QLoRA ({setup['qlora_steps']} steps) | {q['adaptkit']['peak_rss_gib']} | "
        f"{q['peft']['peak_rss_gib']} | {q['peak_rss_ratio']} | {q['adaptkit']['wall_s']} | "
        f"{q['peft']['wall_s']} | {q['wall_ratio']} |",
        f"| LoRA, bf16 base ({setup['lora_steps']} steps) | {lo['adaptkit']['peak_rss_gib']} | "
        f"{lo['peft']['peak_rss_gib']} | {lo['peak_rss_ratio']} | {lo['adaptkit']['wall_s']} | "
        f"{lo['peft']['wall_s']} | |",
        "",
        f"LoRA on the bf16 base: median step {lo['adaptkit']['step_s']} s vs {lo['peft']['step_s']} s "
        f"(ratio {lo['step_time_ratio']}); losses agree to {lo['max_loss_difference']:.1e} (bf16 rounding of "
        "the base's activations). QLoRA losses "
        f"agree to {q['max_loss_difference']:.1e} (same quantized weights, same factors, same optimizer).",
        "",
    ]


def _shard(r: dict) -> list[str]:
    one, two, setup = r["one_process"], r["sharded_2"], r["setup"]
    batch, seq = setup["global_batch"]
    peaks = ", ".join(f"{p}" for p in two["peak_gib_per_process"])
    ratios = ", ".join(f"{x}" for x in r["peak_ratio_per_process"])
    account_one, account_two = one["memory_account"], two["memory_account"]
    base_one, base_two = account_one["base_bytes"] / 2**30, account_two["base_bytes"] / 2**30
    return [
        *_opening(
            "Sharded training: `torchrun --nproc_per_node 2 -m adaptkit train --shard` vs one process", r
        ),
        f"`{setup['command']}`. The `realsize` base ({r['model']['name']}, random weights, bf16, built once "
        f"and cached), `{setup['backend']} --base-dtype {setup['base_dtype']}`, rank {setup['rank']} / alpha "
        f"{setup['alpha']} on all seven projections, {setup['steps']} steps of the same {batch}×{seq} "
        f"`input_ids` batches, `--eval-records 0`: one process with `--batch-size {batch}` (2 threads) "
        f"against two FSDP2 processes with `--batch-size {batch // 2}` each (torchrun: 1 thread each), on "
        "the same 2 cores. Peak is each process's own RSS high-water mark (`VmHWM`, from its start to "
        "the end of training, as its `--metrics` log reports it).",
        "",
        "| | peak RSS GiB per process | vs one process | median step s | wall s | base bytes held |",
        "|---|---|---|---|---|---|",
        f"| one process | {one['peak_gib_per_process'][0]} | 1 | {one['step_s']} | {one['wall_s']} | "
        f"{base_one:.3f} GiB |",
        f"| 2 processes, `--shard` | {peaks} | {ratios} | {two['step_s']} | {two['wall_s']} | "
        f"{base_two:.3f} GiB each |",
        "",
        f"Losses: one process {', '.join(f'{x:.4f}' for x in one['losses'])}; sharded "
        f"{', '.join(f'{x:.4f}' for x in two['losses'])} (largest difference "
        f"{r['max_loss_difference']:.1e}: bf16 matmuls over a batch of {batch} rows vs {batch // 2}). "
        f"Step time ratio {r['step_time_ratio']} (sharded / one process)"
        + (
            f"; the machine's 1-minute load average was {r['load_average'][0]} when the benchmark began "
            f"and {r['load_average'][1]} when it ended (on 2 cores: other jobs shared them, which slows "
            "the steps, the sharded ones most, and leaves the peaks alone)."
            if max(r.get("load_average", [0])) > 1.5
            else "."
        ),
        "",
        f"Only the base is divided. One process holds {base_one:.3f} GiB of base and peaks "
        f"{one['peak_gib_per_process'][0] - base_one:.3f} GiB above it; each sharded process holds "
        f"{base_two:.3f} GiB and peaks {max(two['peak_gib_per_process']) - base_two:.3f} GiB above it: the "
        "interpreter and its libraries, the LoRA factors with their optimizer state, the activations of "
        "its micro-batch, and the unit FSDP gathers (the largest, the output head, whole for the "
        "moment it computes, once in the gather buffer and once copied out of it). That part does not "
        "shrink with more processes, so the ratio nears 1/N only as the base outgrows it.",
        "",
    ]


def _demo(r: dict) -> list[str]:
    seeds = r["seeds"]

    def cell(v: dict) -> str:
        return f"{100 * v['mean']:.1f}% ({100 * v['min']:.1f}–{100 * v['max']:.1f})"

    out = [
        *_opening("The demo table, 3 seeds, a fresh cache", r),
        f"`python -m benchmarks --only demo`: `adaptkit demo --seed S` for S = {', '.join(map(str, seeds))} "
        "with an empty cache folder, so the base is pre-trained from scratch as on a new machine. "
        "Held-out exact-match accuracy, mean (min–max) over the seeds; `tuned` is `combine --tune` "
        "(one weight per rank-1 component, worst-skill objective, 500 steps) on 400 examples of each "
        "skill, a quarter of them held out. Two variants: the demo as it ships (each adapter trained on "
        "its own skill only, as published adapters are) and `--replay` (each also trained to leave the "
        "other skill's inputs unchanged).",
    ]
    titles = {
        "independent": "`adaptkit demo` (adapters trained independently)",
        "replay": "`adaptkit demo --replay`",
    }
    for variant, v in r["variants"].items():
        rows = v["rows"]
        skills = [k for k in next(iter(rows.values())) if k != "worst_skill"]
        out += [
            "",
            f"### {titles.get(variant, variant)}",
            "",
            "| model | " + " | ".join(skills) + " | worst skill |",
            "|---|" + "---|" * (len(skills) + 1),
        ]
        for name, row in rows.items():
            out.append(
                f"| {name} | " + " | ".join(cell(row[s]) for s in skills) + f" | {cell(row['worst_skill'])} |"
            )
        per = v["per_seed"]
        out += [
            "",
            "Per seed: `tuned` minus the best static strategy of that seed on the worst skill "
            + ", ".join(f"{100 * p['tuned_minus_best_static']:+.1f} (`{p['best_static']}`)" for p in per)
            + " points; `tuned`'s worst skill is "
            + ", ".join(f"{100 * p['tuned_over_weaker_solo']:.1f}%" for p in per)
            + " of the weaker solo adapter's accuracy. Tuning took "
            + ", ".join(f"{t:.1f}" for t in v["tune_seconds"])
            + " s; the whole demo "
            + ", ".join(f"{t:.0f}" for t in v["demo_seconds"])
            + " s (the first run includes pre-training the base).",
        ]
    out.append("")
    return out


def _llamacpp(r: dict) -> list[str]:
    s = r["setup"]
    out = [
        *_opening(f"llama.cpp against ONNX Runtime GenAI ({r['model']})", r),
        f"The same base and rank-{s['adapter_rank']} adapter on all seven projections, deployed both ways "
        "adaptkit exports it: a base GGUF quantized by llama.cpp's own quantizer plus "
        "`adaptkit export --gguf`'s adapter (applied unmerged, as llama.cpp does), and "
        "`adaptkit export --onnx --precision int4` (the adapter baked in). Batch 1, greedy, each runtime "
        f"in its own process: a {s['prompt_tokens']}-token prompt in one call (prefill), then "
        f"{s['new_tokens']} tokens one at a time (decode), after a warm-up, best of 3. Peak RSS is "
        "the process's own (`VmHWM`; llama.cpp maps the GGUF, and the pages it reads count). Command: "
        "`python -m benchmarks --only llamacpp`. The machine is shared and loaded: read ratios, not "
        "absolutes.",
        "",
        "llama-cpp-python is built here with AVX-512 and without AMX "
        "(`CMAKE_ARGS='-DGGML_NATIVE=OFF ... -DGGML_AMX_INT8=OFF'`, the full line in "
        "`benchmarks/bench_llamacpp.py`): this virtual machine advertises AMX, and llama.cpp's native "
        "build then runs quantized weights through AMX tiles the machine refuses (SIGILL). The tests "
        "run float32 GGUFs, which never take that path, so the default build serves them.",
        "",
        "| runtime | threads | prefill tokens/s | decode tokens/s | peak RSS MiB | files MiB |",
        "|---|---|---|---|---|---|",
    ]
    for row in r["rows"]:
        out.append(
            f"| {row['runtime']} | {row['threads']} | {row['prefill_tok_s']} | {row['decode_tok_s']} "
            f"| {row['peak_rss_mib']} | {row['file_mib']} |"
        )
    best = {}
    for row in r["rows"]:
        key = row["runtime"]
        if key not in best or row["decode_tok_s"] > best[key]["decode_tok_s"]:
            best[key] = row
    names = {
        "b32": "ORT GenAI int4 block 32 level 4",
        "b128": "ORT GenAI int4 block 128 level 4",
        "q4km": "llama.cpp Q4_K_M + adapter.gguf",
    }
    if all(n in best for n in names.values()):
        b32, b128, q4km = (best[names[k]] for k in ("b32", "b128", "q4km"))
        out += [
            "",
            f"Best decode speed of each: the int4 export's defaults (block 32, level 4) "
            f"{b32['decode_tok_s']} tokens/s, {b32['decode_tok_s'] / q4km['decode_tok_s']:.2f}x llama.cpp "
            f"Q4_K_M with the adapter ({q4km['decode_tok_s']}); block 128 {b128['decode_tok_s']} "
            f"({b128['decode_tok_s'] / q4km['decode_tok_s']:.2f}x), with a {b128['file_mib']} MiB file "
            f"against {b32['file_mib']} and a peak of {b128['peak_rss_mib']} MiB against "
            f"{b32['peak_rss_mib']}. The defaults stay at block 32 and level 4: the quality table "
            "above shows block 128 losing more of the argmaxes and perplexity, and neither int4 setting "
            "matching Q4_K_M's quality, so block 128 is a choice for when speed matters more "
            "(`--int4-block-size 128`). Level 0 is slower on this CPU at no measured gain in quality. "
            "Threads: with the machine otherwise idle both runtimes are faster on 2 threads than on 1; "
            "under load llama.cpp's spinning threads stall each other (down to a few tokens/s), so "
            "`adaptkit generate` leaves llama.cpp's thread count to llama-cpp-python (half the CPUs) "
            "and gives ONNX Runtime GenAI every usable core.",
        ]
    return [*out, ""]


RENDER = {
    "combine": _combine,
    "train": _train,
    "export": _export,
    "qlora": _qlora,
    "loraplus": _loraplus,
    "realsize": _realsize,
    "shard": _shard,
    "generation": _generation,
    "quality": _quality,
    "llamacpp": _llamacpp,
    "demo": _demo,
}


def render(results: Path) -> str:
    parts = [HEADER]
    for name, fn in RENDER.items():
        f = results / f"{name}.json"
        if f.exists():
            parts += fn(json.loads(f.read_text()))
        else:
            parts += [f"## {name}", "", f"Not run yet: `python -m benchmarks --only {name}`.", ""]
    return "\n".join(parts) + "\n"
