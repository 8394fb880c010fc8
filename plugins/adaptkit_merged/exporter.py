"""The ``merged`` exporter (see the package docstring)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any, ClassVar

from adaptkit.errors import AdaptkitError, InvalidAdapterError

#: Model types whose linear layers are HF Conv1D (weight stored in × out).
CONV1D_MODEL_TYPES = {"gpt2"}
#: Weight files never copied (pickles are never even opened).
_SKIP_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".pkl", ".msgpack", ".h5")


class MergedExporter:
    name = "merged"
    description = "HF model directory with W + ΔW baked in, streamed tensor by tensor"
    requires: ClassVar[dict[str, str]] = {"torch": "torch", "safetensors": "safetensors"}
    options_schema: ClassVar[dict[str, Any]] = {"type": "object", "properties": {}}

    def export(self, request: Any, log: Any) -> dict[str, Any]:
        import torch

        from adaptkit.atomic import atomic_directory
        from adaptkit.exporting import combined, may_replace
        from adaptkit.models import check_model_dir, safetensors_files
        from adaptkit_merged.stream import stream_update, tensor_index

        folder = check_model_dir(request.model)
        adapter = combined(request.adapters)
        if adapter is None:
            raise AdaptkitError("export --merged needs at least one --adapter")
        config = json.loads((folder / "config.json").read_text())
        files = safetensors_files(folder)
        headers = {f: tensor_index(f) for f in files}  # each header read (and checked) once
        index = {name: f for f, header in headers.items() for name in header}
        shapes = {name: tuple(info["shape"]) for header in headers.values() for name, info in header.items()}
        plan = _plan(adapter, shapes, config)

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

            def update(W: Any, pair: Any = pair, conv1d: bool = conv1d, target: str = target) -> Any:
                work = torch.float64 if W.dtype == torch.float64 else torch.float32
                delta = pair.delta(work)
                if conv1d:
                    delta = delta.T
                Wf = W.to(work)
                if diagnose:
                    Wq = nf4_round_trip(Wf.T if conv1d else Wf, blocksize)
                    Wq = Wq.T if conv1d else Wq
                    gaps[target] = float((Wf - Wq).norm() / max(float(delta.norm()), 1e-30))
                    if merge_base == "dequantized":
                        Wf = Wq
                ratios[target] = float(delta.norm() / max(float(Wf.norm()), 1e-30))
                new = (Wf + delta).to(W.dtype)
                if not bool(torch.isfinite(new).all()):
                    raise AdaptkitError(f"merged weight overflows {W.dtype}; nothing was written", key=target)
                return new

            updates.setdefault(index[tensor_name], {})[tensor_name] = update

        largest = 0
        with atomic_directory(request.output, overwrite=may_replace(request.output, request.force)) as tmp:
            for f in files:
                largest = max(largest, stream_update(f, tmp / f.name, updates.get(f, {})))
            copied = []
            for item in sorted(folder.iterdir()):
                if item.is_file() and not item.name.endswith(_SKIP_SUFFIXES):
                    shutil.copy2(item, tmp / item.name)
                    copied.append(item.name)
            report = {
                "exporter": "merged",
                "model": str(folder),
                "adapters": [
                    {"name": a.name, "weight": a.weight, "source": str(a.source)} for a in request.adapters
                ],
                "targets_merged": len(plan),
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
    adapter: Any, shapes: dict[str, tuple[int, ...]], config: dict[str, Any]
) -> dict[str, tuple[str, bool]]:
    """``target -> (tensor name, is Conv1D)``; every target must exist with a matching shape."""
    conv_model = config.get("model_type") in CONV1D_MODEL_TYPES or bool(adapter.base_model.fan_in_fan_out)
    plan: dict[str, tuple[str, bool]] = {}
    problems: list[str] = []
    missing = []
    for target, pair in sorted(adapter.targets.items()):
        candidates = [f"{target}.weight"]
        if "." in target:
            candidates.append(f"{target.split('.', 1)[1]}.weight")
        name = next((c for c in candidates if c in shapes), None)
        if name is None:
            missing.append(target)
            continue
        want = (pair.out_features, pair.in_features)
        shape = shapes[name]
        if conv_model and shape == want[::-1]:
            plan[target] = (name, True)
        elif shape == want:
            plan[target] = (name, False)
        else:
            problems.append(
                f"{target}: adapter is {want[0]}×{want[1]} (out×in) but {name} is {'×'.join(map(str, shape))}"
            )
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        problems.insert(0, f"targets not in the model: {shown}")
    if problems:
        raise InvalidAdapterError.from_problems(problems)
    return plan
