"""The ``qlora`` backend (see the package docstring).

Options (``--option KEY=VALUE`` / ``options:`` in a train recipe):
    ``blocksize`` (64): NF4 block size.
    ``quantize`` (``targets``): quantize only the LoRA targets, or ``all-linear`` (every linear
        layer but the output head).
    ``optimizer`` (``paged_adamw_32bit``): ``paged_adamw_32bit``, ``paged_adamw_8bit`` or
        ``adamw``. Paging needs CUDA; on CPU the non-paged bitsandbytes AdamW (32/8-bit) runs,
        and the log says so once.
    ``compute_dtype``: dtype of the 4-bit matmuls (bf16 on CUDA, fp32 on CPU by default).

Under ``--shard`` (FSDP2, :meth:`QloraBackend.shard_plan`) the packed NF4 weights are stored in
the compute dtype (bitsandbytes' ``quant_storage``, the FSDP-QLoRA trick), so FSDP shards them
along their rows like every other parameter, and the factors train with torch's AdamW:
bitsandbytes' optimizer kernels have no rule for sharded (``DTensor``) parameters (measured with
bitsandbytes 0.50.2: ``optimizer_update_32bit`` "does not have a sharding strategy registered").
"""

from __future__ import annotations

from typing import Any, ClassVar

from adaptkit.api import AdaptkitError

OPTIMIZERS = ("paged_adamw_32bit", "paged_adamw_8bit", "adamw")
#: NF4 block sizes bitsandbytes has kernels for.
BLOCKSIZES = (64, 128, 256, 512, 1024, 2048, 4096)


