"""Decoding in PyTorch with the KV cache: ``adaptkit generate``'s path for a Hugging Face model
with adapters attached unmerged (:mod:`adaptkit.generating`), and the reference exporters check
their output against (``adaptkit.api.nn``).

Each step feeds the last token back on the cache and picks the next from the last logits ``ℓ``:
greedy takes ``argmax ℓ``; sampling draws from ``softmax(ℓ / T)`` cut to the nucleus (the
smallest set of tokens whose probability reaches ``top_p``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch


def eos_ids(config: Any) -> set[int]:
    """The end-of-sequence ids of a Hugging Face config (empty when it has none)."""
    eos = getattr(config, "eos_token_id", None)
    if eos is None:
        return set()
    return {int(e) for e in eos} if isinstance(eos, list | tuple) else {int(eos)}


def torch_greedy(
    model: Any, prompt: list[int], max_new: int, eos: set[int], on_token: Callable[[int], None] | None = None
) -> tuple[list[int], np.ndarray]:
    """Greedy continuation with the KV cache, and the prefill logits ``[len(prompt), vocab]``."""
    return _decode(model, prompt, max_new, eos, lambda logits: int(logits.argmax()), on_token)


def torch_sample(
    model: Any,
    prompt: list[int],
    max_new: int,
    eos: set[int],
    *,
    temperature: float,
    top_p: float,
    seed: int,
    on_token: Callable[[int], None] | None = None,
) -> list[int]:
    """Temperature / nucleus sampling with the KV cache (seeded): tokens are drawn from
    ``softmax(logits / T)`` restricted to the smallest set whose probability reaches ``top_p``."""
    g = torch.Generator(device="cpu").manual_seed(seed)

    def pick(logits: torch.Tensor) -> int:
        probs = torch.softmax(logits.float().cpu() / temperature, dim=-1)
        sorted_p, order = probs.sort(descending=True)
        keep = sorted_p.cumsum(0) - sorted_p < top_p  # the smallest prefix reaching top_p
        sorted_p = torch.where(keep, sorted_p, torch.zeros_like(sorted_p))
        return int(order[torch.multinomial(sorted_p / sorted_p.sum(), 1, generator=g)])

    return _decode(model, prompt, max_new, eos, pick, on_token)[0]


def _decode(
    model: Any,
    prompt: list[int],
    max_new: int,
    eos: set[int],
    pick: Callable[[torch.Tensor], int],
    on_token: Callable[[int], None] | None,
) -> tuple[list[int], np.ndarray]:
    """Prefill ``prompt``, then ``pick`` a token from the last logits and feed it back (KV cache)
    until ``max_new`` tokens or an end-of-sequence token; returns them and the prefill logits."""
    device = next(model.parameters()).device
    tokens: list[int] = []
    with torch.no_grad():
        out = model(input_ids=torch.tensor([prompt], device=device), use_cache=True)
        first = out.logits[0].float().cpu().numpy()
        while len(tokens) < max_new:
            token = pick(out.logits[0, -1])
            tokens.append(token)
            if on_token is not None:
                on_token(token)
            if token in eos or len(tokens) == max_new:
                break
            out = _step(model, token, out, device)
    return tokens, first


def _step(model: Any, token: int, out: Any, device: Any) -> Any:
    """One decode step on the cache of ``out`` (transformers 5 calls it ``cache``)."""
    ids = torch.tensor([[token]], device=device)
    if "cache" in out:
        return model(input_ids=ids, cache=out["cache"], use_cache=True)
    return model(input_ids=ids, past_key_values=out["past_key_values"], use_cache=True)
