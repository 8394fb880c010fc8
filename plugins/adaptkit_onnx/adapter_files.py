"""The ``.onnx_adapter`` files and ``adapters.json`` entries of a ``--lora-inputs`` export.

Both graphs take the same route to switchable adapters: one base graph whose LoRA factors
are graph inputs with zero defaults, and one ``.onnx_adapter`` file per adapter holding the
values of those inputs, its scale ``s`` and weight ``w`` folded into ``B`` (``w·s·B``), so
that every adapter runs as ``y = x·Wᵀ + x·Aᵀ·(w·s·B)ᵀ``. What differs is the layout of the
factors (each graph's ``switchable`` module); what is the same lives here: which adapters one
shared base can switch, the file each is written to, and the manifest entry that names it.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from adaptkit.api import AdaptkitError, WeightedAdapter

if TYPE_CHECKING:
    import numpy as np

_FILE_SAFE = re.compile(r"[^A-Za-z0-9_.\-]+")


def check_switchable(adapters: list[WeightedAdapter]) -> dict[str, str]:
    """Refuse what one shared base graph cannot switch; returns ``adapter name -> file name``.

    There must be at least one adapter, none may save modules in full (they replace base
    weights every adapter shares), and sanitised file names must stay distinct (or one file
    would hold two adapters).
    """
    if not adapters:
        raise AdaptkitError("--lora-inputs needs at least one --adapter")
    files: dict[str, str] = {}
    seen: dict[str, str] = {}
    for a in adapters:
        file = _FILE_SAFE.sub("_", a.name) + ".onnx_adapter"
        if file.lower() in seen:
            raise AdaptkitError(
                f"adapters {seen[file.lower()]!r} and {a.name!r} would both be written to {file!r}",
                hint="give them names that differ in letters or digits (name: in a manifest YAML)",
            )
        seen[file.lower()] = a.name
        files[a.name] = file
    variants = [
        (a.name, t, p.variant) for a in adapters for t, p in sorted(a.adapter.targets.items()) if p.variant
    ]
    if variants:
        name, target, variant = variants[0]
        raise AdaptkitError(
            f"adapter {name!r} adapts {target} with a {variant}, but a --lora-inputs graph feeds plain "
            "linear LoRA factors (s·B@A on nn.Linear inputs) to every adapter",
            hint="export it with --onnx (merged) or --merged instead",
        )
    with_rows = [(a.name, sorted(a.adapter.tokens)[0]) for a in adapters if a.adapter.tokens]
    if with_rows:
        raise AdaptkitError(
            f"adapter {with_rows[0][0]!r} trains token rows of {with_rows[0][1]} in full, which replace "
            "base rows, but a --lora-inputs graph shares one base between adapters",
            hint="export it with --onnx (merged) or --merged instead",
        )
    with_saved = [a.name for a in adapters if a.adapter.saved]
    if with_saved:
        raise AdaptkitError(
            f"adapter {with_saved[0]!r} saves modules in full (modules_to_save), which replace base "
            "weights, but a --lora-inputs graph shares one base between adapters",
            hint="export it with --onnx (merged) or --merged instead",
        )
    return files


def write_onnx_adapter(path: Path, params: dict[str, np.ndarray]) -> None:
    """Write ``params`` (graph input name -> value, in the graph's dtype) as ONNX Runtime's
    adapter format, version 1 of the adapter and of the model."""
    import onnxruntime as ort

    fmt = ort.AdapterFormat()
    fmt.set_adapter_version(1)
    fmt.set_model_version(1)
    fmt.set_parameters({name: ort.OrtValue.ortvalue_from_numpy(v) for name, v in params.items()})
    fmt.export_adapter(str(path))


def manifest_entry(adapter: WeightedAdapter, file: str) -> dict[str, Any]:
    """``adapters.json``'s entry for one adapter: its file, weight, source and targets."""
    return {
        "file": file,
        "weight": adapter.weight,
        "source": str(adapter.source),
        "targets": sorted(adapter.adapter.targets),
    }
