"""The ``loraplus`` backend: LoRA with a higher learning rate for the ``B`` factors.

LoRA+ (Hayou, Ghosh & Yu, 2024, https://arxiv.org/abs/2402.12354) shows that with one shared
learning rate, LoRA's ``A`` and ``B`` factors cannot both learn efficiently at large width:
``B`` starts at zero and needs larger steps than ``A``. Setting

    lr_B = λ · lr_A,        λ = ``ratio`` (the paper recommends 2⁴ = 16)

improves convergence speed (and often the final loss) at no extra cost. Everything else is the
``lora`` method: ``y = W x + s·B A x`` with a frozen base, ``s = alpha/r`` (or ``alpha/√r``).

Options (``--option KEY=VALUE`` or ``options:`` in a train recipe):
    ``ratio`` (16): ``lr_B / lr_A``. ``--lr`` is the rate of ``A``; the schedule (warm-up and
        decay) applies to both, keeping the ratio.

Only adaptkit's public API is used: ``adaptkit_lora`` attaches and extracts the LoRA layers,
and the shared trainer scales each optimizer param group's learning rate by its
``lr_scale`` (see :class:`adaptkit.plugins.contracts.Backend`).
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

from adaptkit import AdaptkitError

DEFAULT_RATIO = 16.0


class LoraPlusBackend:
    name = "loraplus"
    description = "LoRA+: LoRA with lr_B = ratio x lr_A (default 16), AdamW"
    requires: ClassVar[dict[str, str]] = {"torch": "torch", "transformers": "transformers"}
    supports: ClassVar[frozenset[str]] = frozenset({"resume", "ddp"})

    def __init__(self) -> None:
        self._b_factors: set[int] = set()

    @staticmethod
    def ratio(config: Any) -> float:
        options = dict(config.options or {})
        unknown = sorted(set(options) - {"ratio"})
        if unknown:
            raise AdaptkitError(f"unknown loraplus option {unknown[0]!r}; valid: ratio", key="--option")
        raw = options.get("ratio", DEFAULT_RATIO)
        try:
            value = float(raw)
        except (TypeError, ValueError):
            value = math.nan
        if not math.isfinite(value) or value <= 0:
            raise AdaptkitError(f"ratio must be a positive number, got {raw!r}", key="ratio")
        return value

    def prepare(self, model: Any, settings: Any, config: Any, log: Any) -> list[Any]:
        from adaptkit import nn as lora

        ratio = self.ratio(config)  # refuse bad options before touching the model
        names = lora.attach(model, settings)
        layers = lora.lora_layers(model)
        self._b_factors = {id(layer.lora_B) for layer in layers.values()}
        params = lora.trainable_parameters(model)
        n = sum(p.numel() for p in params)
        log(
            f"loraplus: {len(names)} targets, rank {settings.rank}, alpha {settings.alpha:g}, "
            f"{n:,} trainable parameters; lr_B = {ratio:g} x lr_A"
        )
        return params

    def optimizer(self, params: list[Any], config: Any, log: Any) -> Any:
        import torch

        ratio = self.ratio(config)
        a = [p for p in params if id(p) not in self._b_factors]
        b = [p for p in params if id(p) in self._b_factors]
        if not b:
            raise AdaptkitError("loraplus: no B factors among the parameters; call prepare() first")
        groups = [
            {"params": a, "lr": config.lr, "lr_scale": 1.0},
            {"params": b, "lr": config.lr * ratio, "lr_scale": ratio},
        ]
        return torch.optim.AdamW(groups, lr=config.lr, weight_decay=config.weight_decay)

    def extract(self, model: Any, *, base_name: str | None, provenance: dict[str, Any]) -> Any:
        from adaptkit import nn as lora

        adapter = lora.extract(model, base_name=base_name, provenance=provenance)
        adapter.producer.component = "backend:loraplus"
        return adapter
