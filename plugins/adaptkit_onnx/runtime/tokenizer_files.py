"""The tokenizer files of an export, vetted before ONNX Runtime GenAI reads them.

The runtime's C++ reader parses ``tokenizer_config.json`` and ``tokenizer.json`` itself. Before
it does, :func:`vet_tokenizer` checks that both are bounded (size, nesting) and of the types
the reader expects, so its parser never sees a document that could crash or hang it; that
their BPE merges and vocabulary are consistent (an empty merge spins the runtime's merge loop
forever); and that their regular expressions are the known tokenizers'
(:data:`ALLOWED_TOKENIZER_REGEXES`). At export time :func:`tokenizer_disagreement` says whether
the runtime encodes as transformers does, or why not.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

from adaptkit.api import AdaptkitError, FormatError
from adaptkit_onnx.runtime.export_folder import contained_file

#: Files a tokenizer may consist of; removed together when an export drops its tokenizer.
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "tokenizer.model",
    "vocab.json",
    "vocab.txt",
    "merges.txt",
    "chat_template.jinja",
    "chat_template.json",
)
#: Optional tokenizer files ONNX Runtime GenAI opens when present.
_CHAT_TEMPLATES = ("chat_template.jinja", "chat_template.json")
#: Tokenizer model types ONNX Runtime GenAI reads (a WordLevel tokenizer fails, or worse,
#: loads as something else: "Cannot know how to parse line").
RUNTIME_TOKENIZER_TYPES = ("BPE", "Unigram")
MAX_TOKENIZER_BYTES = 256 << 20  # the largest real tokenizer.json files are ~35 MB
MAX_TOKENIZER_CONFIG_BYTES = 16 << 20
MAX_TEMPLATE_BYTES = 4 << 20


def has_tokenizer(folder: Path) -> bool:
    """Whether the export ships a tokenizer (any of the files the runtime reads for one)."""
    return any(os.path.lexists(folder / n) for n in ("tokenizer.json", "tokenizer_config.json"))


def vet_tokenizer(folder: Path) -> None:
    """Check the files ONNX Runtime GenAI reads for a tokenizer, before it reads them.

    Raises:
        FormatError: naming the file and key.
    """
    from adaptkit.api.files import read_json_file

    # The runtime merges tokenizer_module.json into the tokenizer config and follows a
    # tiktoken_file key to any path; adaptkit writes neither.
    if os.path.lexists(folder / "tokenizer_module.json"):
        raise FormatError(
            "adaptkit exports have no tokenizer_module.json; refused", path=folder / "tokenizer_module.json"
        )
    config_path = contained_file(folder, "tokenizer_config.json", what="tokenizer_config.json")
    config = read_json_file(config_path, what="tokenizer_config.json", max_bytes=MAX_TOKENIZER_CONFIG_BYTES)
    _check_tokenizer_config(config, config_path)
    tokenizer_path = contained_file(folder, "tokenizer.json", what="tokenizer.json")
    tokenizer = read_json_file(tokenizer_path, what="tokenizer.json", max_bytes=MAX_TOKENIZER_BYTES)
    _check_tokenizer_json(tokenizer, tokenizer_path)
    for name in _CHAT_TEMPLATES:
        if os.path.lexists(folder / name):
            path = contained_file(folder, name, what=name)
            if path.stat().st_size > MAX_TEMPLATE_BYTES:
                raise FormatError(f"{name} is larger than {MAX_TEMPLATE_BYTES} bytes", path=path)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_tokenizer_config(config: dict[str, Any], path: Path) -> None:
    """The keys of ``tokenizer_config.json`` the runtime reads, with the types it reads them as
    (its JSON library throws on any other type)."""
    if "tiktoken_file" in config:
        raise FormatError(
            "a tiktoken_file names a file outside adaptkit's control; refused", path=path, key="tiktoken_file"
        )
    for key in ("add_bos_token", "add_eos_token", "clean_up_tokenization_spaces"):
        if key in config and not isinstance(config[key], bool):
            raise FormatError(f"must be true or false, not {type(config[key]).__name__}", path=path, key=key)
    if "model_max_length" in config:
        value = config["model_max_length"]
        if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
            raise FormatError(
                f"must be a positive number, got {value!r:.80}", path=path, key="model_max_length"
            )
    for key in ("tokenizer_class", "chat_template"):
        if key in config and not isinstance(config[key], str):
            raise FormatError(f"must be a string, not {type(config[key]).__name__}", path=path, key=key)
    for key in ("bos_token", "eos_token", "unk_token", "pad_token"):
        value = config.get(key)
        if isinstance(value, dict):
            value = value.get("content")
        if value is not None and not isinstance(value, str):
            raise FormatError(f"must be a token string, got {type(value).__name__}", path=path, key=key)
    decoder = config.get("added_tokens_decoder", {})
    if not isinstance(decoder, dict):
        raise FormatError("must be an object", path=path, key="added_tokens_decoder")
    for token_id, token in decoder.items():
        if not (token_id.isascii() and token_id.isdigit()):
            raise FormatError(
                f"key {token_id!r:.40} is not a token id", path=path, key="added_tokens_decoder"
            )
        _check_added_token(token, path, f"added_tokens_decoder.{token_id}")


def _check_added_token(token: Any, path: Path, key: str) -> None:
    if not isinstance(token, dict):
        raise FormatError("must be an object", path=path, key=key)
    if "id" in token and not (_is_int(token["id"]) and 0 <= token["id"] <= MAX_TOKEN_ID):
        raise FormatError(f"id must be a token id, got {token['id']!r:.40}", path=path, key=key)
    if not (isinstance(token.get("content"), str) and token["content"]):
        raise FormatError("content must be a non-empty string", path=path, key=key)
    for flag in ("lstrip", "rstrip", "normalized", "single_word", "special"):
        if flag in token and not isinstance(token[flag], bool):
            raise FormatError(f"{flag} must be true or false", path=path, key=key)


#: The largest vocabulary (and merge list) a tokenizer may have: real ones stop near 256k.
MAX_VOCAB_ENTRIES = 1 << 21
MAX_TOKEN_ID = 2**31 - 1
#: The longest affix string (unk token, subword prefix, word suffix) a BPE model may name.
MAX_AFFIX_CHARS = 64

#: The only regular expressions a tokenizer may hold (in a ``Split`` pre-tokenizer, a
#: ``Replace`` normalizer or decoder, anywhere outside the model): those of the byte-level
#: tokenizers the builder copies. ONNX Runtime GenAI hand-codes the GPT-2 and Llama-3
#: patterns and hands any other to a backtracking regex engine that no one can stop from
#: Python (a signal waits for the C++ call to return): ``(a+)+$`` on 30 characters spins for
#: hours. Spotting every catastrophic pattern is not possible (nested quantifiers are one
#: kind; overlapping alternatives under a quantifier and ``\s*\s*\s*$`` chains are others),
#: so the rule is an allow list, not a detector. A tokenizer with another pattern fails the
#: check: ``export`` drops it with a warning (the export still generates from ``--input-ids``)
#: and ``generate --prompt`` refuses it. Plain-string patterns (``{"String": " "}``) match
#: literally and are always allowed.
ALLOWED_TOKENIZER_REGEXES = frozenset(
    {
        # GPT-2 (and the byte-level split of many BPE models), with and without the last \s+
        r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+",
        r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)",
        # Llama 3 (and 3.x), both spellings of the case-insensitive contractions
        r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
        r"|\s*[\r\n]+|\s+(?!\S)|\s+",
        r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+"
        r"|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",
        # Qwen2 / Qwen2.5 / Qwen3: Llama 3's with single digits
        r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
        r"|\s*[\r\n]+|\s+(?!\S)|\s+",
    }
)


def _check_bpe_model(model: dict[str, Any], path: Path) -> None:
    """A BPE model as the ``tokenizers`` library would accept it: unique non-negative ids,
    non-empty tokens, and merges of two tokens of the vocabulary whose result is one too (an
    empty merge, ``[""]``, sends the runtime's merge loop spinning forever)."""
    vocab = model.get("vocab")
    if not isinstance(vocab, dict) or not 0 < len(vocab) <= MAX_VOCAB_ENTRIES:
        raise FormatError(f"must map 1 to {MAX_VOCAB_ENTRIES} tokens to ids", path=path, key="model.vocab")
    for token, token_id in vocab.items():
        if not token or not (_is_int(token_id) and 0 <= token_id <= MAX_TOKEN_ID):
            raise FormatError(
                f"token {token!r:.40} must be non-empty with a non-negative integer id, got {token_id!r:.20}",
                path=path,
                key="model.vocab",
            )
    if len(set(vocab.values())) != len(vocab):
        raise FormatError("two tokens share an id", path=path, key="model.vocab")
    for key in ("unk_token", "continuing_subword_prefix", "end_of_word_suffix"):
        value = model.get(key)
        if value is not None and not (isinstance(value, str) and 0 < len(value) <= MAX_AFFIX_CHARS):
            raise FormatError(
                f"must be null or a string of 1 to {MAX_AFFIX_CHARS} characters",
                path=path,
                key=f"model.{key}",
            )
    dropout = model.get("dropout")
    if dropout is not None and not (
        isinstance(dropout, int | float) and not isinstance(dropout, bool) and 0 <= dropout <= 1
    ):
        raise FormatError(f"must be null or in [0, 1], got {dropout!r:.20}", path=path, key="model.dropout")
    for key in ("fuse_unk", "byte_fallback", "ignore_merges"):
        if key in model and not isinstance(model[key], bool):
            raise FormatError("must be true or false", path=path, key=f"model.{key}")
    merges = model.get("merges", [])
    if not isinstance(merges, list) or len(merges) > MAX_VOCAB_ENTRIES:
        raise FormatError(
            f"must be a list of at most {MAX_VOCAB_ENTRIES} merges", path=path, key="model.merges"
        )
    prefix = len(model.get("continuing_subword_prefix") or "")
    for i, merge in enumerate(merges):
        parts = merge.split(" ") if isinstance(merge, str) else merge
        if not (isinstance(parts, list) and len(parts) == 2 and all(isinstance(p, str) and p for p in parts)):
            raise FormatError(
                f"must be an 'a b' string or an [a, b] pair of non-empty tokens, got {merge!r:.40}",
                path=path,
                key=f"model.merges[{i}]",
            )
        a, b = parts
        merged = a + b[prefix:]
        missing = next((t for t in (a, b, merged) if t not in vocab), None)
        if missing is not None:
            raise FormatError(
                f"merges tokens into {missing!r:.40}, which is not in the vocabulary",
                path=path,
                key=f"model.merges[{i}]",
            )


def _check_unigram_model(model: dict[str, Any], path: Path) -> None:
    vocab = model.get("vocab")
    if not isinstance(vocab, list) or not 0 < len(vocab) <= MAX_VOCAB_ENTRIES:
        raise FormatError(
            f"must list 1 to {MAX_VOCAB_ENTRIES} [piece, score] pairs", path=path, key="model.vocab"
        )
    for i, entry in enumerate(vocab):
        if not (
            isinstance(entry, list)
            and len(entry) == 2
            and isinstance(entry[0], str)
            and entry[0]
            and isinstance(entry[1], int | float)
            and not isinstance(entry[1], bool)
            and math.isfinite(entry[1])
        ):
            raise FormatError(
                "must be a [non-empty piece, finite score] pair", path=path, key=f"model.vocab[{i}]"
            )
    if len({entry[0] for entry in vocab}) != len(vocab):
        raise FormatError("a piece is listed twice", path=path, key="model.vocab")
    unk = model.get("unk_id")
    if unk is not None and not (_is_int(unk) and 0 <= unk < len(vocab)):
        raise FormatError(
            f"must be null or an index into the vocabulary, got {unk!r:.20}", path=path, key="model.unk_id"
        )
    if "byte_fallback" in model and not isinstance(model["byte_fallback"], bool):
        raise FormatError("must be true or false", path=path, key="model.byte_fallback")


def _check_regexes(value: Any, key: str, path: Path) -> None:
    """Every ``{"Regex": ...}`` in a pipeline stage is one of :data:`ALLOWED_TOKENIZER_REGEXES`."""
    stack = [(value, key)]
    while stack:
        value, key = stack.pop()
        if isinstance(value, dict):
            if "Regex" in value and value["Regex"] not in ALLOWED_TOKENIZER_REGEXES:
                raise FormatError(
                    f"regular expression {value['Regex']!r:.60} is not one adaptkit exports "
                    "(a pattern of a known tokenizer); refused",
                    path=path,
                    key=f"{key}.Regex",
                )
            stack.extend((v, f"{key}.{k}") for k, v in value.items())
        elif isinstance(value, list):
            stack.extend((v, f"{key}[{i}]") for i, v in enumerate(value))


def _check_tokenizer_json(doc: dict[str, Any], path: Path) -> None:
    """The parts of ``tokenizer.json`` the runtime reads: the model (type, vocabulary, merges
    and options), the added tokens, the pipeline stages' types and their regexes."""
    model = doc.get("model")
    if not isinstance(model, dict):
        raise FormatError("must be an object", path=path, key="model")
    kind = model.get("type")
    if kind not in RUNTIME_TOKENIZER_TYPES:
        raise FormatError(
            f"ONNX Runtime GenAI reads {' and '.join(RUNTIME_TOKENIZER_TYPES)} tokenizers, not {kind!r:.40}",
            path=path,
            key="model.type",
        )
    if kind == "BPE":
        _check_bpe_model(model, path)
    else:
        _check_unigram_model(model, path)
    added = doc.get("added_tokens", [])
    if not isinstance(added, list) or len(added) > MAX_VOCAB_ENTRIES:
        raise FormatError(
            f"must be a list of at most {MAX_VOCAB_ENTRIES} tokens", path=path, key="added_tokens"
        )
    for i, token in enumerate(added):
        _check_added_token(token, path, f"added_tokens[{i}]")
    for key in ("normalizer", "pre_tokenizer", "post_processor", "decoder"):
        stage = doc.get(key)
        if stage is not None and not (isinstance(stage, dict) and isinstance(stage.get("type"), str)):
            raise FormatError("must be null or an object with a string type", path=path, key=key)
        _check_regexes(stage, key, path)


def load_runtime_tokenizer(folder: Path) -> Any:
    """Vet, then load the export's tokenizer in ONNX Runtime GenAI (``genai_config.json``
    must have been vetted: the runtime finds the tokenizer through it).

    Raises:
        AdaptkitError: the files fail the checks, or the runtime cannot load them.
    """
    import onnxruntime_genai as og

    vet_tokenizer(folder)
    try:
        return og.Tokenizer(og.Config(str(folder)))
    except Exception as exc:  # the runtime's RuntimeError, with its JSON library's message
        raise FormatError(
            f"ONNX Runtime GenAI cannot load the tokenizer: {_first_line(exc)}", path=folder
        ) from None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else type(exc).__name__


# -- export time -----------------------------------------------------------------------------

#: Texts the runtime's tokenizer must encode as transformers does for an export to keep it:
#: words, digits, punctuation, runs of spaces, a newline, accented letters.
PROBE_TEXTS = ("Hello, world! 123", "  two  spaces\nand a new line", "naïve café, déjà vu", "abc xyz")


def tokenizer_disagreement(folder: Path) -> str | None:
    """Why ONNX Runtime GenAI cannot stand in for transformers' tokenizer of ``folder``, or
    ``None`` when it loads and encodes :data:`PROBE_TEXTS` to the same ids (special tokens
    aside: where a BOS goes is the runtime's business)."""
    from adaptkit.api.models import load_tokenizer

    try:
        runtime = load_runtime_tokenizer(folder)
        reference = load_tokenizer(folder)
    except AdaptkitError as exc:
        return exc.message
    if reference is None:
        return "transformers finds no tokenizer in it"
    special = {int(i) for i in reference.all_special_ids}
    for text in PROBE_TEXTS:
        want = [int(i) for i in reference(text)["input_ids"] if int(i) not in special]
        try:
            got = [int(i) for i in runtime.encode(text) if int(i) not in special]
        except Exception as exc:  # the runtime's own failure
            return f"ONNX Runtime GenAI cannot encode {text!r}: {_first_line(exc)}"
        if got != want:
            return f"ONNX Runtime GenAI encodes {text!r} as {got[:6]}, transformers as {want[:6]}"
    return None
