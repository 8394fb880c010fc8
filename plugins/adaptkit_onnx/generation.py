"""Greedy generation with ONNX Runtime GenAI and with PyTorch, for parity and for ``generate``.

Both sides produce, for one prompt, the continuation and the logits of the prefill step
(every prompt position); :mod:`adaptkit_onnx.parity` compares them.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch


def eos_ids(config: Any) -> set[int]:
    """The end-of-sequence ids of a Hugging Face config (empty when it has none)."""
    eos = getattr(config, "eos_token_id", None)
    if eos is None:
        return set()
    return {int(e) for e in eos} if isinstance(eos, list | tuple) else {int(eos)}


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
