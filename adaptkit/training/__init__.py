"""Backend-agnostic training: data, batches and their loss, the loop, checkpoints, DDP.

Backends (``register_backends``) decide how LoRA is attached (16-bit, NF4 4-bit, ...) and
which optimizer to use; everything else — batching, the causal-LM loss, progress, metrics,
checkpoints that resume exactly, DDP under ``torchrun`` — lives here and is shared.

The pieces other parts of adaptkit train or evaluate with (``combine --tune``, the demo) are
importable from here; the loop itself (:mod:`adaptkit.training.loop`) is the trainer's own::

    from adaptkit.training import collate, evaluate_loss, load_records, token_loss_sum

Imported lazily: torch loads on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    **{
        name: "adaptkit.training.batches"
        for name in ("collate", "evaluate_loss", "step_indices", "target_tokens", "token_loss_sum")
    },
    **{name: "adaptkit.training.data" for name in ("MAX_DATA_BYTES", "Sample", "load_records")},
    "TrainConfig": "adaptkit.training.settings",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'adaptkit.training' has no attribute {name!r}")


def __dir__() -> list[str]:
    return __all__
