"""Vet an export's ``genai_config.json`` against what adaptkit itself writes, before ONNX
Runtime GenAI reads it.

Why an allow list: ``genai_config.json`` is not data to ONNX Runtime GenAI, it is a program
for the runtime. Its session options load native libraries (``custom_ops_library``: a ``.so``
shipped in a downloaded folder runs on load), write files anywhere (``enable_profiling``
takes a path prefix), pick execution providers and their options, and its model sections name
further files to open. The runtime gains keys with every release, so a deny list of the
dangerous ones is out of date the day a new one ships. adaptkit writes a small, known set of
keys (the model builder's decoder-only config for the architectures in
:data:`~adaptkit_onnx.generation.builder.GENAI_ARCHITECTURES`, fp32/fp16/int4, cpu/cuda, with or without
``--lora-inputs``), so that set, with the types and ranges of its values, is the whole
grammar: anything else is refused with the key's path, before the runtime sees the file.

Strings are held to narrow patterns, and the file must hold no backslash at all: adaptkit's
JSON never has one, and ONNX Runtime GenAI's own JSON reader and Python's could otherwise
decode an escape differently (``"model\\u002eonnx"`` is ``model.onnx`` to Python and may be a
different name to the runtime).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from adaptkit.api import FormatError

GENAI_CONFIG = "genai_config.json"
#: adaptkit's configs are ~1.5 KB; a megabyte is room for any list of end-of-sequence ids.
MAX_CONFIG_BYTES = 1 << 20
#: Upper bound for sizes and lengths (vocabulary, context, window): 16M, above any model's.
MAX_SIZE = 1 << 24
#: Upper bound for layer and head counts and head sizes.
MAX_COUNT = 4096
#: The model types the builder writes for the architectures adaptkit exports.
MODEL_TYPES = frozenset(
    {"llama", "mistral", "qwen2", "qwen3", "phi3", "gemma", "gemma2", "granite", "olmo", "smollm3"}
)

_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_.]{0,127}$")  # an ONNX graph input/output name
_LAYER_PATTERN = re.compile(r"^[A-Za-z_][A-Za-z0-9_.]{0,63}%d[A-Za-z0-9_.]{0,63}$")  # "present.%d.key"
_LOG_ID = re.compile(r"^[A-Za-z0-9_.\-]{1,64}$")
_ONNX_FILE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]{0,127}\.onnx$")  # a plain file name

Check = Callable[[Any, str], Any]


class _Refused(Exception):
    """A value outside the allow list, at ``path``."""

    def __init__(self, path: str, why: str) -> None:
        super().__init__(why)
        self.path = path
        self.why = why


def _kind(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def _integer(low: int, high: int) -> Check:
    def check(value: Any, path: str) -> int:
        # bool is an int subclass in Python, never one in the file
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            shown = repr(value) if isinstance(value, int | float) else _kind(value)
            raise _Refused(path, f"must be an integer in [{low}, {high}], got {shown}")
        return value

    return check


def _number(low: float, high: float, *, low_open: bool = False) -> Check:
    def check(value: Any, path: str) -> float:
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        ok = ok and math.isfinite(value) and (low < value if low_open else low <= value) and value <= high
        if not ok:
            bracket = "(" if low_open else "["
            shown = repr(value) if isinstance(value, int | float) else _kind(value)
            raise _Refused(path, f"must be a number in {bracket}{low:g}, {high:g}], got {shown}")
        return float(value)

    return check


def _boolean(value: Any, path: str) -> bool:
    if not isinstance(value, bool):
        raise _Refused(path, f"must be true or false, got {_kind(value)}")
    return value


def _matching(pattern: re.Pattern[str], words: str) -> Check:
    def check(value: Any, path: str) -> str:
        if not isinstance(value, str) or not pattern.match(value):
            shown = repr(value[:80]) if isinstance(value, str) else _kind(value)
            raise _Refused(path, f"must be {words}, got {shown}")
        return value

    return check


def _one_of(*choices: str) -> Check:
    def check(value: Any, path: str) -> str:
        if not isinstance(value, str) or value not in choices:
            shown = repr(value[:80]) if isinstance(value, str) else _kind(value)
            raise _Refused(path, f"must be one of {', '.join(sorted(choices))}; got {shown}")
        return value

    return check


def _list_of(item: Check, max_len: int) -> Check:
    def check(value: Any, path: str) -> list[Any]:
        if not isinstance(value, list) or len(value) > max_len:
            raise _Refused(path, f"must be a list of at most {max_len} items, got {_kind(value)}")
        return [item(v, f"{path}[{i}]") for i, v in enumerate(value)]

    return check


def _token_ids(value: Any, path: str) -> Any:
    """One id or a list of ids (the builder writes both for ``eos_token_id``)."""
    if isinstance(value, list):
        return _list_of(_integer(0, MAX_SIZE), 1024)(value, path)
    return _integer(0, MAX_SIZE)(value, path)


def _section(fields: dict[str, Check], required: frozenset[str] = frozenset()) -> Check:
    """An object with only ``fields`` (each checked) and at least ``required``."""

    def check(value: Any, path: str) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise _Refused(path, f"must be an object, got {_kind(value)}")
        for key in value:
            if key not in fields:
                inner = f"{path}.{key}" if path else key
                raise _Refused(inner, "is not a key adaptkit writes, refused (allow list)")
        for key in sorted(required - value.keys()):
            raise _Refused(f"{path}.{key}" if path else key, "is missing")
        return {k: fields[k](v, f"{path}.{k}" if path else k) for k, v in value.items()}

    return check


_CUDA_OPTIONS = _section({"enable_cuda_graph": _one_of("0", "1")})
_SESSION_OPTIONS = _section(
    {
        "log_id": _matching(_LOG_ID, "a short name"),
        # [] (CPU) or the CUDA provider with its graph-capture switch: nothing else is written.
        "provider_options": _list_of(_section({"cuda": _CUDA_OPTIONS}, frozenset({"cuda"})), 1),
    }
)
_SLIDING_WINDOW = _section(
    {
        "window_size": _integer(1, MAX_SIZE),
        "slide_key_value_cache": _boolean,
        "slide_inputs": _boolean,
        "layers": _list_of(_integer(0, MAX_COUNT - 1), MAX_COUNT),
        "cache_slack": _integer(0, MAX_SIZE),
    }
)
_DECODER = _section(
    {
        "session_options": _SESSION_OPTIONS,
        "filename": _matching(_ONNX_FILE, "a plain file name ending in .onnx"),
        "head_size": _integer(1, MAX_COUNT),
        "hidden_size": _integer(1, MAX_SIZE),
        "inputs": _section(
            {
                "input_ids": _matching(_IDENT, "a graph input name"),
                "attention_mask": _matching(_IDENT, "a graph input name"),
                "position_ids": _matching(_IDENT, "a graph input name"),
                "past_key_names": _matching(_LAYER_PATTERN, "a name pattern with one %d"),
                "past_value_names": _matching(_LAYER_PATTERN, "a name pattern with one %d"),
            },
            frozenset({"input_ids"}),
        ),
        "outputs": _section(
            {
                "logits": _matching(_IDENT, "a graph output name"),
                "present_key_names": _matching(_LAYER_PATTERN, "a name pattern with one %d"),
                "present_value_names": _matching(_LAYER_PATTERN, "a name pattern with one %d"),
            },
            frozenset({"logits"}),
        ),
        "num_attention_heads": _integer(1, MAX_COUNT),
        "num_hidden_layers": _integer(1, MAX_COUNT),
        "num_key_value_heads": _integer(1, MAX_COUNT),
        "sliding_window": _SLIDING_WINDOW,
    },
    frozenset({"filename", "inputs", "outputs", "num_hidden_layers"}),
)
_MODEL = _section(
    {
        "bos_token_id": _integer(0, MAX_SIZE),
        "context_length": _integer(1, MAX_SIZE),
        "decoder": _DECODER,
        "eos_token_id": _token_ids,
        "pad_token_id": _integer(0, MAX_SIZE),
        "type": _one_of(*MODEL_TYPES),
        "vocab_size": _integer(1, MAX_SIZE),
    },
    frozenset({"context_length", "decoder", "type", "vocab_size"}),
)
# The defaults the builder copies from a model's generation config. Whatever they say,
# ``adaptkit generate`` sets the search itself (greedy or its own --temperature/--top-p);
# beams and several sequences per prompt are not something it runs, hence exactly 1.
_SEARCH = _section(
    {
        "diversity_penalty": _number(0.0, 100.0),
        "do_sample": _boolean,
        "early_stopping": _boolean,
        "length_penalty": _number(-100.0, 100.0),
        "max_length": _integer(1, MAX_SIZE),
        "min_length": _integer(0, MAX_SIZE),
        "no_repeat_ngram_size": _integer(0, MAX_COUNT),
        "num_beams": _integer(1, 1),
        "num_return_sequences": _integer(1, 1),
        "past_present_share_buffer": _boolean,
        "repetition_penalty": _number(0.0, 100.0, low_open=True),
        "temperature": _number(0.0, 100.0, low_open=True),
        "top_k": _integer(0, MAX_SIZE),
        "top_p": _number(0.0, 1.0, low_open=True),
    }
)
_CONFIG = _section({"model": _MODEL, "search": _SEARCH}, frozenset({"model"}))


def check_genai_config(doc: Any, path: Path) -> dict[str, Any]:
    """Check a parsed ``genai_config.json`` against the allow list and its cross-field rules.

    Args:
        doc: The parsed document.
        path: The file (for messages).

    Returns:
        The document, unchanged.

    Raises:
        FormatError: naming the first key path outside the allow list or with a bad value.
    """
    try:
        _CONFIG(doc, "")
        _check_consistent(doc)
    except _Refused as exc:
        raise FormatError(exc.why, path=path, key=exc.path) from None
    return doc


def _check_consistent(doc: dict[str, Any]) -> None:
    """What one key says about another: token ids inside the vocabulary, window layers inside
    the model, a search length inside the context."""
    model = doc["model"]
    vocab, layers = model["vocab_size"], model["decoder"]["num_hidden_layers"]
    for key in ("bos_token_id", "pad_token_id", "eos_token_id"):
        ids = model.get(key)
        for i, token in enumerate(ids if isinstance(ids, list) else [] if ids is None else [ids]):
            if token >= vocab:
                where = f"model.{key}[{i}]" if isinstance(ids, list) else f"model.{key}"
                raise _Refused(where, f"token id {token} is outside the vocabulary (vocab_size {vocab})")
    for i, layer in enumerate(model["decoder"].get("sliding_window", {}).get("layers", [])):
        if layer >= layers:
            raise _Refused(
                f"model.decoder.sliding_window.layers[{i}]", f"layer {layer} of a {layers}-layer model"
            )
    max_length = doc.get("search", {}).get("max_length")
    if max_length is not None and max_length > model["context_length"]:
        raise _Refused("search.max_length", f"{max_length} exceeds context_length {model['context_length']}")


def read_genai_config(folder: Path) -> dict[str, Any]:
    """Read ``folder/genai_config.json`` (a regular file, bounded, strict JSON, no backslash)
    and check it with :func:`check_genai_config`."""
    from adaptkit.api.files import read_regular_file, strict_json

    path = folder / GENAI_CONFIG
    raw = read_regular_file(path, max_bytes=MAX_CONFIG_BYTES, what=GENAI_CONFIG)
    if b"\\" in raw:
        at = raw.index(b"\\")
        raise FormatError(
            f"{GENAI_CONFIG} holds a backslash escape (byte {at}); adaptkit writes none, and the "
            "runtime's JSON reader may decode it differently",
            path=path,
        )
    doc = strict_json(raw, what=GENAI_CONFIG, path=path)
    return check_genai_config(doc, path)
