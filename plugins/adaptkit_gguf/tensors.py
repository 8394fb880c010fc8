"""An adapter's targets as llama.cpp's LoRA tensors: names, layout and one scale per file.

llama.cpp applies a pair as ``y += scale · B·(A·x)`` with ``scale = s_req · alpha / r``: one
``adapter.lora.alpha`` for the whole file, ``r`` read from each pair's ``B``, and ``s_req`` the
per-request scale (``--lora-scaled``, ``/lora-adapters``). adaptkit's targets each carry their own
scale ``s_t`` (per-module ranks and alphas, rsLoRA's ``alpha/√r``, weights folded in by a
combination), so the writer picks one ``alpha`` and folds what is left into ``B``::

    B'_t = B_t · (s_t · r_t / alpha)    ⇒    (alpha / r_t) · B'_t · A_t = s_t · B_t · A_t

``alpha`` is the value of ``s_t · r_t`` shared by the most targets, so a plain adapter (one
alpha and rank, or rsLoRA at one rank) is written with its factors untouched. The fold factor is
formed in float64 and applied in float32, before any rounding to the file's dtype.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any

from adaptkit.api import Adapter, AdaptkitError
from adaptkit_gguf.architectures import Architecture, pairs_order


@dataclass(frozen=True)
class LoraTensors:
    """One target as written: ``name.lora_a`` (``r × in``) and ``name.lora_b`` (``out × r``)."""

    target: str
    name: str
    a: Any
    b: Any
    fold: float


def file_alpha(adapter: Adapter) -> float:
    """The ``adapter.lora.alpha`` to write: the most common ``s_t · r_t`` (ties: the larger)."""
    products = Counter(_product(p.scale, p.rank) for p in adapter.targets.values())
    products = Counter({value: n for value, n in products.items() if value > 0})
    if not products:  # every scale zero or negative: any positive alpha folds exactly
        return 1.0
    best = max(products.values())
    return max(value for value, count in products.items() if count == best)


def _product(scale: float, rank: int) -> float:
    # Rounded to 12 significant digits so that alpha/√r · r from different ranks' float
    # arithmetic still counts as one value; the fold factor itself is exact.
    return float(f"{scale * rank:.12g}")


def gguf_name(target: str, names: Any) -> str | None:
    """The base GGUF tensor a target updates (``blk.0.attn_q.weight``), or ``None``."""
    base = names.get_name(target)
    return None if base is None else base + ".weight"


def build(adapter: Adapter, arch: Architecture, config: Any, names: Any, alpha: float) -> list[LoraTensors]:
    """Every target of ``adapter`` as llama.cpp's tensors (see the module docstring).

    Args:
        adapter: A plain LoRA adapter (targets only; saved modules were refused before).
        arch: The base's architecture entry.
        config: The base's Hugging Face config (head counts for the rotary reordering).
        names: ``gguf.TensorNameMap`` for the architecture and its block count.
        alpha: The file's ``adapter.lora.alpha`` (:func:`file_alpha`).

    Raises:
        AdaptkitError: A target with no tensor in llama.cpp's layout, named with the reason.
    """
    import torch

    out = []
    for target, pair in sorted(adapter.targets.items()):
        name = gguf_name(target, names)
        if name is None:
            raise AdaptkitError(
                f"{target}: llama.cpp has no tensor for this module in a {config.model_type} model, "
                "so it cannot apply a LoRA to it",
                key=target,
                hint="export with --merged, or train without this target",
            )
        if "_exps" in name:
            raise AdaptkitError(
                f"{target}: llama.cpp stores the experts of a layer as one 3-D tensor ({name}); "
                "a LoRA on one expert cannot be applied to it",
                key=target,
                hint="export with --merged",
            )
        fold = pair.scale * pair.rank / alpha
        a = pair.A.to(torch.float32).contiguous()
        b = pair.B.to(torch.float64).mul(fold).to(torch.float32)
        if arch.rotary_pairs:
            heads = _rotary_heads(target, config)
            if heads is not None:
                b = b[pairs_order(b.shape[0], heads)]
        out.append(LoraTensors(target, name, a, b.contiguous(), fold))
    return out


def _rotary_heads(target: str, config: Any) -> int | None:
    """Heads of a rotated projection (query: attention heads; key: KV heads), else ``None``."""
    leaf = target.rsplit(".", 1)[-1]
    if leaf == "q_proj":
        return config.num_attention_heads
    if leaf == "k_proj":
        return getattr(config, "num_key_value_heads", None) or config.num_attention_heads
    return None
