"""Which layers LoRA can adapt, and how each stores its weight: the one place that knows.

``nn.Linear`` (and subclasses such as bitsandbytes' ``Linear4bit``) stores ``out × in``;
Hugging Face's ``Conv1D`` (GPT-2 and kin) is a linear layer that stores ``in × out``, so an
update ``ΔW`` (always ``out × in`` in adaptkit) is added to it transposed. An ``nn.Embedding``
table (``num_embeddings × dim``) takes an embedding LoRA's ``ΔE`` as is.
"""

from __future__ import annotations

from typing import Any


def module_kind(module: Any) -> str | None:
    """``"linear"``, ``"conv1d"`` or ``None`` (not a layer LoRA can adapt)."""
    from torch import nn

    if isinstance(module, nn.Linear):
        return "linear"
    # Recognised by name and its ``nf`` attribute, so transformers need not be imported.
    if type(module).__name__ == "Conv1D" and hasattr(module, "nf"):
        return "conv1d"
    return None


def weight_layout(module: Any) -> str | None:
    """How an update is added to ``module``'s weight: ``"linear"`` (``W + ΔW``, ``out × in``),
    ``"conv1d"`` (``W + ΔWᵀ``), ``"embedding"`` (an ``nn.Embedding`` table, ``num × dim``:
    ``E + ΔE``, an embedding LoRA's target) or ``None``. Training attaches to the first two only
    (:func:`module_kind`); adapters read from PEFT may also target embeddings."""
    from torch import nn

    if isinstance(module, nn.Embedding):
        return "embedding"
    return module_kind(module)


def is_adaptable(module: Any) -> bool:
    """Whether LoRA can target ``module`` (an ``nn.Linear`` or HF ``Conv1D``)."""
    return module_kind(module) is not None


def replace_module(model: Any, name: str, new: Any) -> None:
    """Put ``new`` at the dotted path ``name`` inside ``model``."""
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)
