"""Training configs for the shared loop, and training runs without output."""

from __future__ import annotations

from adaptkit.nn.settings import LoraSettings
from adaptkit.training.settings import TrainConfig

#: Every target, rank 8, alpha 16, 40 steps of 8 records of 32 tokens at lr 1e-2, seed 0.
DEFAULTS = dict(lr=1e-2, max_steps=40, batch_size=8, seq_len=32, seed=0)


def train_config(backend: str = "lora", lora: LoraSettings | None = None, **overrides) -> TrainConfig:
    """``TrainConfig`` of ``DEFAULTS`` with ``overrides``."""
    lora = lora or LoraSettings(targets="all-linear", rank=8, alpha=16)
    return TrainConfig(**{"backend": backend, "lora": lora, **DEFAULTS, **overrides})


def train(config: TrainConfig, model, records, **kw):
    """``run_training`` with no progress bar and no log lines."""
    from adaptkit.training.loop import run_training

    return run_training(config, model=model, records=records, progress=False, log=lambda _: None, **kw)
