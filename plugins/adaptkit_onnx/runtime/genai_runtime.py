"""The ``onnxruntime-genai`` runtime: ``adaptkit generate EXPORT_DIR`` in ONNX Runtime GenAI."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

from adaptkit.api import AdaptkitError, GenerateRequest


class GenaiRuntime:
    """Runs a generation-ready export (a folder with ``genai_config.json``)."""

    name = "onnxruntime-genai"
    description = "ONNX Runtime GenAI, for a folder written by export --onnx (generation graph)"
    requires: ClassVar[dict[str, str]] = {"onnxruntime_genai": "onnxruntime-genai"}

    def accepts(self, model: str) -> bool:
        from adaptkit_onnx.runtime.export_folder import is_export

        return is_export(Path(model))

    def generate(self, request: GenerateRequest, emit: Callable[[str], None]) -> dict[str, Any]:
        if request.adapters:
            raise AdaptkitError(
                f"{request.model} is an export: its adapters are already in it (-a is for a Hugging Face "
                "model or a GGUF base)",
                hint="for an export made with --lora-inputs, pick one with --adapter-name",
            )
        search: dict[str, Any] = {"do_sample": not request.greedy}
        if not request.greedy:
            search.update(temperature=request.temperature, top_p=request.top_p, random_seed=request.seed)
        return _generate_onnx(Path(request.model), request, search, emit)


def _generate_onnx(
    folder: Path, request: GenerateRequest, search: dict[str, Any], emit: Callable[[str], None]
) -> dict[str, Any]:
    """Generate from an export folder. The folder is untrusted input: everything the runtime
    will open is vetted before it opens anything (:mod:`adaptkit_onnx.runtime.export_folder`,
    :mod:`adaptkit_onnx.runtime.tokenizer_files`), and with ``--input-ids`` the tokenizer is
    never constructed (a hostile one can hang the runtime's native code past any signal): ids
    are printed and ``text`` is ``None``."""
    from adaptkit_onnx.runtime import export_folder as ef
    from adaptkit_onnx.runtime import tokenizer_files

    vetted = ef.vet_export_folder(folder)
    adapter_name, prompt, max_new = request.adapter_name, request.prompt, request.max_new_tokens
    ids = list(request.input_ids) if request.input_ids is not None else None
    adapter_path = ef.adapter_file(folder, adapter_name) if adapter_name is not None else None
    if ids is None:
        if not tokenizer_files.has_tokenizer(folder):
            raise AdaptkitError(f"{folder} has no tokenizer; give the prompt as --input-ids", key="--prompt")
        tokenizer = tokenizer_files.load_runtime_tokenizer(folder)
        ids = [int(t) for t in _runtime_call(lambda: tokenizer.encode(prompt), "encode the prompt")]
    else:
        tokenizer = None
    request.check_ids(ids, vetted.vocab_size, vetted.context_length)
    runtime = _runtime_call(lambda: _load_model(folder, request.device), f"load {folder}")
    if adapter_path is not None:
        _runtime_call(lambda: runtime.load_adapter(adapter_path, adapter_name), f"load {adapter_path}")
    stream = tokenizer.create_stream() if tokenizer is not None else None

    def on_token(token: int) -> None:
        emit(stream.decode(token) if stream is not None else f"{token} ")

    start = time.perf_counter()
    tokens, _ = _runtime_call(
        lambda: runtime.generate(ids, max_new, adapter=adapter_name, search=search, on_token=on_token),
        "generate",
    )
    seconds = time.perf_counter() - start
    text = _runtime_call(lambda: tokenizer.decode(tokens), "decode") if tokenizer is not None else None
    return {"input_ids": ids, "output_ids": tokens, "text": text, "tokens_per_s": len(tokens) / seconds}


def _load_model(folder: Path, device: str) -> Any:
    from adaptkit_onnx.runtime.genai import GenaiModel

    return GenaiModel(folder, device)


def _runtime_call(call: Any, doing: str) -> Any:
    """``call()``, with the runtime's errors (RuntimeError and friends from its C++ side) as
    one line. adaptkit's own errors pass through."""
    try:
        return call()
    except AdaptkitError:
        raise
    except Exception as exc:  # pybind11 maps C++ exceptions to RuntimeError, ValueError, ...
        text = str(exc).strip()
        why = text.splitlines()[0][:300] if text else type(exc).__name__
        raise AdaptkitError(f"ONNX Runtime GenAI could not {doing}: {why}") from None