class QloraBackend:
    name = "qlora"
    description = "QLoRA: NF4 4-bit base (double quant, blocksize 64), 16-bit LoRA, paged AdamW on CUDA"
    requires: ClassVar[dict[str, str]] = {"bitsandbytes": "bitsandbytes>=0.45", "torch": "torch"}
    supports: ClassVar[frozenset[str]] = frozenset({"resume", "ddp", "shard"})

    #: Checked by the trainer before the model loads (:mod:`adaptkit.training.options`).
    options_schema: ClassVar[dict[str, Any]] = {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "blocksize": {
                "type": "integer",
                "minimum": BLOCKSIZES[0],
                "maximum": BLOCKSIZES[-1],
                "enum": list(BLOCKSIZES),
                "default": 64,
            },
            "quantize": {"type": "string", "enum": ["targets", "all-linear"], "default": "targets"},
            "optimizer": {"type": "string", "enum": list(OPTIMIZERS), "default": "paged_adamw_32bit"},
            "compute_dtype": {"type": "string", "enum": ["bf16", "fp16", "fp32"]},
        },
    }

    def _options(self, config: Any) -> dict[str, Any]:
        from adaptkit.api.training import backend_options

        return backend_options(self, config.options)

    @staticmethod
    def _cuda(config: Any) -> bool:
        import torch

        return torch.cuda.is_available() and getattr(config, "device", "auto") != "cpu"

    def _compute_dtype(self, config: Any, cuda: bool) -> Any:
        import torch

        name = self._options(config).get("compute_dtype", "bf16" if cuda else "fp32")
        return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[name]

    def _choose(self, config: Any, model: Any) -> list[str]:
        """The layers to quantize: the LoRA targets, or every linear layer but the head."""
        from adaptkit.api.nn import select_targets

        opts = self._options(config)
        settings = config.lora
        targets = select_targets(model, settings.targets, settings.exclude)
        chosen = select_targets(model, "all-linear") if opts["quantize"] == "all-linear" else targets
        _refuse_conv1d(model, chosen)
        return chosen

    def load_model(self, config: Any, folder: Any, dtype: Any, device: Any, log: Any) -> Any:
        """The base, quantized *while it loads*, tensor by tensor, straight onto ``device``: no
        full-precision copy of a quantized layer ever exists, and the peak is the 4-bit model
        plus one tensor (see :mod:`adaptkit_qlora.loader`). ``None`` when the checkpoint needs
        conversions this loader does not do; the trainer then uses :meth:`loading`."""
        from tqdm.auto import tqdm

        from adaptkit.api.models import meta_model
        from adaptkit_qlora.loader import load, plan

        skeleton = meta_model(folder)
        if skeleton is None:
            return None
        chosen = self._choose(config, skeleton)
        prepared = plan(folder, chosen)
        if prepared is None:
            log("qlora: this checkpoint needs transformers' loader (weight conversions); using it")
            return None
        opts = self._options(config)
        compute = self._compute_dtype(config, device.type == "cuda")
        log(
            f"qlora: packing {len(chosen)} linear layers to NF4 (double quantization, blocksize "
            f"{opts['blocksize']}) while loading, tensor by tensor; compute in "
            f"{str(compute).removeprefix('torch.')}"
        )
        total = len(prepared["placed"])
        with tqdm(total=total, desc="load + quantize", unit="tensor", leave=False, disable=None) as bar:
            return load(
                folder,
                prepared,
                quantize=chosen,
                dtype=dtype,
                device=device,
                blocksize=opts["blocksize"],
                compute_dtype=compute,
                progress=lambda n: bar.update(n - bar.n),
            )

    def loading(self, config: Any, folder: Any, log: Any) -> dict[str, Any]:
        """``from_pretrained`` arguments for transformers' quantizing loader (``BitsAndBytesConfig``),
        used when :meth:`load_model` cannot map the checkpoint. It quantizes while loading too,
        but keeps more of the checkpoint resident (measured in :mod:`adaptkit_qlora.loader`)."""
        from transformers import BitsAndBytesConfig

        from adaptkit.api.models import meta_model
        from adaptkit.api.nn import is_linear_like, output_head_names

        opts = self._options(config)
        if opts["blocksize"] != 64:
            log(
                f"qlora: blocksize {opts['blocksize']}: transformers' quantizing loader uses 64, so the "
                "base loads in its own dtype and is quantized layer by layer"
            )
            return {}
        skeleton = meta_model(folder)
        if skeleton is None:
            log("qlora: transformers does not know this model; quantizing layer by layer after loading")
            return {}
        chosen = self._choose(config, skeleton)
        linear = [n for n, m in skeleton.named_modules() if n and is_linear_like(m)]
        skip = sorted((set(linear) - set(chosen)) | output_head_names(skeleton))
        cuda = self._cuda(config)
        compute = str(self._compute_dtype(config, cuda)).removeprefix("torch.")
        log(
            f"qlora: quantizing {len(chosen)} linear layers to NF4 (double quantization) while loading "
            f"(transformers' loader), compute in {compute}"
        )
        return {
            "quantization_config": BitsAndBytesConfig(
                load_in_4bit=True,
                bnb_4bit_quant_type="nf4",
                bnb_4bit_use_double_quant=True,
                bnb_4bit_compute_dtype=self._compute_dtype(config, cuda),
                llm_int8_skip_modules=skip,
            )
        }

    def shard_plan(self, config: Any, model: Any, device: Any, log: Any) -> dict[str, Any]:
        """``--shard``: swap the layers to quantize in the meta skeleton for NF4 layers whose
        packed weight is stored in the compute dtype, and return, per checkpoint weight, the
        packing the trainer applies to the whole tensor before cutting its rows.

        Raises:
            AdaptkitError: ``optimizer=paged_adamw_8bit`` (bitsandbytes' 8-bit optimizer cannot
                update sharded parameters, and torch has no 8-bit AdamW to stand in), or a
                Conv1D target.
        """
        from adaptkit.api.nn import replace_module
        from adaptkit_qlora.quantize import shardable_linear4bit

        opts = self._options(config)
        if opts["optimizer"] == "paged_adamw_8bit":
            raise AdaptkitError(
                "bitsandbytes' optimizers cannot update sharded (DTensor) parameters, so under --shard "
                "qlora trains with torch's 32-bit AdamW; 8-bit optimizer states cannot be had",
                key="--option optimizer",
                hint="leave out --option optimizer (or pass adamw), or train without --shard",
            )
        chosen = self._choose(config, model)
        compute = self._compute_dtype(config, device.type == "cuda")
        packers = {}
        for name in chosen:
            layer, pack = shardable_linear4bit(
                model.get_submodule(name), blocksize=opts["blocksize"], compute_dtype=compute
            )
            replace_module(model, name, layer)
            packers[f"{name}.weight"] = lambda tensor, pack=pack: pack(tensor, device)
        log(
            f"qlora: {len(chosen)} linear layers packed to NF4 (double quantization, blocksize "
            f"{opts['blocksize']}) as they load, stored as {str(compute).removeprefix('torch.')} for "
            "FSDP; each process keeps its rows"
        )
        return packers

    def prepare(self, model: Any, settings: Any, config: Any, log: Any) -> list[Any]:
        from adaptkit.api import nn as lora
        from adaptkit.api.nn import replace_module, select_targets
        from adaptkit_qlora.quantize import memory_report, quantize_linear

        opts = self._options(config)
        cuda = any(p.is_cuda for p in model.parameters()) or self._cuda(config)
        compute = self._compute_dtype(config, cuda)
        targets = select_targets(model, settings.targets, settings.exclude)
        if not any(type(m).__name__ == "Linear4bit" for m in model.modules()):
            # A model handed over unquantized (Python API, or a blocksize the loader lacks):
            # quantize layer by layer; each layer's float copy lives only while it is packed.
            chosen = select_targets(model, "all-linear") if opts["quantize"] == "all-linear" else targets
            _refuse_conv1d(model, chosen)
            if cuda:
                model.to("cuda")
            for name in chosen:
                layer = quantize_linear(
                    model.get_submodule(name), blocksize=opts["blocksize"], compute_dtype=compute
                )
                replace_module(model, name, layer)
        for m in model.modules():
            if type(m).__name__ == "Linear4bit":
                # bitsandbytes 0.50 repacks 4-bit weights in place for a bf16 CPU kernel on the
                # first no-grad eval forward; training afterwards goes through gemv_4bit, which has
                # no autograd kernel (and crashes for widths not divisible by the blocksize).
                # Keeping the one exact path makes any width trainable.
                m.support_avx512bf16_for_cpu = False
        for p in model.parameters():
            p.requires_grad_(False)
        upcast = _upcast_unquantized(model)
        if upcast:
            log(
                f"qlora: {upcast / 2**20:,.1f} MiB of unquantized 16-bit parameters (norms, embeddings, "
                "output head) upcast to float32 for stable training, as PEFT's k-bit preparation does"
            )
        # LoRA in 16-bit by default (bf16); the CPU path computes in fp32.
        lora_dtype = settings.dtype if settings.dtype != "fp32" or not cuda else "bf16"
        settings = type(settings)(**{**vars(settings), "targets": targets, "dtype": lora_dtype})
        lora.attach(model, settings)
        params = lora.trainable_parameters(model)
        self.last_report = None
        if any(p.is_meta for p in model.parameters()):  # --shard: the weights load after prepare
            log(f"qlora: LoRA in {lora_dtype}")
            return params
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

        choice = self._options(config)["optimizer"]
        if getattr(config, "shard", False) and choice != "adamw":
            log(
                "qlora --shard: bitsandbytes' optimizers cannot update sharded parameters; training with "
                "torch's AdamW (32-bit states, the update paged_adamw_32bit makes)"
            )
            choice = "adamw"
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
        from adaptkit.api.nn import extract

        adapter = extract(model, base_name=base_name, provenance=provenance)
        adapter.producer.component = "backend:qlora"
        adapter.provenance.setdefault("qlora", self.memory_report(model))
        return adapter

    def memory_report(self, model: Any) -> dict[str, Any]:
        """The 4-bit account of ``model`` (whole-model figures, also when sharded): made in
        :meth:`prepare`, or here once a sharded model's weights are loaded."""
        if getattr(self, "last_report", None) is None and not any(p.is_meta for p in model.parameters()):
            from adaptkit.api.nn import trainable_parameters
            from adaptkit_qlora.quantize import memory_report

            self.last_report = memory_report(model, trainable_parameters(model))
        return dict(getattr(self, "last_report", None) or {})


def _refuse_conv1d(model: Any, names: list[str]) -> None:
    from adaptkit.api.nn import module_kind

    conv = [n for n in names if module_kind(model.get_submodule(n)) != "linear"]
    if conv:
        kind = type(model.get_submodule(conv[0])).__name__
        raise AdaptkitError(f"qlora quantizes nn.Linear layers; {conv[0]!r} is a {kind}", key="targets")


def _upcast_unquantized(model: Any) -> int:
    """Cast every unquantized fp16/bf16 parameter to float32 in place; returns the bytes added."""
    import torch

    added = 0
    for p in model.parameters():
        if p.dtype in (torch.float16, torch.bfloat16) and type(p).__name__ != "Params4bit":
            added += p.numel() * 2
            p.data = p.data.to(torch.float32)
    return added
