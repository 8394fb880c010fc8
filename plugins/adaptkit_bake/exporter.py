"""The ``merged`` exporter (see the package docstring)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any, ClassVar

from adaptkit.errors import AdaptkitError


#: Weight files never copied (pickles are never even opened).
class MergedExporter:
    name = "merged"
    description = "HF model directory with W + ΔW baked in, streamed tensor by tensor"
    requires: ClassVar[dict[str, str]] = {"torch": "torch", "safetensors": "safetensors"}

    def export(self, request: Any, log: Any) -> dict[str, Any]:

        from adaptkit.exporting import combined, may_replace
        from adaptkit.io.atomic import atomic_directory
        from adaptkit.io.models import resolve_model, safetensors_files, side_files
        from adaptkit_bake.stream import stream_update, tensor_index

        folder = resolve_model(request.model)
        adapter = combined(request.adapters)
        if adapter is None:
            raise AdaptkitError("export --merged needs at least one --adapter")
        files = safetensors_files(folder)
        headers = {f: tensor_index(f) for f in files}  # each header read (and checked) once
        index = {name: f for f, header in headers.items() for name in header}
        tensors = {
            name: (info.get("dtype"), tuple(info.get("shape") or ()))
            for header in headers.values()
            for name, info in header.items()
        }
        from adaptkit.nn.baking import add_delta, target_delta
        from adaptkit.nn.placement import build_skeleton, parameter_layout

        skeleton = build_skeleton(folder)
        plan = _plan(adapter, tensors, folder, skeleton)
        # Saved modules replace base tensors (PEFT's modules_to_save); a LoRA update on the same
        # weight is added to the replacement, as PEFT's merge does.
        saved_params = {f"{m}.{k}": t for m, e in adapter.saved.items() for k, t in e.params.items()}
        replace = parameter_layout({k: tuple(t.shape) for k, t in saved_params.items()}, tensors, skeleton)
        replacement = {name: saved_params[param] for param, name in replace.items()}

        merge_base = request.options.get("merge_base") or "original"
        if merge_base not in ("original", "dequantized"):
            raise AdaptkitError(f"merge_base must be 'original' or 'dequantized', got {merge_base!r}")
        blocksize = int(request.options.get("blocksize") or 64)
        # For QLoRA adapters (or on request) report how far the 4-bit base is from the original.
        diagnose = (
            request.options.get("merge_base") is not None or adapter.producer.component == "backend:qlora"
        )
        gaps: dict[str, float] = {}
        updates: dict[Path, dict[str, Any]] = {}
        ratios: dict[str, float] = {}
        for target, (tensor_name, conv1d) in plan.items():
            pair = adapter.targets[target]

            def update(
                W: Any, pair: Any = pair, conv1d: bool = conv1d, target: str = target, name: str = tensor_name
            ) -> Any:
                if name in replacement:
                    W = replacement[name].to(W.dtype)
                delta = target_delta(pair, W, conv1d=conv1d)
                Wf = W.to(delta.dtype)
                if diagnose:
                    Wq = nf4_round_trip(Wf.T if conv1d else Wf, blocksize)
                    Wq = Wq.T if conv1d else Wq
                    gaps[target] = float((Wf - Wq).norm() / max(float(delta.norm()), 1e-30))
                    if merge_base == "dequantized":
                        Wf = Wq
                ratios[target] = float(delta.norm() / max(float(Wf.norm()), 1e-30))
                return add_delta(Wf, delta, key=target, dtype=W.dtype)

            updates.setdefault(index[tensor_name], {})[tensor_name] = update
        targeted = {name for name, _ in plan.values()}
        for name, tensor in replacement.items():
            if name not in targeted:
                updates.setdefault(index[name], {})[name] = lambda W, t=tensor: t.to(W.dtype)

        largest = 0
        with atomic_directory(request.output, overwrite=may_replace(request.output, request.force)) as tmp:
            for f in files:
                largest = max(largest, stream_update(f, tmp / f.name, updates.get(f, {})))
            copied = []
            for item in side_files(folder):
                shutil.copy2(item, tmp / item.name)
                copied.append(item.name)
            report = {
                "exporter": "merged",
                "model": str(folder),
                "adapters": [
                    {"name": a.name, "weight": a.weight, "source": str(a.source)} for a in request.adapters
                ],
                "targets_merged": len(plan),
                "saved_tensors_written": sorted(replacement),
                "weight_files": [f.name for f in files],
                "copied": copied,
                "largest_tensor_bytes": largest,
                "merge_base": merge_base,
                **(
                    {
                        "quantization_gap": {
                            "about": "||W16 - dequant(NF4(W16))||_F / ||dW||_F per target",
                            "max": max(gaps.values()),
                            "per_target": gaps,
                        }
                    }
                    if gaps
                    else {}
                ),
                "update_ratio": {
                    "max": max(ratios.values()),
                    "mean": sum(ratios.values()) / len(ratios),
                    "per_target": ratios,
                },
            }
            (tmp / "adaptkit-export.json").write_text(json.dumps(report, indent=2) + "\n")
        log(
            f"merged {len(plan)} targets into {request.output} (largest tensor "
            f"{largest / 2**20:.1f} MiB; max ||ΔW||/||W|| {report['update_ratio']['max']:.3g})"
        )
        return report


def nf4_round_trip(W: Any, blocksize: int) -> Any:
    """``dequant(quant(W))`` with the QLoRA settings (NF4, double quantization)."""
    import torch
    from bitsandbytes.functional import dequantize_4bit, quantize_4bit

    packed, state = quantize_4bit(
        W.to(torch.float32).contiguous(), blocksize=blocksize, compress_statistics=True, quant_type="nf4"
    )
    return dequantize_4bit(packed, state).to(W.dtype)


def _plan(
    adapter: Any, tensors: dict[str, tuple[str, tuple[int, ...]]], folder: Path, skeleton: Any
) -> dict[str, tuple[str, bool]]:
    """``target -> (tensor name, is Conv1D)``, placed as the model class itself maps its modules
    to checkpoint tensors (see :mod:`adaptkit.nn.placement`); every target must fit."""
    from adaptkit.nn.placement import target_layout

    sizes = {t: (p.out_features, p.in_features) for t, p in adapter.targets.items()}
    placed = target_layout(sizes, tensors, folder, skeleton=skeleton)
    return {t: (p.tensor, p.conv1d) for t, p in placed.items()}
