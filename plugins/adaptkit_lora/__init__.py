"""Builtin plugin: the ``lora`` training backend (16-bit LoRA on a frozen base).

The LoRA machinery it uses lives in core, :mod:`adaptkit.nn`, where every other part (the
qlora backend, the exporters, the demo) reaches it too. The names this package used to export
(``adaptkit_lora.attach``, ``.extract``, ``.load``, ``.merge``, ...) still work and warn once:
import them from :mod:`adaptkit.nn` instead.
"""

import importlib
import warnings
from typing import Any

from adaptkit.api import hookimpl
from adaptkit_lora.backend import LoraBackend

#: Old name -> (module, name) in core.
_MOVED = {
    "LoraLinear": ("adaptkit.nn.layers", "LoraLinear"),
    "LoraSettings": ("adaptkit.training.settings", "LoraSettings"),
    **{
        name: ("adaptkit.nn.inject", name)
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

__all__ = ["LoraBackend"]


def __getattr__(name: str) -> Any:
    if name in _MOVED:
        module, attr = _MOVED[name]
        new = {"merge": "bake", "unmerge": "unbake"}.get(name, attr)
        warnings.warn(
            f"adaptkit_lora.{name} moved to adaptkit.nn.{new}; import it from adaptkit.nn",
            DeprecationWarning,
            stacklevel=2,
        )
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module 'adaptkit_lora' has no attribute {name!r}")


@hookimpl
def register_backends(register):
    register(LoraBackend())
