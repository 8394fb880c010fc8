"""The base-model architectures whose adapters llama.cpp applies, and how each lays out tensors.

An adapter GGUF names each LoRA pair after the base GGUF tensor it updates
(``blk.0.attn_q.weight.lora_a``), so the writer must know, per architecture:

* which ``gguf.MODEL_ARCH`` llama.cpp loads a converted Hugging Face model as (it refuses an
  adapter whose ``general.architecture`` differs from the base's);
* whether the converter reorders rows of the query and key projections. llama.cpp's LLAMA
  graph rotates adjacent pairs of each head (``x[2i], x[2i+1]``), while Hugging Face's Llama
  rotates halves (``x[i], x[i + d/2]``). Its converter therefore permutes the rows of
  ``q_proj``/``k_proj`` per head, and an update to those rows must be permuted the same way: a
  row permutation ``P`` turns ``W + s·B·A`` into ``P·W + s·(P·B)·A``, so only ``B`` changes.

Only architectures whose adapters are checked token for token against PEFT in llama.cpp itself
(``tests/plugins_builtin/adaptkit_gguf``) are listed; any other ``model_type`` is refused rather
than written with a layout nobody verified.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Architecture:
    """How llama.cpp stores one Hugging Face architecture.

    Attributes:
        gguf_arch: The ``gguf.MODEL_ARCH`` member name (``"LLAMA"``).
        rotary_pairs: The query/key rows are reordered from halves to adjacent pairs per head.
    """

    gguf_arch: str
    rotary_pairs: bool = False


#: ``config.model_type`` -> how llama.cpp's converter writes it. Mistral converts as LLAMA.
ARCHITECTURES: dict[str, Architecture] = {
    "llama": Architecture("LLAMA", rotary_pairs=True),
    "mistral": Architecture("LLAMA", rotary_pairs=True),
    "qwen2": Architecture("QWEN2"),
    "qwen3": Architecture("QWEN3"),
    "phi3": Architecture("PHI3"),
    "gemma": Architecture("GEMMA"),
    "gemma3_text": Architecture("GEMMA3"),
}


def pairs_order(rows: int, heads: int) -> list[int]:
    """The source row of each row after the halves-to-pairs reordering of one projection.

    Within each head of size ``d``, Hugging Face's row ``j`` (first half ``j < d/2`` and second
    half ``j ≥ d/2``) moves so that rows ``i`` and ``i + d/2`` become neighbours ``2i`` and
    ``2i+1``. Returned as ``order`` with ``new[k] = old[order[k]]``.

    Args:
        rows: The projection's output size (``heads · d``).
        heads: Heads of this projection (attention heads for the query, KV heads for the key).
    """
    d = rows // heads
    half = d // 2
    order = []
    for h in range(heads):
        for i in range(half):
            order += [h * d + i, h * d + half + i]
    return order
