"""Greedy generation with ONNX Runtime GenAI and with PyTorch, for parity and for ``generate``.

Both sides produce, for one prompt, the greedy continuation and the logits of the prefill
step (every prompt position). Parity compares them:

- free-running tokens (the decode path with its KV cache is what a user runs);
- the prefill logits (``max |Δ|`` over all positions);
- teacher-forced top-1 agreement: the exported model reads the *reference* sequence (prompt +
  PyTorch's tokens) in one pass, and at each generated position its argmax is compared with
  PyTorch's token. Free-running sequences part for good at the first differing token, so only
  teacher forcing gives a per-step agreement that means something for fp16 and int4.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch

#: Probe prompts: lengths chosen to cover a one-token prompt, a short and a longer prefill.
PROBE_LENGTHS = (1, 6, 17)
PROBE_NEW_TOKENS = 12


def probe_prompts(vocab: int, seed: int = 0) -> list[list[int]]:
    """Seeded random token-id prompts of :data:`PROBE_LENGTHS` (tokens below ``vocab``)."""
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, vocab, (n,), generator=g).tolist() for n in PROBE_LENGTHS]


def eos_ids(config: Any) -> set[int]:
    """The end-of-sequence ids of a Hugging Face config (empty when it has none)."""
    eos = getattr(config, "eos_token_id", None)
    if eos is None:
        return set()
    return {int(e) for e in eos} if isinstance(eos, list | tuple) else {int(eos)}


def until_eos(tokens: list[int], eos: set[int]) -> list[int]:
    """``tokens`` up to and including the first end-of-sequence token."""
    for i, t in enumerate(tokens):
        if t in eos:
            return tokens[: i + 1]
    return tokens


# -- PyTorch ---------------------------------------------------------------------------------


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


def torch_prefill_logits(model: Any, sequence: list[int]) -> np.ndarray:
    """Logits at every position of ``sequence`` (one forward, no cache)."""
    device = next(model.parameters()).device
    with torch.no_grad():
        return model(input_ids=torch.tensor([sequence], device=device)).logits[0].float().cpu().numpy()


# -- ONNX Runtime GenAI ----------------------------------------------------------------------


class GenaiModel:
    """An exported folder loaded once in ONNX Runtime GenAI, with its adapters (if any)."""

    def __init__(self, folder: Path, device: str = "cpu", threads: int | None = None) -> None:
        """Load ``folder`` on ``device``. On CPU, ``threads`` intra-op threads (default: every
        core this process may use): ONNX Runtime GenAI's own default ran one thread on a 2-core
        machine, half the speed (13 vs 25 tokens/s at 1.1B int4). Set at load time, not in the
        export: the right number belongs to the machine that runs it."""
        import json
        import os

        import onnxruntime_genai as og

        self._og = og
        config = og.Config(str(folder))
        config.clear_providers()
        if device == "cuda":
            config.append_provider("cuda")
        else:
            if threads is None:
                usable = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None
                threads = len(usable) if usable else (os.cpu_count() or 1)
            options = {"intra_op_num_threads": int(threads)}
            config.overlay(json.dumps({"model": {"decoder": {"session_options": options}}}))
        self.model = og.Model(config)
        self.adapters: Any = None

    def load_adapter(self, path: Path, name: str) -> None:
        if self.adapters is None:
            self.adapters = self._og.Adapters(self.model)
        self.adapters.load(str(path), name)

    def _generator(self, max_length: int, adapter: str | None, search: dict[str, Any]) -> Any:
        params = self._og.GeneratorParams(self.model)
        params.set_search_options(max_length=max_length, **search)
        generator = self._og.Generator(self.model, params)
        if adapter is not None:
            generator.set_active_adapter(self.adapters, adapter)
        return generator

    def generate(
        self,
        prompt: list[int],
        max_new: int,
        *,
        adapter: str | None = None,
        search: dict[str, Any] | None = None,
        on_token: Callable[[int], None] | None = None,
    ) -> tuple[list[int], np.ndarray]:
        """Continuation (greedy unless ``search`` says otherwise) and the prefill logits."""
        search = {"do_sample": False, **(search or {})}
        generator = self._generator(len(prompt) + max_new, adapter, search)
        generator.append_tokens(np.asarray([prompt], dtype=np.int32))
        tokens: list[int] = []
        first: np.ndarray | None = None
        while not generator.is_done():
            generator.generate_next_token()
            if first is None:
                first = np.asarray(generator.get_output("logits"), dtype=np.float32)[0]
            token = int(generator.get_next_tokens()[0])
            tokens.append(token)
            if on_token is not None:
                on_token(token)
        return tokens, first if first is not None else np.zeros((0, 0), np.float32)

    def prefill_logits(self, sequence: list[int], *, adapter: str | None = None) -> np.ndarray:
        """Logits at every position of ``sequence`` read in one pass (teacher forcing)."""
        generator = self._generator(len(sequence) + 1, adapter, {"do_sample": False})
        generator.append_tokens(np.asarray([sequence], dtype=np.int32))
        generator.generate_next_token()
        return np.asarray(generator.get_output("logits"), dtype=np.float32)[0]


# -- comparison ------------------------------------------------------------------------------


def compare_runs(
    reference: Iterable[tuple[list[int], list[int], np.ndarray]],
    exported: Iterable[tuple[list[int], np.ndarray, np.ndarray]],
    eos: set[int],
) -> list[dict[str, Any]]:
    """One row per prompt.

    Args:
        reference: ``(prompt, tokens, prefill logits)`` from PyTorch.
        exported: ``(tokens, prefill logits, logits over the reference sequence)`` from the export.
        eos: End-of-sequence ids (sequences are compared up to the first).
    """
    rows = []
    for (prompt, ref_tokens, ref_first), (tokens, first, forced) in zip(reference, exported, strict=True):
        ref_tokens, tokens = until_eos(ref_tokens, eos), until_eos(tokens, eos)
        n = len(prompt)
        # forced[p] predicts the token at p + 1: positions n-1 .. n+k-2 predict the k new tokens.
        predicted = forced[n - 1 : n - 1 + len(ref_tokens)].argmax(-1).tolist()
        agree = sum(int(a == b) for a, b in zip(predicted, ref_tokens, strict=True))
        same_prefix = 0
        for a, b in zip(tokens, ref_tokens, strict=False):
            if a != b:
                break
            same_prefix += 1
        rows.append(
            {
                "prompt_tokens": n,
                "new_tokens": len(ref_tokens),
                "tokens_identical": tokens == ref_tokens,
                "matching_prefix": same_prefix,
                "top1_agreement": agree / max(len(ref_tokens), 1),
                "prefill_max_abs": float(np.abs(first - ref_first).max()),
                "prefill_scale": float(np.abs(ref_first).max()),
            }
        )
    return rows
