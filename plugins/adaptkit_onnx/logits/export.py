"""The logits-only export: the base loads once, the graph is baked or switchable, and the
model's side files (config, tokenizer) are copied beside it."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from adaptkit.api import ExportRequest

#: Files of the model folder an export carries beside its graph (those that exist).
_COPY = (
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "tokenizer.model",
    "vocab.json",
    "merges.txt",
)


def export_logits(
    request: ExportRequest, dtype: str, atol: float, reason: str | None, log: Any
) -> dict[str, Any]:
    """Write the logits-only graph of ``request.model_dir`` plus the request's adapters into
    ``request.out_dir`` (the host publishes it atomically) and return the exporter's report.

    Args:
        request: The export request (its options were checked by the host and the exporter).
        dtype: The graph's dtype, ``float32`` or ``float16``.
        atol: The parity tolerance.
        reason: Why the generation graph was unavailable, if that is why this graph is written.
        log: Progress lines.
    """
    import torch

    from adaptkit.api.export import combined
    from adaptkit.api.models import load_causal_lm

    o, folder, tmp = request.options, request.model_dir, request.out_dir
    # Adapters merge in the dtype the base loads in: float32 unless asked (a bf16 merge would
    # round small updates away before the graph is even built).
    base, _ = load_causal_lm(folder, dtype=o["base_dtype"])
    graph = {
        "torch_dtype": torch.float16 if dtype == "float16" else torch.float32,
        "opset": o["opset"],
        "atol": atol,
        "verify": o["verify"],
        "external_data": o["external_data"],
    }
    report: dict[str, Any] = {
        "graph": "logits",
        **({"fallback_reason": reason} if reason else {}),
        "dtype": dtype,
        "atol": atol,
    }
    if o["lora_inputs"]:
        from adaptkit_onnx.logits.switchable import export_switchable

        report.update(export_switchable(base, request.adapters, tmp, **graph))
    else:
        from adaptkit_onnx.logits.baked import export_baked

        report.update(export_baked(base, combined(request.adapters), tmp, **graph))
    _copy_side_files(folder, base, tmp)
    _log_table(report, log)
    return report


def _copy_side_files(folder: Path, base: Any, out: Path) -> None:
    from adaptkit.api.models import side_file

    for name in _COPY:
        if (path := side_file(folder, name)) is not None:
            shutil.copy2(path, out / name)
    if not (out / "config.json").exists():
        base.config.to_json_file(out / "config.json")


def _log_table(report: dict[str, Any], log: Any) -> None:
    for item in report.get("parity", []):
        log(
            f"parity {item.get('adapter', 'merged'):>12} {item['shape']!s:>8}: "
            f"max abs {item['max_abs']:.2e}, max rel {item['max_rel']:.2e}"
        )
    lat = report.get("latency")
    if lat:
        log(
            f"latency {lat['input_shape']}: ORT merged {lat['ort_merged_s'] * 1e3:.2f} ms, "
            f"PyTorch unmerged {lat['pytorch_unmerged_s'] * 1e3:.2f} ms "
            f"(x{lat['pytorch_unmerged_over_ort_merged']:.1f})"
        )
