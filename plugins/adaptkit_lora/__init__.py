"""Builtin plugin: the ``lora`` training backend, and the Python API for LoRA layers.

import adaptkit_lora as lora

names = lora.attach(model, lora.LoraSettings(targets=["q_proj", "v_proj"], rank=8, alpha=16))
...train...
adapter = lora.extract(model)           # -> adaptkit.Adapter, save with adaptkit.save_adapter
lora.merge(model); lora.unmerge(model)  # in place, exact round trip
lora.detach(model)                      # back to the plain base model

base = ...; lora.load(base, adaptkit.load_spec("adapter.safetensors"))   # inference
"""

import importlib
from typing import Any

from adaptkit.hookspecs import hookimpl
from adaptkit.training.settings import LoraSettings
from adaptkit_lora.backend import LoraBackend

# torch-heavy modules load on first use, so discovering this plugin stays instant.
_LAZY = {
    "LoraLinear": "adaptkit_lora.layer",
    **{
        name: "adaptkit_lora.inject"
        for name in (
            "attach",
            "detach",
            "extract",
            "load",
            "lora_layers",
            "merge",
            "select_targets",
            "trainable_parameters",
            "unmerge",
        )
    },
}

__all__ = ["LoraBackend", "LoraSettings", *sorted(_LAZY)]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'adaptkit_lora' has no attribute {name!r}")


@hookimpl
def register_backends(register):
    register(LoraBackend())
