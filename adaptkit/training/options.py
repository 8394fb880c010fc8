"""Backend options (``--option KEY=VALUE``, ``options:`` in a train recipe), checked in one place.

A backend declares its options as ``options_schema``: a JSON-Schema ``object`` whose
``properties`` each give a ``type`` (``number``, ``integer``, ``string``, ``boolean``), an
``enum`` or bounds (``minimum``, ``maximum``, ``exclusiveMinimum``, ``exclusiveMaximum``) and a
``default``. :func:`backend_options` checks the given options against it *before the model
loads* and returns them with defaults filled, so a backend never parses a raw value itself.

Numbers are where hostile values hide: every number, declared or not, must be finite (a
``--option`` value of ``nan``, ``inf`` or ``1e999`` is text to YAML, and ``float()`` turns it
into a non-finite number), and a declared one must lie within its bounds (``ratio=1e308`` is
finite, yet multiplies the learning rate into overflow). The contract kit
(:func:`adaptkit.testing.check_backend`) asks every numeric option for both bounds.
"""

from __future__ import annotations

import math
import re
from typing import Any

from adaptkit.errors import AdaptkitError

#: What a ``--option`` number may look like when YAML left it as text (``1e3``, ``-2.5E-4``).
_NUMBER_TEXT = re.compile(r"^\s*[-+]?(\d[\d_]*\.?\d*|\.\d+)([eE][-+]?\d+)?\s*$")
_NON_FINITE_TEXT = re.compile(r"^\s*[-+]?(nan|inf|infinity)\s*$", re.IGNORECASE)


def _label(backend: Any, key: str) -> str:
    return f"{getattr(backend, 'name', 'backend')} option {key}"


def _as_number(value: Any, *, integer: bool) -> float | int | None:
    """``value`` as a number, or ``None`` when it is not one (booleans are not numbers)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        number: float | int = value
    elif isinstance(value, str) and (_NUMBER_TEXT.match(value) or _NON_FINITE_TEXT.match(value)):
        try:
            number = int(value) if integer and re.fullmatch(r"\s*[-+]?\d[\d_]*\s*", value) else float(value)
        except (ValueError, OverflowError):
            return None
    else:
        return None
    if integer:
        if isinstance(number, float) and (not math.isfinite(number) or not number.is_integer()):
            return None
        return int(number)
    return number


def _bounds_text(spec: dict[str, Any]) -> str:
    parts = []
    for word, sign in (
        ("exclusiveMinimum", ">"),
        ("minimum", ">="),
        ("maximum", "<="),
        ("exclusiveMaximum", "<"),
    ):
        if word in spec:
            parts.append(f"{sign} {spec[word]:g}")
    return " and ".join(parts)


def _check_number(backend: Any, key: str, value: Any, spec: dict[str, Any]) -> float | int:
    integer = spec.get("type") == "integer"
    number = _as_number(value, integer=integer)
    what = "an integer" if integer else "a number"
    bounds = _bounds_text(spec)
    if number is None:
        raise AdaptkitError(
            f"must be {what}{' ' + bounds if bounds else ''}, got {value!r}", key=_label(backend, key)
        )
    if isinstance(number, float) and not math.isfinite(number):
        raise AdaptkitError(f"must be a finite number, got {value!r}", key=_label(backend, key))
    low, high = spec.get("minimum"), spec.get("maximum")
    low_open, high_open = spec.get("exclusiveMinimum"), spec.get("exclusiveMaximum")
    if (
        (low is not None and number < low)
        or (high is not None and number > high)
        or (low_open is not None and number <= low_open)
        or (high_open is not None and number >= high_open)
    ):
        raise AdaptkitError(f"must be {what} {bounds}, got {value!r}", key=_label(backend, key))
    return number


def _check_value(backend: Any, key: str, value: Any, spec: dict[str, Any]) -> Any:
    kind = spec.get("type")
    if kind in ("number", "integer"):
        value = _check_number(backend, key, value, spec)
    elif kind == "string" and not isinstance(value, str):
        raise AdaptkitError(f"must be text, got {value!r}", key=_label(backend, key))
    elif kind == "boolean" and not isinstance(value, bool):
        raise AdaptkitError(f"must be true or false, got {value!r}", key=_label(backend, key))
    if "enum" in spec and value not in spec["enum"]:
        valid = ", ".join(str(v) for v in spec["enum"])
        raise AdaptkitError(f"unknown value {value!r}; valid: {valid}", key=_label(backend, key))
    return value


def _refuse_non_finite(backend: Any, key: str, value: Any) -> None:
    """Undeclared options still may not smuggle in a non-finite number."""
    if isinstance(value, float) and not math.isfinite(value):
        raise AdaptkitError(f"must be a finite number, got {value!r}", key=_label(backend, key))
    if isinstance(value, str) and (_NON_FINITE_TEXT.match(value) or _NUMBER_TEXT.match(value)):
        try:
            finite = math.isfinite(float(value))
        except (ValueError, OverflowError):
            finite = True  # not a number after all: the backend judges the text
        if not finite:
            raise AdaptkitError(f"must be a finite number, got {value!r}", key=_label(backend, key))
    if isinstance(value, (dict, list)):
        raise AdaptkitError(f"must be a single value, got {value!r}", key=_label(backend, key))


def backend_options(backend: Any, options: dict[str, Any] | None) -> dict[str, Any]:
    """``options`` checked against ``backend.options_schema``, with defaults filled in.

    A backend without ``options_schema`` gets its options back as given, after the finiteness
    check every option passes.

    Raises:
        AdaptkitError: naming the backend and the option (unknown options list the valid ones).
    """
    if options is not None and not isinstance(options, dict):
        raise AdaptkitError(f"backend options must be a mapping, got {options!r}", key="--option")
    given = dict(options or {})
    for key, value in given.items():
        if not isinstance(key, str) or not key:
            raise AdaptkitError(f"option names must be text, got {key!r}", key="--option")
        _refuse_non_finite(backend, key, value)
    schema = getattr(backend, "options_schema", None)
    if schema is None:
        return given
    properties: dict[str, Any] = schema.get("properties") or {}
    unknown = sorted(set(given) - set(properties))
    if unknown and schema.get("additionalProperties", True) is False:
        name = getattr(backend, "name", "backend")
        valid = ", ".join(sorted(properties)) or f"none ({name} takes no options)"
        raise AdaptkitError(f"unknown {name} option {unknown[0]!r}; valid: {valid}", key="--option")
    filled = {key: spec["default"] for key, spec in properties.items() if "default" in spec}
    for key, value in given.items():
        filled[key] = _check_value(backend, key, value, properties[key]) if key in properties else value
    return filled
