"""adaptkit: a plugin-based toolkit for LoRA adapters.

The public API is imported lazily so ``import adaptkit`` (and ``adaptkit --help``) never pulls
in torch::

    from adaptkit import Adapter, LoraPair, load_adapter, save_adapter
"""

# First, before any import (``from __future__`` included: it imports a module too), so that
# ``python -m adaptkit`` imports nothing from the working directory.
from adaptkit._launch import drop_working_directory

drop_working_directory()

import importlib  # noqa: E402
from typing import Any  # noqa: E402

from adaptkit.__about__ import __version__  # noqa: E402
from adaptkit.errors import AdaptkitError  # noqa: E402
from adaptkit.plugins.hookspecs import hookimpl  # noqa: E402

_LAZY = {
    "Adapter": "adaptkit.adapter",
    "BaseModelInfo": "adaptkit.adapter",
    "Producer": "adaptkit.adapter",
    "SavedModule": "adaptkit.adapter",
    "TrainableTokens": "adaptkit.adapter",
    "WeightedAdapter": "adaptkit.adapter",
    "LoraPair": "adaptkit.lora",
    "load_adapter": "adaptkit.io.native",
    "save_adapter": "adaptkit.io.native",
    "load_spec": "adaptkit.io.specs",
    "load_registry": "adaptkit.plugins",
    "get_registry": "adaptkit.plugins",
    "describe_adapter": "adaptkit.summary",
}

__all__ = ["AdaptkitError", "__version__", "hookimpl", *sorted(_LAZY)]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'adaptkit' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
