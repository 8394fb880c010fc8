"""What a model's ``config.json`` may say before transformers reads it.

The fields adaptkit and the ONNX model builder compute with are typed and ranged here, in one
place (:func:`check_config_fields`); an ``auto_map`` that would need the folder's own code is
refused (:func:`check_no_remote_code`); and :func:`config_limits` reads the vocabulary and
context a run is checked against without loading the model.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from adaptkit.errors import FormatError

#: ``config.json`` keys that hold a model's context length, by model family.
CONTEXT_KEYS = ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length", "n_ctx")


def config_limits(folder: Path) -> tuple[int | None, int | None]:
    """``(vocabulary size, context length)`` from a vetted model folder's ``config.json``, read
    without loading the model (``None`` where it does not say). A multimodal config's
    ``text_config`` counts when the top level is silent."""
    from adaptkit.io.jsonio import read_json_file

    config = read_json_file(folder / "config.json", what="config.json", max_bytes=MAX_CONFIG_BYTES)
    sections = [config, config.get("text_config") if isinstance(config.get("text_config"), dict) else {}]

    def first_size(keys: tuple[str, ...]) -> int | None:
        for section in sections:
            for key in keys:
                value = section.get(key)
                if isinstance(value, int) and not isinstance(value, bool) and value > 0:
                    return value
        return None

    return first_size(("vocab_size",)), first_size(CONTEXT_KEYS)


#: config.json is a few KB; label maps make some a few MB.
MAX_CONFIG_BYTES = 16 << 20


#: Sizes adaptkit and the ONNX model builder compute with (head size, vocabulary, layers),
#: under every name transformers maps onto them. Each must be a positive integer.
SIZE_FIELDS = (
    *("hidden_size", "n_embd", "d_model", "num_attention_heads", "n_head", "num_heads"),
    *("num_hidden_layers", "n_layer", "num_layers", "vocab_size", "intermediate_size"),
    *("max_position_embeddings", "n_positions", "head_dim", "num_key_value_heads", "n_inner"),
)
#: Of those, the ones a config may leave ``null`` (transformers derives them).
NULLABLE_FIELDS = frozenset({"head_dim", "num_key_value_heads", "n_inner", "intermediate_size"})
TOKEN_ID_FIELDS = ("bos_token_id", "eos_token_id", "pad_token_id")
#: Far above any real model (vocabularies reach ~10^6, contexts ~10^7), far below overflow.
MAX_SIZE = 2**31 - 1


def check_config_fields(config: dict[str, Any], path: Path, prefix: str = "") -> None:
    """Types and ranges of the ``config.json`` fields adaptkit reads itself, so an odd value
    (``num_attention_heads: 0``, ``head_dim: "16"``, ``architectures: [[...]]``) is one line
    naming the key instead of a ``ZeroDivisionError`` or ``TypeError`` deep in an exporter.
    A nested ``text_config`` (multimodal checkpoints) is held to the same rules.

    Raises:
        FormatError: naming ``config.json`` and the key.
    """
    if "model_type" in config and not isinstance(config["model_type"], str):
        raise FormatError("must be a string", path=path, key=prefix + "model_type")
    archs = config.get("architectures")
    if archs is not None and not (
        isinstance(archs, list) and all(isinstance(a, str) and 0 < len(a) <= 200 for a in archs)
    ):
        raise FormatError(
            f"must be a list of class names, not {brief(archs)}",
            path=path,
            key=prefix + "architectures",
        )
    for key in SIZE_FIELDS:
        value = config.get(key)
        if key not in config or (value is None and key in NULLABLE_FIELDS):
            continue
        if isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= MAX_SIZE:
            raise FormatError(f"must be a positive integer, not {brief(value)}", path=path, key=prefix + key)
    heads, kv = config.get("num_attention_heads"), config.get("num_key_value_heads")
    if isinstance(heads, int) and isinstance(kv, int) and heads % kv:
        raise FormatError(
            f"num_attention_heads ({heads}) is not a multiple of num_key_value_heads ({kv})",
            path=path,
            key=prefix + "num_key_value_heads",
        )
    hidden = config.get("hidden_size")
    if (
        isinstance(hidden, int)
        and isinstance(heads, int)
        and config.get("head_dim") is None
        and hidden < heads
    ):
        raise FormatError(
            f"hidden_size ({hidden}) is smaller than num_attention_heads ({heads}): heads of size 0",
            path=path,
            key=prefix + "hidden_size",
        )
    for key in TOKEN_ID_FIELDS:
        value = config.get(key)
        ids = value if isinstance(value, list) else [value]
        if value is not None and not all(isinstance(i, int) and not isinstance(i, bool) for i in ids):
            raise FormatError(
                f"must be a token id or a list of them, not {brief(value)}", path=path, key=prefix + key
            )
    text = config.get("text_config")
    if isinstance(text, dict):
        check_config_fields(text, path, prefix + "text_config.")


def brief(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def check_no_remote_code(folder: Path, config: dict[str, Any]) -> None:
    """Never run a model's own Python code: an ``auto_map`` (in ``config.json`` or
    ``tokenizer_config.json``) names modules shipped in the folder that transformers would
    import with ``trust_remote_code``. adaptkit always loads with ``trust_remote_code=False``;
    where transformers has the class built in (official Phi-3 checkpoints still carry an
    ``auto_map``), the built-in class is used and the ``auto_map`` ignored, with a note. Where
    only the folder's code could load it, the model is refused here, in one line.

    Raises:
        FormatError: naming the file and ``auto_map``.
    """
    from adaptkit.io.jsonio import read_json_file

    tok_path = folder / "tokenizer_config.json"
    tok: dict[str, Any] = {}
    if tok_path.is_file():
        tok = read_json_file(tok_path, what="tokenizer_config.json", max_bytes=MAX_CONFIG_BYTES)
    found = [(folder / "config.json", config), (tok_path, tok)]
    found = [(p, d) for p, d in found if "auto_map" in d]
    if not found:
        return
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES

    model_type = config.get("model_type")
    for path, doc in found:
        if path.name == "config.json":
            needed = model_type not in CONFIG_MAPPING_NAMES
            missing = f"model_type {model_type!r} is not built into transformers"
        else:
            needed = not _builtin_tokenizer(doc.get("tokenizer_class"))
            missing = f"tokenizer_class {brief(doc.get('tokenizer_class'))} is not built into transformers"
        if needed:
            raise FormatError(
                f"names the model's own Python code ({brief(doc['auto_map'])}) and {missing}; "
                "adaptkit never runs a model's code (trust_remote_code is always off)",
                path=path,
                key="auto_map",
            )
    from adaptkit.console import say

    for path, _ in found:
        say(
            f"note: {path}: auto_map ignored; adaptkit never runs a model's own code "
            "(transformers' built-in classes load it)"
        )


def _builtin_tokenizer(name: Any) -> bool:
    """Whether ``name`` is a tokenizer class transformers itself provides."""
    if not isinstance(name, str) or not name:
        return False
    from transformers.models.auto.tokenization_auto import tokenizer_class_from_name

    for candidate in (name, name.removesuffix("Fast"), name + "Fast"):
        cls = tokenizer_class_from_name(candidate)
        if cls is not None and getattr(cls, "__module__", "").startswith("transformers."):
            return True
    return False
