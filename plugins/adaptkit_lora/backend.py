"""The ``lora`` backend: 16-bit (or fp32) LoRA on a frozen base, trained with AdamW."""

from __future__ import annotations

from typing import Any, ClassVar


class LoraBackend:
    name = "lora"
    description = "16-bit LoRA: frozen base, LoRA in fp32/bf16/fp16, AdamW"
    requires: ClassVar[dict[str, str]] = {"torch": "torch", "transformers": "transformers"}
    supports: ClassVar[frozenset[str]] = frozenset({"resume", "ddp", "shard"})
    #: No options: ``--option anything=...`` is refused, not silently ignored.
    options_schema: ClassVar[dict[str, Any]] = {
        "type": "object",
        "additionalProperties": False,
        "properties": {},
    }

    def prepare(self, model: Any, settings: Any, config: Any, log: Any) -> list[Any]:
        from adaptkit.api.nn import attach, trainable_parameters

        names = attach(model, settings)
        params = trainable_parameters(model)
        n = sum(p.numel() for p in params)
        total = sum(p.numel() for p in model.parameters())
        log(
            f"lora: {len(names)} targets, rank {settings.rank}, alpha {settings.alpha:g}, "
            f"{n:,} trainable of {total:,} parameters ({100 * n / total:.2f}%)"
        )
        return params

    def optimizer(self, params: list[Any], config: Any, log: Any) -> Any:
        import torch

        return torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)

    def extract(self, model: Any, *, base_name: str | None, provenance: dict[str, Any]) -> Any:
        from adaptkit.api.nn import extract

        return extract(model, base_name=base_name, provenance=provenance)

    def memory_report(self, model: Any) -> dict[str, Any]:
        from adaptkit.api.nn import trainable_parameters

        lora = sum(p.numel() * p.element_size() for p in trainable_parameters(model))
        base = sum(p.numel() * p.element_size() for p in model.parameters()) - lora
        return {"base_bytes": base, "lora_bytes": lora}
