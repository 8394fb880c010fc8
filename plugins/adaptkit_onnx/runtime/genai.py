"""An export folder loaded in ONNX Runtime GenAI: generation (greedy or sampled) and the
prefill logits, with its ``.onnx_adapter`` files switched per generator.

:mod:`adaptkit_onnx.runtime.genai_runtime` runs it for ``adaptkit generate``;
:mod:`adaptkit_onnx.parity` compares it with PyTorch.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np


class GenaiModel:
    """An exported folder loaded once in ONNX Runtime GenAI, with its adapters (if any)."""

    def __init__(self, folder: Path, device: str = "cpu", threads: int | None = None) -> None:
        """Load ``folder`` on ``device``. On CPU, ``threads`` intra-op threads (default: every
        core this process may use): ONNX Runtime GenAI's own default ran one thread on a 2-core
        machine, half the speed (13 vs 25 tokens/s at 1.1B int4). Set at load time, not in the
        export: the right number belongs to the machine that runs it."""
        import json
        import os

        # torch first: it loads the CUDA libraries its nvidia-* wheels ship, where ONNX Runtime's
        # CUDA provider then finds them (ONNX Runtime's documented order with PyTorch).
        import torch  # noqa: F401

        # isort: split
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
