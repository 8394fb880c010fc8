"""Per-target facts about an adapter, as ``adaptkit inspect`` reports them."""

from __future__ import annotations

import math
from typing import Any

from adaptkit.adapter import Adapter


def describe_adapter(adapter: Adapter) -> dict[str, Any]:
    """A JSON-ready description: per target rank, alpha, scaling, scale, shape, dtype and
    ``||ΔW||_F`` (computed from the factors); totals over all targets."""
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
                "shape": [pair.out_features, pair.in_features],
                "dtype": str(pair.A.dtype).removeprefix("torch."),
                "delta_norm": norm,
            }
        )
    return {
        "format_version": adapter.format_version,
        "base_model": {k: v for k, v in vars(adapter.base_model).items() if v is not None},
        "producer": {k: v for k, v in vars(adapter.producer).items() if v is not None},
        "targets": targets,
        "totals": {
            "targets": len(targets),
            "params": adapter.num_params(),
            "bytes": total_bytes,
            "delta_norm": math.sqrt(total_sq),
            "ranks": sorted({t["rank"] for t in targets}),
        },
    }
