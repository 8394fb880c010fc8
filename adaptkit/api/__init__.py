"""The public plugin API: everything a plugin (builtin or third-party) may import from adaptkit.

A plugin imports from ``adaptkit.api`` and its submodules only; every other module of adaptkit is
private and may change without notice. A contract in ``pyproject.toml`` (import-linter, run by
the test suite) holds adaptkit's own plugins in ``plugins/`` and ``examples/`` to the same rule.

This module is light (no torch): the hook marker, the errors, the data model, the records that
cross the plugin boundary and the contracts. Heavier pieces live in submodules; import them
inside the function that needs them, so ``adaptkit --help`` stays instant::

    from adaptkit.api import AdaptkitError, hookimpl

    @hookimpl
    def register_exporters(register):
        register(MyExporter())

Modules:

- :mod:`adaptkit.api`: ``hookimpl``; the errors; the data model (``Adapter``, ``LoraPair``,
  ``WeightedAdapter``, ...); the strategy, export and generation records; the contracts
  (Protocols).
- :mod:`adaptkit.api.files`: atomic writes, capped regular-file reads, strict JSON, schemas,
  safetensors, the native format, SPECs.
- :mod:`adaptkit.api.models`: model folders and Hub ids (vetted), tokenizers, streamed loading.
- :mod:`adaptkit.api.nn`: LoRA layers on PyTorch modules: attach, bake, extract, targets, layout.
- :mod:`adaptkit.api.strategy`: helpers for merge strategies (factored and dense math).
- :mod:`adaptkit.api.training`: the shared trainer and its settings, for backends.
- :mod:`adaptkit.api.export`: helpers for exporters.
- :mod:`adaptkit.api.console`: terminal-safe text and JSON for plugin commands.
"""

from __future__ import annotations

from adaptkit.adapter import (
    Adapter,
    BaseModelInfo,
    Producer,
    SavedModule,
    TrainableTokens,
    WeightedAdapter,
    is_module_path,
)
from adaptkit.errors import (
    AdaptkitError,
    FormatError,
    InvalidAdapterError,
    OutputError,
    SchemaError,
)
from adaptkit.lora import LoraPair
from adaptkit.plugins.contracts import (
    AdapterFormat,
    Backend,
    Exporter,
    MergeStrategy,
    Plugin,
    Runtime,
    WritableFormat,
)
from adaptkit.plugins.hookspecs import Register, hookimpl
from adaptkit.plugins.records import ExportRequest, GenerateRequest, MergeContext, MergeInput, MergeResult
from adaptkit.rank import RankRequest

__all__ = [
    "Adapter",
    "AdapterFormat",
    "AdaptkitError",
    "Backend",
    "BaseModelInfo",
    "ExportRequest",
    "Exporter",
    "FormatError",
    "GenerateRequest",
    "InvalidAdapterError",
    "LoraPair",
    "MergeContext",
    "MergeInput",
    "MergeResult",
    "MergeStrategy",
    "OutputError",
    "Plugin",
    "Producer",
    "RankRequest",
    "Register",
    "Runtime",
    "SavedModule",
    "SchemaError",
    "TrainableTokens",
    "WeightedAdapter",
    "WritableFormat",
    "hookimpl",
    "is_module_path",
]
