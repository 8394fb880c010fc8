"""Generation-ready export: a KV-cache decoder in ONNX Runtime GenAI's folder layout.

Merged (``--onnx``)::

    base checkpoint ──bake_checkpoint (streamed, one tensor at a time)──▶ scratch/merged
    scratch/merged ──model builder (child process)──▶ OUT/model.onnx + genai_config.json
    parity: PyTorch base + adapters *unmerged* vs ORT GenAI, greedy, on probe prompts

At most one copy of the model is in memory at any time: the bake streams, the builder runs
alone in its child process, the PyTorch reference is loaded after it has exited, and the
exported model is loaded after the reference is gone.

Parity rules (``fp32``): the greedy tokens of every probe are identical and the prefill
logits agree within ``atol``. ``fp16``/``int4``: teacher-forced top-1 agreement must reach
``min_agreement`` (defaults in :data:`DEFAULT_MIN_AGREEMENT`), and the report gives the
logits error and how far the free-running tokens agree. In every case the adapters must
change the reference's logits by more than :data:`EFFECT_FLOOR` — a parity test that cannot fail is
worthless. Anything short of that writes nothing.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from adaptkit.api import AdaptkitError

#: Prefill-logit tolerance of an fp32 export (fp16/int4 report the error; agreement decides).
#: Above the logits-only graph's 1e-4: the fused attention kernels sum in another order, and
#: at 1.1B parameters logits reach |20| (measured: docs/benchmarks.md).
DEFAULT_ATOL = 1e-3
#: An adapter must move the PyTorch reference's logits by more than this (fp32 on both sides).
EFFECT_FLOOR = 1e-4
#: The floor on teacher-forced top-1 agreement, over all probe steps.
DEFAULT_MIN_AGREEMENT = {"fp32": 1.0, "fp16": 0.9, "int4": 0.6}


def export_merged_generation(
    folder: Path, config: Any, adapters: list[Any], out: Path, options: dict[str, Any], log: Any
) -> dict[str, Any]:
    """Bake (streamed), build, verify. ``out`` is the staging folder of the atomic write."""
    import torch

    from adaptkit.api.export import combined
    from adaptkit.api.files import scratch_directory
    from adaptkit.api.nn import bake_checkpoint
    from adaptkit_onnx.builder import finish_config, run_builder
    from adaptkit_onnx.export_folder import check_written_export

    precision, device = options["precision"], options["device"]
    adapter = combined(adapters)
    report: dict[str, Any] = {"graph": "generation", "precision": precision, "device": device}
    # Scratch beside the output (the filesystem the user chose for it), not in /tmp: the baked
    # checkpoint is the size of the model.
    with scratch_directory(out.parent) as scratch:  # pid-named: a killed run's is swept
        src = folder
        if adapter is not None:
            src = scratch / "merged"
            src.mkdir()
            # fp32 graphs get W + ΔW computed and stored in float32, never rounded to bf16 first.
            cast = torch.float32 if precision == "fp32" else None
            log(f"baking {len(adapter.targets)} targets into a scratch checkpoint (streamed)")
            baked = bake_checkpoint(folder, adapter, src, cast=cast)
            report["bake"] = {k: baked[k] for k in ("targets_merged", "largest_tensor_bytes")}
        log(f"building the {precision} generation graph with ONNX Runtime GenAI's model builder")
        report["builder"] = run_builder(src, out, precision, device, scratch)
    finish_config(out, config, device)
    report["tokenizer"] = check_written_export(out)
    if options.get("verify", True):
        report.update(verify_generation(folder, config, {"merged": adapter}, out, options, log))
    return report


def verify_generation(
    folder: Path,
    config: Any,
    variants: dict[str, Any],
    out: Path,
    options: dict[str, Any],
    log: Any,
    *,
    adapter_files: dict[str, Path] | None = None,
) -> dict[str, Any]:
    """Compare the export with PyTorch on probe prompts, for each named variant.

    Args:
        folder: The base model folder (the reference loads from it, once).
        config: Its Hugging Face config.
        variants: ``name -> adapter (or None for the plain base)`` to attach unmerged.
        out: The exported folder.
        options: ``precision``, ``device``, ``atol``, ``min_agreement``.
        log: Progress lines.
        adapter_files: ``name -> .onnx_adapter`` to activate per variant (``--lora-inputs``).

    Raises:
        AdaptkitError: parity fails, or an adapter does not change the output.
    """
    import torch

    from adaptkit.api import nn as lora
    from adaptkit.api.models import load_causal_lm, load_streamed
    from adaptkit_onnx import generation as gen
    from adaptkit_onnx.builder import release_memory

    precision = options["precision"]
    atol = options["atol"]
    floor = options["min_agreement"]
    prompts = gen.probe_prompts(int(config.vocab_size))
    eos = gen.eos_ids(config)
    steps = gen.PROBE_NEW_TOKENS

    log("parity: PyTorch reference (adapters unmerged)")
    # Tensor by tensor: from_pretrained would keep most of a bf16 checkpoint's pages resident
    # on top of the float32 model (measured at 1.1B: 6.5 GB for a 4.4 GB model).
    model = load_streamed(folder, torch.float32) or load_causal_lm(folder, dtype="fp32")[0]
    base_first = [gen.torch_prefill_logits(model, p) for p in prompts]
    references: dict[str, list[Any]] = {}
    speed: dict[str, list[tuple[int, float]]] = {"pytorch_unmerged": [], "onnx": []}
    effects: dict[str, float] = {}
    for name, adapter in variants.items():
        if adapter is not None:
            # A WeightedAdapter (one of several --lora-inputs adapters) or the combined Adapter.
            weighted = hasattr(adapter, "weight")
            lora.load(model, adapter.adapter if weighted else adapter, dtype="fp32")
            for layer in lora.lora_layers(model).values() if weighted else ():
                layer.scale *= adapter.weight  # the manifest's weight
        rows = []
        start = time.perf_counter()
        for p in prompts:
            tokens, first = gen.torch_greedy(model, p, steps, eos)
            rows.append((p, tokens, first))
        speed["pytorch_unmerged"].append((sum(len(r[1]) for r in rows), time.perf_counter() - start))
        references[name] = rows
        effects[name] = max(float(abs(r[2] - b).max()) for r, b in zip(rows, base_first, strict=True))
        if adapter is not None:
            lora.detach(model)
    del model
    release_memory()

    log(f"parity: ONNX Runtime GenAI ({precision})")
    # A CUDA-flavoured graph is checked on the CPU provider where there is no GPU (ONNX Runtime
    # runs the same operators there): it can be built and verified on a CPU-only machine.
    verified_on = "cuda" if options["device"] == "cuda" and torch.cuda.is_available() else "cpu"
    results: dict[str, Any] = {}
    try:
        runtime = gen.GenaiModel(out, verified_on)
        for name, path in (adapter_files or {}).items():
            runtime.load_adapter(path, name)
        for name, rows in references.items():
            active = name if adapter_files and name in adapter_files else None
            exported = []
            for prompt, tokens, _ in rows:
                start = time.perf_counter()
                got, first = runtime.generate(prompt, steps, adapter=active)
                speed["onnx"].append((len(got), time.perf_counter() - start))
                forced = runtime.prefill_logits(prompt + tokens, adapter=active)
                exported.append((got, first, forced))
            results[name] = gen.compare_runs(rows, exported, eos)
    except RuntimeError as exc:  # ONNX Runtime (GenAI) refusing or failing to run the graph
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise AdaptkitError(
            f"ONNX Runtime GenAI could not run the exported graph: {first_line}; nothing was written"
        ) from None
    runtime = None
    release_memory()

    parity = []
    for name, rows in results.items():
        for row in rows:
            parity.append({"variant": name, **row})
    report: dict[str, Any] = {
        "parity": parity,
        # Probe-sized runs (a few dozen tokens), a hint only: benchmarks/ measures speed properly.
        "probe_tokens_per_s": {
            side: sum(n for n, _ in runs) / max(sum(t for _, t in runs), 1e-9) for side, runs in speed.items()
        },
        "adapter_effect_max_abs": effects,
        "atol": atol,
        "min_agreement": floor,
        "verified_on": verified_on,
    }
    for name, rows in results.items():
        worst = max(r["prefill_max_abs"] for r in rows)
        steps_total = sum(r["new_tokens"] for r in rows)
        agreement = sum(r["top1_agreement"] * r["new_tokens"] for r in rows) / max(steps_total, 1)
        log(
            f"parity {name:>12}: tokens identical {sum(r['tokens_identical'] for r in rows)}/{len(rows)}, "
            f"top-1 agreement {agreement:.1%}, prefill max |Δlogits| {worst:.2e}"
        )
        if precision == "fp32":
            if not all(r["tokens_identical"] for r in rows):
                bad = next(r for r in rows if not r["tokens_identical"])
                raise AdaptkitError(
                    f"{name}: the exported model's greedy tokens differ from PyTorch's after "
                    f"{bad['matching_prefix']} of {bad['new_tokens']} (prompt of {bad['prompt_tokens']} "
                    "tokens); nothing was written"
                )
            if worst > atol:
                raise AdaptkitError(
                    f"{name}: ONNX Runtime logits differ from PyTorch by {worst:.3g} > atol {atol:g}; "
                    "nothing was written",
                    hint="raise --atol if this is expected",
                )
        elif agreement < floor:
            raise AdaptkitError(
                f"{name}: {precision} top-1 agreement with PyTorch is {agreement:.1%} < "
                f"{floor:.0%}; nothing was written",
                hint="lower --min-agreement if this loss is acceptable, or export fp32",
            )
        if variants[name] is not None and effects[name] <= EFFECT_FLOOR:
            raise AdaptkitError(
                f"{name}: the adapters do not change the model's output (max |Δlogits| = "
                f"{effects[name]:.3g}); nothing was written",
                hint="check the adapter matches this base model",
            )
    return report
