"""Per-target facts about an adapter, as ``adaptkit inspect`` reports them."""

from __future__ import annotations

import math
from typing import Any

from adaptkit.adapter import Adapter


def describe_adapter(adapter: Adapter) -> dict[str, Any]:
    """A JSON-ready description: per target rank, alpha, scaling, scale, shape, dtype and
    ``||ΔW||_F`` (computed from the factors); saved modules (stored in full); totals over all
    targets."""
    targets = []
    total_sq = 0.0
    total_bytes = 0
    for name in sorted(adapter.targets):
        pair = adapter.targets[name]
        norm = pair.delta_norm()
        total_sq += norm * norm
        total_bytes += pair.A.numel() * pair.A.element_size() + pair.B.numel() * pair.B.element_size()
        targets.append(
            {
                "name": name,
                "rank": pair.rank,
                "alpha": pair.alpha,
                "scaling": pair.scaling,
                "scale": pair.scale,
                "kind": pair.kind,
                "lora_bias": pair.bias is not None,
                "dora": pair.magnitude is not None,
                "shape": ([pair.experts] if pair.experts else []) + [pair.out_features, pair.in_features],
                "dtype": str(pair.A.dtype).removeprefix("torch."),
                "delta_norm": norm,
            }
        )
    saved = [
        {
            "name": module,
            "origin": entry.origin,
            "params": {k: list(t.shape) for k, t in sorted(entry.params.items())},
            "bytes": sum(t.numel() * t.element_size() for t in entry.params.values()),
        }
        for module, entry in sorted(adapter.saved.items())
    ]
    tokens = [
        {"name": module, "tokens": len(entry.indices), "dim": int(entry.values.shape[1])}
        for module, entry in sorted(adapter.tokens.items())
    ]
    return {
        "format_version": adapter.format_version,
        "base_model": {k: v for k, v in vars(adapter.base_model).items() if v is not None},
        "producer": {k: v for k, v in vars(adapter.producer).items() if v is not None},
        "targets": targets,
        "saved_modules": saved,
        "trainable_tokens": tokens,
        "totals": {
            "targets": len(targets),
            "params": adapter.num_params(),
            "bytes": total_bytes,
            "delta_norm": math.sqrt(total_sq),
            "ranks": sorted({t["rank"] for t in targets}),
        },
    }


def base_weight_norms(
    model: str, targets: dict[str, tuple[int, ...]], embeddings: frozenset[str] | set[str] = frozenset()
) -> dict[str, float]:
    """``||W||_F`` of each target's base weight, read tensor by tensor from the model's
    safetensors; ``targets`` maps each to its ``(out, in)`` (``(experts, out, in)`` for an
    experts target: the whole parameter's norm), ``embeddings`` names the embedding LoRAs among
    them."""
    from types import SimpleNamespace

    from safetensors import safe_open

    from adaptkit.io.models import resolve_model, safetensors_files
    from adaptkit.io.safetensors_strict import checked_header
    from adaptkit.nn.experts import checkpoint_layout
    from adaptkit.nn.placement import build_skeleton, meta_model, target_layout
    from adaptkit.nn.tied import tied_missing

    folder = resolve_model(model)
    headers = {}
    for f in safetensors_files(folder):
        headers[f] = checked_header(f)[1]
    tensors = {
        k: (v.get("dtype"), tuple(v.get("shape") or ())) for h in headers.values() for k, v in h.items()
    }
    # Placed as export --merged places them (module types and checkpoint names from the model
    # class); the update's own shape is what the layout checks against.
    # A head tied to the embeddings is stored as them: its W is theirs.
    meta = meta_model(folder)
    skeleton = build_skeleton(folder, meta)
    tied = tied_missing(meta, tensors, skeleton)
    layers = {t: shape for t, shape in targets.items() if len(shape) == 2}
    placed = target_layout(layers, tensors, folder, skeleton=skeleton, tied=tied, embeddings=embeddings)
    wanted: dict[str, list[str]] = {}
    for t, p in placed.items():
        wanted.setdefault(p.source or p.tensor, []).append(t)
    experts = {
        t: SimpleNamespace(experts=s[0], out_features=s[1], in_features=s[2])
        for t, s in targets.items()
        if len(s) == 3
    }
    canonical = skeleton.canonical if skeleton is not None else (lambda name: name)
    for t, pieces in checkpoint_layout(experts, tensors, meta, canonical).items():
        for piece in pieces:
            wanted.setdefault(piece.tensor, []).append(t)
    squares: dict[str, float] = {}
    for f, header in headers.items():
        names = [k for k in header if k in wanted]
        if names:
            with safe_open(str(f), framework="pt") as fh:
                for k in names:
                    square = float(fh.get_tensor(k).double().norm()) ** 2
                    for t in wanted[k]:  # an unfused experts parameter: the sum over its tensors
                        squares[t] = squares.get(t, 0.0) + square
    return {t: math.sqrt(v) for t, v in squares.items()}
