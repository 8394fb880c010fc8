"""Deprecated: moved to :mod:`adaptkit.nn.baking` (``merge_adapter`` is now ``bake_adapter``)."""

import warnings

from adaptkit.nn.baking import apply_saved_modules, bake_adapter, resolve_saved, resolve_targets

warnings.warn(
    "adaptkit.merge moved to adaptkit.nn.baking (merge_adapter is now bake_adapter)",
    DeprecationWarning,
    stacklevel=2,
)
merge_adapter = bake_adapter

__all__ = ["apply_saved_modules", "merge_adapter", "resolve_saved", "resolve_targets"]
