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


def base_weight_norms(model: str, targets: list[str]) -> dict[str, float]:
    """``||W||_F`` of each target's base weight, read tensor by tensor from the model's
    safetensors (or from a built-in model)."""
    from adaptkit.errors import InvalidAdapterError
    from adaptkit.models import BUILTIN, check_model_dir, safetensors_files

    if model in BUILTIN:
        net, _ = BUILTIN[model]()
        modules = dict(net.named_modules())
        missing = [t for t in targets if t not in modules]
        if missing:
            raise InvalidAdapterError(f"targets not in the model: {', '.join(missing[:5])}")
        return {t: float(modules[t].weight.detach().double().norm()) for t in targets}
    from safetensors import safe_open

    from adaptkit.safetensors_strict import header_problems, read_header

    folder = check_model_dir(model)
    wanted = {f"{t}.weight": t for t in targets}
    wanted.update(
        {f"{t.split('.', 1)[1]}.weight": t for t in targets if "." in t and f"{t}.weight" not in wanted}
    )
    norms: dict[str, float] = {}
    for f in safetensors_files(folder):
        header, n, size = read_header(f)
        problems = header_problems(header, n, size, float_only=False)
        if problems:
            raise InvalidAdapterError.from_problems(problems, path=f)
        names = [k for k in header if k in wanted and wanted[k] not in norms]
        if names:
            with safe_open(str(f), framework="pt") as fh:
                for k in names:
                    norms[wanted[k]] = float(fh.get_tensor(k).double().norm())
    missing = [t for t in targets if t not in norms]
    if missing:
        raise InvalidAdapterError(f"targets not in the model: {', '.join(missing[:5])}", path=folder)
    return norms
