"""NF4 quantization of linear layers with bitsandbytes, and an honest size account.

NF4 stores 4 bits per weight plus one absmax per block of 64; double quantization stores
those absmax values as 8-bit codes in blocks of 256 with one fp32 scale per block and one
fp32 offset per tensor: ``4 + 8/64 + 32/(64·256) ≈ 4.127`` bits per parameter (plus two
constant lookup tables, 16 + 256 fp32 values, the same for every tensor and counted apart).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from adaptkit.api import AdaptkitError
from adaptkit_qlora.backend import BLOCKSIZES  # one list, the options schema's


def check_blocksize(blocksize: int) -> None:
    if blocksize not in BLOCKSIZES:
        raise AdaptkitError(
            f"unsupported NF4 blocksize {blocksize}; valid: {', '.join(map(str, BLOCKSIZES))}",
            key="blocksize",
        )


def empty_linear4bit(
    linear: nn.Module, *, compute_dtype: torch.dtype, quant_storage: torch.dtype = torch.uint8
) -> nn.Module:
    """A weightless (meta) NF4 ``Linear4bit`` shaped like ``linear``, double quantization on,
    its packed 4-bit pairs stored as ``quant_storage`` elements."""
    from bitsandbytes.nn import Linear4bit

    q = Linear4bit(
        linear.in_features,
        linear.out_features,
        bias=linear.bias is not None,
        compute_dtype=compute_dtype,
        compress_statistics=True,
        quant_type="nf4",
        quant_storage=quant_storage,
        device="meta",
    )
    # bitsandbytes 0.50 repacks 4-bit weights in place for a bf16 CPU kernel on the first
    # no-grad eval forward; training afterwards goes through gemv_4bit, which has no autograd
    # kernel (and crashes for widths not divisible by the blocksize). Keep one exact path.
    q.support_avx512bf16_for_cpu = False
    return q


def shardable_linear4bit(
    linear: nn.Module, *, blocksize: int, compute_dtype: torch.dtype
) -> tuple[nn.Module, Any]:
    """For FSDP (``--shard``): a meta NF4 layer whose weight already has its packed shape, and
    the function that packs a whole checkpoint weight for it.

    NF4 packs two 4-bit codes per byte; stored as ``compute_dtype`` elements (the storage trick
    of FSDP-QLoRA, bitsandbytes' ``quant_storage``), ``n`` weights become a
    ``(⌈n/2⌉ / itemsize, 1)`` tensor of the same dtype as the rest of the model, which FSDP
    shards along its rows like any parameter. The quantization statistics (absmax, the
    double-quantization codes) are kept whole on the module, where bitsandbytes restores them
    from when the gathered weight arrives as a plain tensor.

    Returns:
        ``(layer, pack)``: ``pack(weight, device)`` quantizes the whole weight on ``device``
        (bit-identical to the one-process loader), sets ``layer.quant_state``, and returns the
        packed tensor.
    """
    from bitsandbytes.nn import Params4bit

    check_blocksize(blocksize)
    layer = empty_linear4bit(linear, compute_dtype=compute_dtype, quant_storage=compute_dtype)
    n = linear.in_features * linear.out_features
    rows = (n + 1) // (compute_dtype.itemsize * 2)  # bitsandbytes' packed length
    layer.weight = Params4bit(
        torch.empty(rows, 1, dtype=compute_dtype, device="meta"),
        requires_grad=False,
        quant_type="nf4",
        blocksize=blocksize,
        compress_statistics=True,
        quant_storage=compute_dtype,
        module=layer,
        bnb_quantized=True,
    )

    def pack(weight: torch.Tensor, device: torch.device) -> torch.Tensor:
        packed = Params4bit(
            weight,
            requires_grad=False,
            quant_type="nf4",
            blocksize=blocksize,
            compress_statistics=True,
            quant_storage=compute_dtype,
            module=layer,
        ).to(device)  # bitsandbytes packs on the move and hands the statistics to the module
        return packed.data

    return layer, pack


def quantize_linear(linear: nn.Linear, *, blocksize: int, compute_dtype: torch.dtype) -> nn.Module:
    """An NF4 ``Linear4bit`` (double quantization on) holding ``linear``'s weight, on CPU or
    the weight's CUDA device (quantization happens on the move)."""
    from bitsandbytes.nn import Params4bit

    check_blocksize(blocksize)
    device = linear.weight.device
    q = empty_linear4bit(linear, compute_dtype=compute_dtype)
    q.weight = Params4bit(
        linear.weight.data.detach().to(torch.float32).clone(),
        requires_grad=False,
        quant_type="nf4",
        blocksize=blocksize,
        compress_statistics=True,
    )
    if linear.bias is not None:
        q.bias = nn.Parameter(linear.bias.data.detach().clone(), requires_grad=False)
    return q.to(device)


def quantized_bytes(module: nn.Module) -> tuple[int, int, int]:
    """``(per-tensor bytes, constant-table bytes, parameters)`` of a ``Linear4bit``."""
    w = module.weight
    # A sharded weight (a DTensor) cannot carry the statistics; bitsandbytes keeps them on the module.
    st = getattr(w, "quant_state", None) or module.quant_state
    per = w.numel() * w.element_size() + st.absmax.numel() * st.absmax.element_size()
    tables = st.code.numel() * st.code.element_size()
    if st.nested:
        per += st.state2.absmax.numel() * st.state2.absmax.element_size() + 4  # + fp32 offset
        tables += st.state2.code.numel() * st.state2.code.element_size()
    return per, tables, int(module.in_features * module.out_features)


def memory_report(
    model: nn.Module, lora_params: list[Any], optimizer_state_bytes: int | None = None
) -> dict[str, Any]:
    quant = [m for m in model.modules() if type(m).__name__ == "Linear4bit"]
    packed = {id(m.weight) for m in quant}
    per = tables = params = 0
    for m in quant:
        p, t, n = quantized_bytes(m)
        per, tables, params = per + p, tables + t, params + n
    lora_ids = {id(p) for p in lora_params}
    other = sum(
        p.numel() * p.element_size()
        for p in model.parameters()
        if id(p) not in lora_ids and id(p) not in packed
    )
    lora = sum(p.numel() * p.element_size() for p in lora_params)
    return {
        "quantized_layers": len(quant),
        "quantized_params": params,
        "quantized_bytes": per,
        "constant_table_bytes": tables,
        "bits_per_quantized_param": 8 * per / params if params else None,
        "bf16_equivalent_bytes": 2 * params,
        "compression_vs_bf16": (2 * params) / per if per else None,
        "other_base_bytes": other,
        "lora_param_bytes": lora,
        "optimizer_state_bytes": optimizer_state_bytes
        if optimizer_state_bytes is not None
        else 2 * 4 * sum(p.numel() for p in lora_params),
    }
