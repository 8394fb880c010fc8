"""The ``loraplus`` backend: LoRA with a higher learning rate for the ``B`` factors.

LoRA+ (Hayou, Ghosh & Yu, 2024, https://arxiv.org/abs/2402.12354) shows that with one shared
learning rate, LoRA's ``A`` and ``B`` factors cannot both learn efficiently at large width:
``B`` starts at zero and needs larger steps than ``A``. Setting

    lr_B = λ · lr_A,        λ = ``ratio`` (the paper recommends 2⁴ = 16)

improves convergence speed (and often the final loss) at no extra cost. Everything else is the
``lora`` method: ``y = W x + s·B A x`` with a frozen base, ``s = alpha/r`` (or ``alpha/√r``).

Options (``--option KEY=VALUE`` or ``options:`` in a train recipe), declared in
``options_schema`` so that adaptkit checks them before the model loads:
    ``ratio`` (16): ``lr_B / lr_A``, above 0 and at most 1024. ``--lr`` is the rate of ``A``;
        the schedule (warm-up and decay) applies to both, keeping the ratio.

Only adaptkit's public API is used: ``adaptkit_lora`` attaches and extracts the LoRA layers,
and the shared trainer scales each optimizer param group's learning rate by its
``lr_scale`` (see :class:`adaptkit.plugins.contracts.Backend`).
"""

from __future__ import annotations

from typing import Any, ClassVar

from adaptkit.api import AdaptkitError

DEFAULT_RATIO = 16.0
#: The paper's useful range is 2 to 2⁸; far beyond it ``lr_B`` is a number, not a rate
#: (``ratio=1e308`` multiplies the learning rate into overflow).
MAX_RATIO = 1024.0


class LoraPlusBackend:
    name = "loraplus"
    description = "LoRA+: LoRA with lr_B = ratio x lr_A (default 16), AdamW"
    requires: ClassVar[dict[str, str]] = {"torch": "torch", "transformers": "transformers"}
    supports: ClassVar[frozenset[str]] = frozenset({"resume", "ddp"})

    def __init__(self) -> None:
        self._b_factors: set[int] = set()

    options_schema: ClassVar[dict[str, Any]] = {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "ratio": {
                "type": "number",
                "exclusiveMinimum": 0,
                "maximum": MAX_RATIO,
                "default": DEFAULT_RATIO,
                "description": "lr_B / lr_A",
            }
        },
    }

    def ratio(self, config: Any) -> float:
        """The checked ``ratio`` option (adaptkit's trainer has checked it already; a direct
        caller of :meth:`prepare` gets the same check)."""
        from adaptkit.api.training import backend_options

        return float(backend_options(self, config.options)["ratio"])

    def prepare(self, model: Any, settings: Any, config: Any, log: Any) -> list[Any]:
        from adaptkit.api import nn as lora

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
        from adaptkit.api import nn as lora

        adapter = lora.extract(model, base_name=base_name, provenance=provenance)
        adapter.producer.component = "backend:loraplus"
        return adapter
