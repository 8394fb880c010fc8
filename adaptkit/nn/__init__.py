"""LoRA on PyTorch modules: layers, attach/detach, bake (W + ΔW) and layout facts.

    from adaptkit import nn as lora

    names = lora.attach(model, lora.LoraSettings(targets=["q_proj", "v_proj"], rank=8, alpha=16))
    ...train...
    adapter = lora.extract(model)           # -> adaptkit.Adapter
    lora.bake(model); lora.unbake(model)    # fold ΔW into W in place, and back, exactly
    lora.detach(model)                      # the plain base model again

    lora.load(base, adaptkit.load_spec("adapter.safetensors"))     # inference, unbaked
    lora.bake_adapter(base, adapter)                               # W ← W + ΔW, no layers

    mix = torch.ones(2, 1, requires_grad=True)                     # learnable mixing weights
    lora.attach_mixture(base, [WeightedAdapter(a), WeightedAdapter(b)], mix, dict.fromkeys(targets, 0))

Modules: :mod:`~adaptkit.nn.settings` (``LoraSettings``), :mod:`~adaptkit.nn.layers`
(``LoraLayer``, ``LoraLinear``), :mod:`~adaptkit.nn.mixture` (``LoraMixture``: frozen adapters
under learnable weights), :mod:`~adaptkit.nn.inject` (target selection,
attach/extract/load/detach), :mod:`~adaptkit.nn.baking` (``W + c·ΔW`` into plain modules),
:mod:`~adaptkit.nn.layout` (Linear vs Conv1D, module replacement). Imported lazily: torch loads
on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    **{name: "adaptkit.nn.layers" for name in ("LoraLayer", "LoraLinear")},
    **{name: "adaptkit.nn.mixture" for name in ("LoraMixture", "attach_mixture")},
    "LoraSettings": "adaptkit.nn.settings",
    **{
        name: "adaptkit.nn.inject"
        for name in (
            "attach",
            "bake",
            "detach",
            "extract",
            "load",
            "lora_layers",
            "select_targets",
            "trainable_parameters",
            "unbake",
        )
    },
    **{name: "adaptkit.nn.baking" for name in ("bake_adapter", "resolve_targets")},
    **{name: "adaptkit.nn.layout" for name in ("module_kind", "is_adaptable", "replace_module")},
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'adaptkit.nn' has no attribute {name!r}")


def __dir__() -> list[str]:
    return __all__
