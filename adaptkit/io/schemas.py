"""Load the JSON Schemas shipped in ``schemas/`` and validate documents against them.

In a built wheel the schemas live inside the package (``adaptkit/_schemas``); in a source
checkout or editable install they are the top-level ``schemas/`` folder.
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from adaptkit.errors import SchemaError

#: Names of the shipped schemas (file ``schemas/<name>.schema.json``).
SCHEMA_NAMES = ("adapter-manifest", "adapter-spec", "recipe", "peft-adapter-config", "train-recipe")


def schema_dir() -> Path:
    """The folder holding the ``*.schema.json`` files."""
    package = Path(__file__).resolve().parent.parent  # adaptkit/
    packaged = package / "_schemas"
    if packaged.is_dir():
        return packaged
    return package.parent / "schemas"


@functools.cache
def load_schema(name: str) -> dict[str, Any]:
    """Return the parsed schema ``schemas/<name>.schema.json``."""
    path = schema_dir() / f"{name}.schema.json"
    with open(path, encoding="utf-8") as fh:
        return json.load(fh)


def _location(parts: Iterable[Any]) -> str:
    text = ""
    for part in parts:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "(top level)"


def schema_problems(document: Any, name: str) -> list[str]:
    """Every way ``document`` violates schema ``name``, as ``location: message`` strings."""
    return schema_problems_for(document, load_schema(name))


def schema_problems_for(document: Any, schema: dict[str, Any]) -> list[str]:
    """Every way ``document`` violates ``schema`` (a JSON Schema given as a dict)."""
    import jsonschema

    validator_cls = jsonschema.validators.validator_for(schema)
    validator = validator_cls(schema)
    problems = []
    errors = sorted(validator.iter_errors(document), key=lambda e: (list(map(str, e.path)), e.message))
    for err in errors:
        problems.append(f"{_location(err.absolute_path)}: {_describe(err)}")
    return problems


def _describe(err: Any) -> str:
    if err.validator == "additionalProperties":
        allowed = sorted((err.schema.get("properties") or {}).keys())
        return f"{err.message}; allowed keys: {', '.join(allowed)}"
    if err.validator == "type":
        return f"{err.instance!r} is not of type {err.validator_value!r}"
    return err.message


def validate_document(document: Any, name: str, *, path: str | os.PathLike[str] | None = None) -> None:
    """Raise :class:`SchemaError` listing every problem of ``document`` against schema ``name``."""
    problems = schema_problems(document, name)
    if problems:
        raise SchemaError.from_problems(problems, path=path)
