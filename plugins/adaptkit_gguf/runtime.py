"""Running a base GGUF with adapter GGUFs in llama.cpp, through llama-cpp-python.

One :class:`LlamaCppSession` holds a loaded base and its adapters, each at its own scale
(llama.cpp's ``scale · alpha / r`` per pair; see :mod:`adaptkit_gguf.tensors`). Greedy decoding
takes the argmax of llama.cpp's own logits at each step, so a token differs from PyTorch's only
where the logits do; sampling uses llama.cpp's sampler with the given seed.

llama.cpp reports why it refuses a file (``model arch and LoRA arch mismatch``) through its log;
the session catches that text and puts it in one :class:`~adaptkit.api.AdaptkitError` naming the
file, instead of letting the library print to the terminal.
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from adaptkit.api import AdaptkitError

#: The four bytes every GGUF file starts with.
MAGIC = b"GGUF"
#: GGML_TYPE_F32: the KV cache in full precision, so parity checks see the model's own error.
F32 = 0

_errors: list[str] = []
_callback: Any = None  # the ctypes callback must outlive every call into llama.cpp


def is_gguf(path: Path) -> bool:
    """Whether ``path`` is a regular file that starts with the GGUF magic."""
    try:
        # is_file() first: opening a FIFO or a device named *.gguf could block or never end.
        if not Path(path).is_file():
            return False
        with open(path, "rb") as f:
            return f.read(4) == MAGIC
    except OSError:
        return False


def _install_log() -> None:
    """Route llama.cpp's log into :data:`_errors` instead of stderr."""
    global _callback
    if _callback is not None:
        return
    import llama_cpp

    @llama_cpp.llama_log_callback
    def collect(level: int, text: bytes, user_data: Any) -> None:
        # Every line is kept (the numbering of log levels has changed between ggml versions);
        # _reason() picks the one that says what failed. Bounded: a long run logs a lot.
        _errors.append(text.decode("utf-8", "replace").strip())
        del _errors[:-200]

    _callback = collect
    llama_cpp.llama_log_set(_callback, ctypes.c_void_p(0))


def _reason() -> str:
    """llama.cpp's first line that says what failed (`` (llama.cpp: ...)``), or ``""``."""
    said = [e for e in _errors if "error" in e.lower() or "fail" in e.lower()]
    _errors.clear()
    return f" (llama.cpp: {said[0][:300]})" if said else ""


def _load(model: Path, **settings: Any) -> Any:
    """``llama_cpp.Llama(model, **settings)``, its failure one error naming the file and llama.cpp's
    reason (from its log, which never reaches the terminal)."""
    try:
        import llama_cpp
    except ImportError:
        raise AdaptkitError(
            "running a GGUF needs llama-cpp-python", hint="pip install 'adaptkit[gguf]'"
        ) from None
    _install_log()
    _errors.clear()
    try:
        return llama_cpp.Llama(str(model), verbose=False, **settings)
    except (ValueError, RuntimeError) as exc:
        why = _reason() or f" ({exc})"
        raise AdaptkitError(f"llama.cpp cannot load this model{why}", path=model) from None


class LlamaCppVocab:
    """A GGUF's vocabulary and sizes only (llama.cpp's ``vocab_only`` load: no weights read).

    Attributes:
        n_vocab: Vocabulary size.
        n_ctx_train: The context length the model was trained for (``None`` if unstated).
        eos: End-of-sequence ids (empty when the model has none).
    """

    def __init__(self, model: Path) -> None:
        self.llm = _load(model, vocab_only=True)
        self.n_vocab = self.llm.n_vocab()
        # A vocab-only load reads no hyperparameters; the metadata has the trained context.
        meta = self.llm.metadata
        context = meta.get(f"{meta.get('general.architecture')}.context_length", "")
        self.n_ctx_train = int(context) if context.isdigit() else None
        token = self.llm.token_eos()
        self.eos = [] if token is None or token < 0 else [int(token)]

    def tokenize(self, text: str) -> list[int]:
        return self.llm.tokenize(text.encode("utf-8"), add_bos=True, special=False)

    def detokenize(self, ids: Sequence[int]) -> str:
        return self.llm.detokenize(list(ids)).decode("utf-8", "replace")

    def close(self) -> None:
        self.llm.close()


