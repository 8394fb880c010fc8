"""What training costs in memory: the base and LoRA factors as loaded, the optimizer state, and
the peak (CUDA's allocator peak on a GPU, the process's own peak RSS elsewhere), as the trainer
writes them to its metrics file."""

from __future__ import annotations

from typing import Any

import torch


def peak_memory(device: torch.device) -> int:
    """Peak bytes: CUDA's allocator peak on a GPU, else this process's peak RSS.

    On Linux the RSS peak is ``VmHWM`` from ``/proc/self/status``, which starts afresh at
    ``exec``; ``ru_maxrss`` keeps the high-water mark the process inherited at ``fork``, so a
    trainer started by a large parent (a test runner, a notebook) would report the parent's
    memory as its own. Elsewhere ``ru_maxrss`` (KiB on Linux, bytes on macOS) is the fallback.
    """
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    import resource
    import sys

    peak = int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
    return peak if sys.platform == "darwin" else peak * 1024


def local_bytes(tensor: Any) -> int:
    """Bytes this process holds of ``tensor``: its own rows of a sharded ``DTensor`` (FSDP,
    ``--shard``), all of any other tensor."""
    to_local = getattr(tensor, "to_local", None)
    held = to_local() if callable(to_local) else tensor
    return held.numel() * held.element_size()


def _packed_weights(model: Any) -> dict[int, Any]:
    """The 4-bit weights by ``id``, with their module: found by the module (bitsandbytes'
    ``Linear4bit``), since a sharded weight is a ``DTensor``, no longer a ``Params4bit``."""
    return {id(m.weight): m for m in model.modules() if type(m).__name__ == "Linear4bit"}


def _quant_state(module: Any) -> Any:
    """A 4-bit layer's quantization statistics: on its weight, or (sharded: the weight is a
    ``DTensor`` that cannot carry them) on the module, where bitsandbytes keeps a copy."""
    return getattr(module.weight, "quant_state", None) or getattr(module, "quant_state", None)


def dominant_dtype(model: Any) -> torch.dtype:
    """The floating dtype holding most of the model's (non-4-bit) parameter values."""
    packed = _packed_weights(model)
    counts: dict[torch.dtype, int] = {}
    for p in model.parameters():
        if p.is_floating_point() and id(p) not in packed and type(p).__name__ != "Params4bit":
            counts[p.dtype] = counts.get(p.dtype, 0) + p.numel()
    return max(counts, key=counts.get) if counts else torch.float32


def memory_account(model: Any, params: list[Any], device: torch.device, *, shards: int = 1) -> dict[str, Any]:
    """Where the memory goes at the start of training: the base as loaded (4-bit layers at
    their packed size plus quantization statistics) and the LoRA factors.

    Args:
        shards: How many processes share the parameters (``--shard``: the world size). Bytes are
            then this process's share: its rows of every parameter, plus what each process holds
            whole (buffers, 4-bit quantization statistics).
    """
    trainable = {id(p) for p in params}
    lora = sum(local_bytes(p) for p in params)
    base = sum(local_bytes(p) for p in model.parameters() if id(p) not in trainable)
    base += sum(local_bytes(b) for b in model.buffers())
    quantized = 0
    for m in _packed_weights(model).values():
        state = _quant_state(m)
        if state is None:
            continue
        quantized += 1
        for t in (state.absmax, getattr(state.state2, "absmax", None), getattr(state.state2, "code", None)):
            if isinstance(t, torch.Tensor):
                base += t.numel() * t.element_size()
    return {
        "device": str(device),
        "base_dtype": str(dominant_dtype(model)).removeprefix("torch."),
        "quantized_layers": quantized,
        "base_bytes": int(base),
        "lora_bytes": int(lora),
        "shards": shards,
    }


def optimizer_state_bytes(optimizer: torch.optim.Optimizer) -> int:
    """Bytes of every tensor in the optimizer's state (nested ones included), this process's
    share of sharded ones."""

    def size(value: Any) -> int:
        if isinstance(value, torch.Tensor):
            return local_bytes(value)
        if isinstance(value, dict):
            return sum(size(v) for v in value.values())
        return 0

    return int(sum(size(state) for state in optimizer.state.values()))
