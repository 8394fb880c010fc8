"""The ``llama-cpp`` runtime: ``adaptkit generate BASE.gguf -a ADAPTER.gguf`` in llama-cpp-python.

``-a`` takes an adapter GGUF (applied at scale 1) or the ``adapters.json`` of an
``export --gguf --lora-inputs`` (every adapter it lists, each at its scale). The manifest is
untrusted input: each file it names must be a plain file name in the manifest's own folder, a
regular file that starts with the GGUF magic, and each scale a finite number.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

from adaptkit.api import AdaptkitError, GenerateRequest
from adaptkit_gguf.exporter import MANIFEST

#: adapters.json is small; anything larger is not one adaptkit wrote.
MAX_MANIFEST_BYTES = 1 << 20


class LlamaCppRuntime:
    """Runs a base GGUF file with adapter GGUFs (see the module docstring)."""

    name = "llama-cpp"
    description = "llama.cpp (llama-cpp-python), for a GGUF base with -a adapter GGUFs"
    requires: ClassVar[dict[str, str]] = {"llama_cpp": "llama-cpp-python"}

    def accepts(self, model: str) -> bool:
        from adaptkit_gguf.runtime import is_gguf

        return is_gguf(Path(model))

    def generate(self, request: GenerateRequest, emit: Callable[[str], None]) -> dict[str, Any]:
        from adaptkit_gguf.runtime import LlamaCppSession, LlamaCppVocab

        if request.adapter_name is not None:
            request.refuse("--adapter-name", "is for ONNX exports; give llama.cpp its adapters with -a")
        if request.device != "cpu":
            _check_gpu(request)
        adapters = [pair for spec in request.adapters for pair in adapter_files(spec)]
        vocab = LlamaCppVocab(Path(request.model))
        try:
            ids = list(request.input_ids) if request.input_ids is not None else vocab.tokenize(request.prompt)
            request.check_ids(ids, vocab.n_vocab, vocab.n_ctx_train)
            with LlamaCppSession(
                Path(request.model),
                adapters,
                n_ctx=len(ids) + request.max_new_tokens,
                seed=request.seed,
                kv_f32=False,
                gpu=request.device == "cuda",
            ) as session:
                on_token = _streamer(vocab if request.input_ids is None else None, emit)
                start = time.perf_counter()
                if request.greedy:
                    tokens = session.greedy(ids, request.max_new_tokens, vocab.eos, on_token)
                else:
                    tokens = session.sample(
                        ids,
                        request.max_new_tokens,
                        temperature=request.temperature,
                        top_p=request.top_p,
                        stop=vocab.eos,
                        on_token=on_token,
                    )
                seconds = time.perf_counter() - start
            text = vocab.detokenize(tokens) if request.input_ids is None else None
        finally:
            vocab.close()
        return {"input_ids": ids, "output_ids": tokens, "text": text, "tokens_per_s": len(tokens) / seconds}


def _check_gpu(request: GenerateRequest) -> None:
    import llama_cpp

    if not llama_cpp.llama_supports_gpu_offload():
        request.refuse("--device", "cuda: this llama-cpp-python was built without GPU support")


def _streamer(vocab: Any, emit: Callable[[str], None]) -> Callable[[int], None]:
    """Print each token's text as it comes (ids with --input-ids); a multi-byte character that
    spans tokens is printed once it is whole."""
    sofar: list[int] = []
    shown = ""

    def on_token(token: int) -> None:
        nonlocal shown
        if vocab is None:
            emit(f"{token} ")
            return
        sofar.append(token)
        text = vocab.detokenize(sofar)
        if text.startswith(shown) and not text.endswith("\ufffd"):
            emit(text[len(shown) :])
            shown = text

    return on_token


def adapter_files(spec: str) -> list[tuple[Path, float]]:
    """``(adapter GGUF, scale)`` for one ``-a``: a GGUF file at scale 1, or every entry of an
    ``adapters.json`` (see the module docstring).

    Raises:
        AdaptkitError: naming the file and the entry.
    """
    from adaptkit_gguf.runtime import is_gguf

    path = Path(spec)
    if is_gguf(path):
        return [(path, 1.0)]
    if path.name != MANIFEST and not path.is_dir():
        raise AdaptkitError(
            "not an adapter GGUF nor the adapters.json of export --gguf --lora-inputs", path=path, key="-a"
        )
    return _manifest(path / MANIFEST if path.is_dir() else path)


def _manifest(path: Path) -> list[tuple[Path, float]]:
    from adaptkit.api.files import read_json_file
    from adaptkit_gguf.runtime import is_gguf

    doc = read_json_file(path, what=MANIFEST, max_bytes=MAX_MANIFEST_BYTES)
    if doc.get("format") != "adaptkit-gguf-adapters" or not isinstance(doc.get("adapters"), dict):
        raise AdaptkitError("not the manifest of export --gguf --lora-inputs", path=path, key="format")
    out = []
    for name, entry in doc["adapters"].items():
        where = f"adapters.{name}"
        if not isinstance(entry, dict):
            raise AdaptkitError("must be an object", path=path, key=where)
        file, scale = entry.get("file"), entry.get("scale")
        # A plain name in the manifest's own folder: never a path that leads elsewhere.
        if not isinstance(file, str) or not file or Path(file).name != file or file in (".", ".."):
            raise AdaptkitError(
                f"file must be a file name in this folder, not {file!r}", path=path, key=where
            )
        if isinstance(scale, bool) or not isinstance(scale, int | float) or not math.isfinite(scale):
            raise AdaptkitError(f"scale must be a finite number, not {scale!r}", path=path, key=where)
        target = path.parent / file
        if target.is_symlink() or not is_gguf(target):
            raise AdaptkitError(f"{file} is not an adapter GGUF file in this folder", path=path, key=where)
        out.append((target, float(scale)))
    if not out:
        raise AdaptkitError("lists no adapters", path=path, key="adapters")
    return out