class LlamaCppSession:
    """A base GGUF loaded in llama.cpp with adapter GGUFs applied at their scales.

    Args:
        model: The base model's GGUF file.
        adapters: ``(adapter GGUF, scale)`` pairs; the scale multiplies each pair's
            ``alpha / r`` (``llama-server --lora-scaled FILE SCALE``).
        n_ctx: Context length to allocate (prompt plus new tokens).
        threads: CPU threads (``None``: llama.cpp's choice).
        logits_all: Keep every position's logits (:meth:`logits`); decoding needs only the last.
        seed: The sampler's seed.
        kv_f32: Keep the KV cache in float32 (llama.cpp's default is float16).
        gpu: Offload every layer to the GPU (a llama-cpp-python built with GPU support).

    Raises:
        AdaptkitError: llama-cpp-python is missing, or llama.cpp refuses a file (with its reason).
    """

    def __init__(
        self,
        model: Path,
        adapters: Sequence[tuple[Path, float]] = (),
        *,
        n_ctx: int = 512,
        threads: int | None = None,
        logits_all: bool = False,
        seed: int = 0,
        kv_f32: bool = True,
        gpu: bool = False,
    ) -> None:
        kv = {"type_k": F32, "type_v": F32} if kv_f32 else {}
        self.llm = _load(
            model,
            n_ctx=n_ctx,
            n_batch=min(n_ctx, 512),
            n_threads=threads,
            n_threads_batch=threads,
            logits_all=logits_all,
            seed=seed,
            n_gpu_layers=-1 if gpu else 0,
            **kv,
        )
        import llama_cpp  # installed: _load said so otherwise

        self._handles = []
        for path, _ in adapters:
            handle = llama_cpp.llama_adapter_lora_init(self.llm._model.model, str(path).encode())
            if not handle:
                self.close()
                raise AdaptkitError(f"llama.cpp cannot apply this adapter to the model{_reason()}", path=path)
            self._handles.append(handle)
        if self._handles:
            n = len(self._handles)
            array = (llama_cpp.llama_adapter_lora_p_ctypes * n)(*self._handles)
            scales = (ctypes.c_float * n)(*[float(s) for _, s in adapters])
            if llama_cpp.llama_set_adapters_lora(self.llm._ctx.ctx, array, n, scales):
                self.close()
                raise AdaptkitError(f"llama.cpp cannot set the adapters{_reason()}", path=adapters[0][0])
        self.n_vocab = self.llm.n_vocab()
        self.n_ctx = self.llm.n_ctx()

    def close(self) -> None:
        import llama_cpp

        for handle in getattr(self, "_handles", []):
            llama_cpp.llama_adapter_lora_free(handle)
        self._handles = []
        self.llm.close()

    def __enter__(self) -> LlamaCppSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _last_logits(self) -> Any:
        import llama_cpp
        import numpy as np

        pointer = llama_cpp.llama_get_logits_ith(self.llm._ctx.ctx, -1)
        return np.ctypeslib.as_array(pointer, shape=(self.n_vocab,)).copy()

    def _check_room(self, needed: int) -> None:
        if needed > self.n_ctx:
            raise AdaptkitError(f"{needed} tokens do not fit the context of {self.n_ctx} allocated")

    def greedy(
        self,
        prompt: Sequence[int],
        max_new_tokens: int,
        stop: Sequence[int] = (),
        on_token: Callable[[int], None] | None = None,
    ) -> list[int]:
        """Greedy continuation: prefill ``prompt``, then one decode step per new token."""
        import numpy as np

        self._check_room(len(prompt) + max_new_tokens)
        self.llm.reset()
        self.llm.eval(list(prompt))
        out: list[int] = []
        while len(out) < max_new_tokens:
            token = int(np.argmax(self._last_logits()))
            out.append(token)
            if on_token is not None:
                on_token(token)
            if token in stop or len(out) == max_new_tokens:
                break
            self.llm.eval([token])
        return out

    def sample(
        self,
        prompt: Sequence[int],
        max_new_tokens: int,
        *,
        temperature: float,
        top_p: float,
        stop: Sequence[int] = (),
        on_token: Callable[[int], None] | None = None,
    ) -> list[int]:
        """Sampled continuation by llama.cpp's sampler (temperature, nucleus; the session's seed)."""
        self._check_room(len(prompt) + max_new_tokens)
        self.llm.reset()
        out: list[int] = []
        for token in self.llm.generate(list(prompt), temp=temperature, top_p=top_p, top_k=0, reset=True):
            out.append(int(token))
            if on_token is not None:
                on_token(int(token))
            if token in stop or len(out) == max_new_tokens:
                break
        return out

    def logits(self, ids: Sequence[int]) -> Any:
        """Every position's logits for ``ids`` (``len × vocab``; needs ``logits_all``)."""
        import numpy as np

        self._check_room(len(ids))
        self.llm.reset()
        self.llm.eval(list(ids))
        return np.array(self.llm.scores[: len(ids)], dtype=np.float32)
