"""The baked generation graph (``--onnx``): a KV-cache decoder in ONNX Runtime GenAI's folder
layout, with ``W + ΔW`` in its weights::

    base checkpoint ──bake_checkpoint (streamed, one tensor at a time)──▶ scratch/merged
    scratch/merged ──model builder (child process)──▶ OUT/model.onnx + genai_config.json
    parity: PyTorch base + adapters *unmerged* vs ORT GenAI, greedy, on probe prompts

At most one copy of the model is in memory at any time: the bake streams, the builder runs
alone in its child process, the PyTorch reference is loaded after it has exited, and the
exported model is loaded after the reference is gone.

The parity rules and their tolerances are :mod:`adaptkit_onnx.parity`'s.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def export_baked(
    folder: Path, config: Any, adapters: list[Any], out: Path, options: dict[str, Any], log: Any
) -> dict[str, Any]:
    """Bake (streamed), build, verify. ``out`` is the staging folder of the atomic write."""
    import torch

    from adaptkit.api.export import combined
    from adaptkit.api.files import scratch_directory
    from adaptkit.api.nn import bake_checkpoint
    from adaptkit_onnx.generation.builder import finish_config, run_builder
    from adaptkit_onnx.runtime.export_folder import check_written_export

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
            report["bake"] = {k: baked[k] for k in ("targets_baked", "largest_tensor_bytes")}
        log(f"building the {precision} generation graph with ONNX Runtime GenAI's model builder")
        report["builder"] = run_builder(src, out, precision, device, scratch, int4=options.get("int4"))
    finish_config(out, config, device)
    report["tokenizer"] = check_written_export(out)
    if options.get("verify", True):
        from adaptkit_onnx.parity import verify_generation

        report.update(verify_generation(folder, config, {"merged": adapter}, out, options, log))
    return report
