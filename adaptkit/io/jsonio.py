"""Bounded, strict JSON for every JSON adaptkit reads from users: safetensors headers,
manifests, ``adapter_config.json``, ``config.json``, checkpoint ``state.json``, JSONL data.

Python's ``json`` turns hostile input into exceptions no caller expects: nesting 100k deep
raises ``RecursionError``, an integer of more than 4,300 digits ``ValueError``. Here every
such input is a :class:`~adaptkit.errors.FormatError` naming the file, and so are duplicate
keys (``json`` keeps the last one silently), ``NaN``/``Infinity`` literals and documents
nested deeper than :data:`MAX_DEPTH`, which no adaptkit or Hugging Face file needs.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

from adaptkit.errors import FormatError

MAX_DEPTH = 64


def _depth(value: Any) -> int:
    """Nesting depth of a parsed document, iteratively (no recursion on hostile input)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        node, d = stack.pop()
        if isinstance(node, dict):
            node = list(node.values())
        if isinstance(node, list):
            deepest = max(deepest, d)
            stack.extend((child, d + 1) for child in node if isinstance(child, (dict, list)))
    return deepest


def strict_json(
    text: str | bytes, *, what: str, path: str | os.PathLike[str] | None, key: str | None = None
) -> Any:
    """``json.loads`` with the rules above.

    Args:
        text: The document (bytes must be UTF-8).
        what: Words for messages ("safetensors header", "config.json").
        path: The file it came from.
        key: Where in the file (a JSONL line), if not the whole file.

    Raises:
        FormatError: not UTF-8, not JSON, duplicate keys, non-finite literals, integers over
            4,300 digits, nesting deeper than :data:`MAX_DEPTH`.
    """

    def no_dupes(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for k, v in pairs:
            if k in out:
                raise FormatError(f"duplicate key {k!r} in the {what}", path=path, key=key or k)
            out[k] = v
        return out

    def no_constants(name: str) -> Any:
        raise FormatError(f"non-finite number {name} in the {what}", path=path, key=key)

    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise FormatError(f"{what} is not UTF-8 (byte {exc.start})", path=path, key=key) from None
    try:
        doc = json.loads(text, object_pairs_hook=no_dupes, parse_constant=no_constants)
    except json.JSONDecodeError as exc:
        raise FormatError(
            f"{what} is not valid JSON ({exc.msg} at char {exc.pos})", path=path, key=key
        ) from None
    except RecursionError:
        raise FormatError(f"{what} is nested deeper than {MAX_DEPTH} levels", path=path, key=key) from None
    except ValueError:  # integers past sys.get_int_max_str_digits()
        words = f"{what} holds an integer of more than {sys.get_int_max_str_digits()} digits"
        raise FormatError(words, path=path, key=key) from None
    if _depth(doc) > MAX_DEPTH:
        raise FormatError(f"{what} is nested deeper than {MAX_DEPTH} levels", path=path, key=key)
    return doc


def read_json_file(path: str | os.PathLike[str], *, what: str, max_bytes: int, expect: type = dict) -> Any:
    """Read a regular JSON file of at most ``max_bytes`` bytes, strictly, and check its top
    level is an ``expect`` (an object by default)."""
    from adaptkit.io.fileio import read_regular_file

    p = Path(path)
    doc = strict_json(read_regular_file(p, max_bytes=max_bytes, what=what), what=what, path=p)
    if not isinstance(doc, expect):
        kind = "an object" if expect is dict else f"a {expect.__name__}"
        raise FormatError(f"{what} must be {kind} at the top level, not {type(doc).__name__}", path=p)
    return doc
