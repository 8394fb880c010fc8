"""The shared trainer, for backends: settings, option checking, and the loop itself.

A backend attaches adapters and builds an optimizer; :func:`run_training` owns everything else
(data, schedule, micro-batches, DDP, checkpoints, resume). :func:`backend_options` checks
``--option KEY=VALUE`` values against a backend's ``options_schema`` with defaults filled.
``TrainConfig.lora`` is a :class:`adaptkit.api.nn.LoraSettings`.
"""

from __future__ import annotations

from adaptkit.training.loop import run_training
from adaptkit.training.options import backend_options
from adaptkit.training.settings import TrainConfig

__all__ = ["TrainConfig", "backend_options", "run_training"]
