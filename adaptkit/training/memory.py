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


def dominant_dtype(model: Any) -> torch.dtype:
    """The floating dtype holding most of the model's (non-4-bit) parameter values."""
    counts: dict[torch.dtype, int] = {}
    for p in model.parameters():
        if p.is_floating_point() and type(p).__name__ != "Params4bit":
            counts[p.dtype] = counts.get(p.dtype, 0) + p.numel()
    return max(counts, key=counts.get) if counts else torch.float32


def memory_account(model: Any, params: list[Any], device: torch.device) -> dict[str, Any]:
    """Where the memory goes at the start of training: the base as loaded (4-bit layers at
    their packed size plus quantization statistics) and the LoRA factors."""
    trainable = {id(p) for p in params}
    lora = sum(p.numel() * p.element_size() for p in params)
    base = sum(p.numel() * p.element_size() for p in model.parameters() if id(p) not in trainable)
    base += sum(b.numel() * b.element_size() for b in model.buffers())
    quantized = 0
    for m in model.modules():
        state = getattr(getattr(m, "weight", None), "quant_state", None)
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
    }


def optimizer_state_bytes(optimizer: torch.optim.Optimizer) -> int:
    """Bytes of every tensor in the optimizer's state (nested ones included)."""

    def size(value: Any) -> int:
        if isinstance(value, torch.Tensor):
            return value.numel() * value.element_size()
        if isinstance(value, dict):
            return sum(size(v) for v in value.values())
        return 0

    return int(sum(size(state) for state in optimizer.state.values()))
