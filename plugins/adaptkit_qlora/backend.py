"""The ``qlora`` backend (see the package docstring).

Options (``--option KEY=VALUE`` / ``options:`` in a train recipe):
    ``blocksize`` (64): NF4 block size.
    ``quantize`` (``targets``): quantize only the LoRA targets, or ``all-linear`` (every linear
        layer but the output head).
    ``optimizer`` (``paged_adamw_32bit``): ``paged_adamw_32bit``, ``paged_adamw_8bit`` or
        ``adamw``. Paging needs CUDA; on CPU the non-paged bitsandbytes AdamW (32/8-bit) runs,
        and the log says so once.
    ``compute_dtype``: dtype of the 4-bit matmuls (bf16 on CUDA, fp32 on CPU by default).
"""

from __future__ import annotations

from typing import Any, ClassVar

from adaptkit.errors import AdaptkitError

OPTIMIZERS = ("paged_adamw_32bit", "paged_adamw_8bit", "adamw")


class QloraBackend:
    name = "qlora"
    description = "QLoRA: NF4 4-bit base (double quant, blocksize 64), 16-bit LoRA, paged AdamW on CUDA"
    requires: ClassVar[dict[str, str]] = {"bitsandbytes": "bitsandbytes>=0.45", "torch": "torch"}
    supports: ClassVar[frozenset[str]] = frozenset({"resume", "ddp"})

    def prepare(self, model: Any, settings: Any, config: Any, log: Any) -> list[Any]:
        import torch

        import adaptkit_lora as lora
        from adaptkit_lora.inject import select_targets
        from adaptkit_qlora.quantize import memory_report, quantize_linear

        opts = dict(config.options or {})
        unknown = sorted(set(opts) - {"blocksize", "quantize", "optimizer", "compute_dtype"})
        if unknown:
            raise AdaptkitError(
                f"unknown qlora option {unknown[0]!r}; valid: blocksize, quantize, optimizer, compute_dtype",
                key="--option",
            )
        blocksize = int(opts.get("blocksize", 64))
        cuda = any(p.is_cuda for p in model.parameters()) or torch.cuda.is_available()
        compute = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}.get(
            opts.get("compute_dtype", "bf16" if cuda else "fp32")
        )
        if compute is None:
            raise AdaptkitError("compute_dtype must be bf16, fp16 or fp32", key="compute_dtype")
        targets = select_targets(model, settings.targets, settings.exclude)
        scope = opts.get("quantize", "targets")
        if scope not in ("targets", "all-linear"):
            raise AdaptkitError(f"quantize must be 'targets' or 'all-linear', got {scope!r}", key="quantize")
        to_quantize = select_targets(model, "all-linear") if scope == "all-linear" else targets
        conv = [n for n in to_quantize if not isinstance(model.get_submodule(n), torch.nn.Linear)]
        if conv:
            raise AdaptkitError(
                f"qlora quantizes nn.Linear layers; {conv[0]!r} is a "
                f"{type(model.get_submodule(conv[0])).__name__}",
                key="targets",
            )
        if cuda:
            model.to("cuda")
        for name in to_quantize:
            parent_name, _, child = name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            setattr(
                parent,
                child,
                quantize_linear(getattr(parent, child), blocksize=blocksize, compute_dtype=compute),
            )
        # LoRA in 16-bit by default (bf16); the CPU path computes in fp32.
        lora_dtype = settings.dtype if settings.dtype != "fp32" or not cuda else "bf16"
        settings = type(settings)(**{**vars(settings), "targets": targets, "dtype": lora_dtype})
        lora.attach(model, settings)
        params = lora.trainable_parameters(model)
        report = memory_report(model, params)
        self.last_report = report
        log(
            f"qlora: {report['quantized_layers']} NF4 layers, "
            f"{report['bits_per_quantized_param']:.3f} bits/param "
            f"({report['quantized_bytes'] / 2**20:.2f} MiB vs "
            f"{report['bf16_equivalent_bytes'] / 2**20:.2f} MiB in bf16), "
            f"LoRA {report['lora_param_bytes'] / 2**20:.2f} MiB in {lora_dtype}"
        )
        return params

    def optimizer(self, params: list[Any], config: Any, log: Any) -> Any:
        import bitsandbytes as bnb
        import torch

        choice = (config.options or {}).get("optimizer", "paged_adamw_32bit")
        if choice not in OPTIMIZERS:
            raise AdaptkitError(
                f"unknown optimizer {choice!r}; valid: {', '.join(OPTIMIZERS)}", key="optimizer"
            )
        if choice == "adamw":
            return torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
        eight = choice.endswith("8bit")
        if torch.cuda.is_available() and params[0].is_cuda:
            cls = bnb.optim.PagedAdamW8bit if eight else bnb.optim.PagedAdamW
        else:
            log(
                "qlora: paged optimizers need CUDA; using bitsandbytes' non-paged "
                f"{'8-bit' if eight else '32-bit'} AdamW on CPU"
            )
            cls = bnb.optim.AdamW8bit if eight else bnb.optim.AdamW
        return cls(params, lr=config.lr, weight_decay=config.weight_decay)

    def extract(self, model: Any, *, base_name: str | None, provenance: dict[str, Any]) -> Any:
        from adaptkit_lora.inject import extract

        adapter = extract(model, base_name=base_name, provenance=provenance)
        adapter.producer.component = "backend:qlora"
        adapter.provenance.setdefault("qlora", getattr(self, "last_report", {}))
        return adapter

    def memory_report(self, model: Any) -> dict[str, Any]:
        return dict(getattr(self, "last_report", {}))
