"""How LoRA is attached: :class:`LoraSettings`, read by :func:`adaptkit.nn.attach` and by every
training backend. Plain data (no torch), so a command can build one before torch loads."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field


@dataclass
class LoraSettings:
    """How to attach LoRA (used by every backend).

    Attributes:
        targets: Module names (suffix rule, as PEFT), ``"re:<regex>"``, or ``"all-linear"``
            (every ``nn.Linear``/``Conv1D`` except the output head).
        rank: ``r``.
        alpha: LoRA alpha (scale ``alpha/r``; ``alpha/sqrt(r)`` with ``rslora``).
        dropout: Dropout on the LoRA path while training.
        rslora: Use rsLoRA scaling.
        dtype: LoRA parameter dtype: ``fp32``, ``bf16`` or ``fp16``.
        init: ``A`` initialisation, ``kaiming`` (nn.Linear's default) or ``gaussian``
            (std ``1/r``); ``B`` always starts at zero.
        exclude: Module names (suffix rule) never targeted, besides the output head.
    """

    targets: Sequence[str] | str = "all-linear"
    rank: int = 8
    alpha: float = 8.0
    dropout: float = 0.0
    rslora: bool = False
    dtype: str = "fp32"
    init: str = "kaiming"
    exclude: Sequence[str] = field(default_factory=tuple)
