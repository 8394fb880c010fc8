"""The plugin host: hook specifications, the contracts registered objects keep, and the
registry that loads plugins through entry points and isolates broken ones.

The registry's API is importable from here (``from adaptkit.plugins import get_registry``);
it loads on first use, so ``import adaptkit`` stays light.
"""

from __future__ import annotations

import importlib
from typing import Any

_REGISTRY_NAMES = (
    "BLOCK_ENV",
    "LOAD_ENV",
    "PluginInfo",
    "Registration",
    "Registry",
    "create_plugin_manager",
    "disable_plugin",
    "get_registry",
    "load_registry",
    "reset_registry",
)

__all__ = list(_REGISTRY_NAMES)


def __getattr__(name: str) -> Any:
    if name in _REGISTRY_NAMES:
        return getattr(importlib.import_module("adaptkit.plugins.registry"), name)
    raise AttributeError(f"module 'adaptkit.plugins' has no attribute {name!r}")
