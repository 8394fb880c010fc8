"""LoRA on PyTorch modules, for backends and exporters.

``attach`` puts :class:`LoraLinear` layers on the targets :func:`select_targets` chooses;
``bake``/``unbake`` fold ``W ← W + s·B·A`` in and out exactly; ``extract`` returns the trained
:class:`~adaptkit.api.Adapter`; :func:`bake_adapter` bakes an adapter into plain modules and
:func:`bake_checkpoint` into safetensors files, streamed one tensor at a time.
:func:`torch_greedy` and :func:`torch_sample` decode with the KV cache (adapters unmerged: the
reference an export is checked against).
:func:`module_kind` tells ``nn.Linear`` (``out × in``) from HF ``Conv1D`` (``in × out``), and
:func:`replace_module` is the one way to swap a module in a model.
"""

from __future__ import annotations

from adaptkit.nn.baking import bake_adapter, resolve_targets
from adaptkit.nn.checkpoint import bake_checkpoint
from adaptkit.nn.decode import eos_ids, torch_greedy, torch_sample
from adaptkit.nn.inject import (
    attach,
    bake,
    detach,
    extract,
    is_linear_like,
    load,
    lora_layers,
    output_head_names,
    select_targets,
    trainable_parameters,
    unbake,
)
from adaptkit.nn.layers import LoraLinear
from adaptkit.nn.layout import module_kind, replace_module
from adaptkit.nn.settings import LoraSettings

__all__ = [
    "LoraLinear",
    "LoraSettings",
    "attach",
    "bake",
    "bake_adapter",
    "bake_checkpoint",
    "detach",
    "eos_ids",
    "extract",
    "is_linear_like",
    "load",
    "lora_layers",
    "module_kind",
    "output_head_names",
    "replace_module",
    "resolve_targets",
    "select_targets",
    "torch_greedy",
    "torch_sample",
    "trainable_parameters",
    "unbake",
]
