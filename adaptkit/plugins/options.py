"""Plugin options declared as a JSON-Schema ``object`` and checked by the host, in one place.

A plugin that takes options (a backend's ``--option KEY=VALUE``, an exporter's ``adaptkit export``
flags) declares them as ``options_schema``: per property a ``type`` (``number``, ``integer``,
``string``, ``boolean``; ``[TYPE, "null"]`` where ``None`` means "the plugin chooses"), an
``enum`` or bounds (``minimum``, ``maximum``, ``exclusiveMinimum``, ``exclusiveMaximum``), a
``default`` and a ``description``. :func:`checked_options` checks given options against it
*before any work* and returns them with defaults filled, so a plugin never parses a raw value.

Numbers are where hostile values hide: every number, declared or not, must be finite (a
value of ``nan``, ``inf`` or ``1e999`` is text to YAML and to a flag parser, and ``float()`` turns
it into a non-finite number), and a declared one must lie within its bounds (``ratio=1e308`` is
finite, yet multiplies a learning rate into overflow). :func:`schema_problems` is the shape the
contract kits hold a declaration to: refusing unknown options, every property typed, defaulted
and described, every number bounded.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from typing import Any

from adaptkit.errors import AdaptkitError

#: What a number may look like when it arrived as text (``1e3``, ``-2.5E-4``).
_NUMBER_TEXT = re.compile(r"^\s*[-+]?(\d[\d_]*\.?\d*|\.\d+)([eE][-+]?\d+)?\s*$")
_NON_FINITE_TEXT = re.compile(r"^\s*[-+]?(nan|inf|infinity)\s*$", re.IGNORECASE)
#: The value types a property may declare.
TYPES = ("number", "integer", "string", "boolean")
_NUMERIC = ("number", "integer")


def declared_types(spec: Mapping[str, Any]) -> tuple[tuple[str, ...], bool]:
    """A property's value types and whether ``None`` is allowed (``"type": [T, "null"]``)."""
    kind = spec.get("type")
    kinds = tuple(kind) if isinstance(kind, (list, tuple)) else (kind,) if kind else ()
    return tuple(k for k in kinds if k != "null"), "null" in kinds


def option_flags(key: str, spec: Mapping[str, Any]) -> tuple[str, ...]:
    """The command-line flags of option ``key``: ``--`` + the key with ``_`` → ``-``.

    A boolean is a switch that takes no value, so its flag says which way it turns the option: a
    boolean that defaults to false is ``--KEY`` (sets true), one that defaults to true is
    ``--no-KEY`` (``verify`` → ``--no-verify``, sets false), and a nullable boolean (``["boolean",
    "null"]``: ``None`` means "the plugin chooses") needs both ways, ``--KEY`` and ``--no-KEY``."""
    flag = key.replace("_", "-")
    kinds, nullable = declared_types(spec)
    if kinds == ("boolean",):
        if nullable:
            return (f"--{flag}", f"--no-{flag}")
        if spec.get("default") is True:
            return (f"--no-{flag}",)
    return (f"--{flag}",)


def option_flag(key: str, spec: Mapping[str, Any]) -> str:
    """The command-line flag of option ``key`` (the first of :func:`option_flags`: ``--KEY`` for a
    nullable boolean, whose ``--no-KEY`` sets it false)."""
    return option_flags(key, spec)[0]


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


def bounds_text(spec: Mapping[str, Any]) -> str:
    """``">= 0 and <= 1"`` for a property's bounds (empty when it has none)."""
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


def _check_number(label: str, value: Any, spec: Mapping[str, Any], integer: bool) -> float | int:
    number = _as_number(value, integer=integer)
    what = "an integer" if integer else "a number"
    bounds = bounds_text(spec)
    if number is None:
        raise AdaptkitError(f"must be {what}{' ' + bounds if bounds else ''}, got {value!r}", key=label)
    if isinstance(number, float) and not math.isfinite(number):
        raise AdaptkitError(f"must be a finite number, got {value!r}", key=label)
    low, high = spec.get("minimum"), spec.get("maximum")
    low_open, high_open = spec.get("exclusiveMinimum"), spec.get("exclusiveMaximum")
    if (
        (low is not None and number < low)
        or (high is not None and number > high)
        or (low_open is not None and number <= low_open)
        or (high_open is not None and number >= high_open)
    ):
        raise AdaptkitError(f"must be {what} {bounds}, got {value!r}", key=label)
    return number


def _check_value(label: str, value: Any, spec: Mapping[str, Any]) -> Any:
    kinds, nullable = declared_types(spec)
    if value is None and nullable:
        return None
    kind = kinds[0] if kinds else None
    if kind in _NUMERIC:
        value = _check_number(label, value, spec, kind == "integer")
    elif kind == "string" and not isinstance(value, str):
        raise AdaptkitError(f"must be text, got {value!r}", key=label)
    elif kind == "boolean" and not isinstance(value, bool):
        raise AdaptkitError(f"must be true or false, got {value!r}", key=label)
    if "enum" in spec and value not in spec["enum"]:
        valid = ", ".join(str(v) for v in spec["enum"] if v is not None)
        raise AdaptkitError(f"unknown value {value!r}; valid: {valid}", key=label)
    return value


def _refuse_non_finite(label: str, value: Any) -> None:
    """Undeclared options still may not smuggle in a non-finite number."""
    if isinstance(value, float) and not math.isfinite(value):
        raise AdaptkitError(f"must be a finite number, got {value!r}", key=label)
    if isinstance(value, str) and (_NON_FINITE_TEXT.match(value) or _NUMBER_TEXT.match(value)):
        try:
            finite = math.isfinite(float(value))
        except (ValueError, OverflowError):
            finite = True  # not a number after all: the plugin judges the text
        if not finite:
            raise AdaptkitError(f"must be a finite number, got {value!r}", key=label)
    if isinstance(value, (dict, list)):
        raise AdaptkitError(f"must be a single value, got {value!r}", key=label)


def checked_options(
    schema: Mapping[str, Any] | None,
    options: Mapping[str, Any] | None,
    *,
    owner: str,
    label: Callable[[str], str] | None = None,
    where: str | None = None,
) -> dict[str, Any]:
    """``options`` checked against ``schema``, with defaults filled in.

    Args:
        schema: The plugin's ``options_schema`` (``None``: options pass unchecked but for
            finiteness).
        options: The options given (text or values).
        owner: The plugin's name, for messages (``"unknown qlora option 'x'"``).
        label: How one option is named in an error (default ``"OWNER option KEY"``; the export
            host names the flag).
        where: Where options come from (``"--option"``), for errors about the options as a whole.

    Raises:
        AdaptkitError: naming the plugin and the option (unknown options list the valid ones).
    """
    name_of = label or (lambda key: f"{owner} option {key}")
    if options is not None and not isinstance(options, Mapping):
        raise AdaptkitError(f"{owner} options must be a mapping, got {options!r}", key=where)
    given = dict(options or {})
    for key, value in given.items():
        if not isinstance(key, str) or not key:
            raise AdaptkitError(f"option names must be text, got {key!r}", key=where)
        _refuse_non_finite(name_of(key), value)
    if schema is None:
        return given
    properties: Mapping[str, Any] = schema.get("properties") or {}
    unknown = sorted(set(given) - set(properties))
    if unknown and schema.get("additionalProperties", True) is False:
        valid = ", ".join(sorted(properties)) or f"none ({owner} takes no options)"
        raise AdaptkitError(f"unknown {owner} option {unknown[0]!r}; valid: {valid}", key=where)
    filled = {key: spec["default"] for key, spec in properties.items() if "default" in spec}
    for key, value in given.items():
        filled[key] = _check_value(name_of(key), value, properties[key]) if key in properties else value
    return filled


def schema_problems(schema: Any, *, described: bool = True) -> list[str]:
    """What keeps ``schema`` from being a complete options declaration (empty: none).

    A complete declaration is an ``object`` schema with ``additionalProperties: false`` (so a
    misspelt option is refused), and per property a type from :data:`TYPES` (or ``[T, "null"]``)
    or an ``enum``, a ``default`` the checker accepts, a ``description`` when ``described``, and
    for a number both a lower and an upper bound (a finite but absurd ``1e308`` must be refused
    before any work)."""
    if not isinstance(schema, Mapping) or schema.get("type") != "object":
        return ['options_schema must be a JSON-Schema object ({"type": "object", ...})']
    problems = []
    if schema.get("additionalProperties") is not False:
        problems.append("options_schema must set additionalProperties: false (a misspelt option is refused)")
    properties = schema.get("properties") or {}
    if not isinstance(properties, Mapping):
        return [*problems, "options_schema's properties must be an object"]
    for key, spec in properties.items():
        if not isinstance(key, str) or not re.fullmatch(r"[a-z][a-z0-9_]*", key):
            problems.append(f"option name {key!r} must be lower-case [a-z0-9_], starting with a letter")
            continue
        if not isinstance(spec, Mapping):
            problems.append(f"option {key!r} must be a JSON-Schema object")
            continue
        kinds, _ = declared_types(spec)
        if len(kinds) != 1 or kinds[0] not in TYPES:
            problems.append(f"option {key!r} needs one type of {', '.join(TYPES)} (or [TYPE, 'null'])")
            continue
        if described and not (isinstance(spec.get("description"), str) and spec["description"].strip()):
            problems.append(f"option {key!r} needs a description (it is its --help text)")
        if "default" not in spec:
            problems.append(f"option {key!r} needs a default")
        else:
            try:
                _check_value(key, spec["default"], spec)
            except AdaptkitError as exc:
                problems.append(f"option {key!r} has an invalid default: {exc}")
        low = "minimum" in spec or "exclusiveMinimum" in spec
        high = "maximum" in spec or "exclusiveMaximum" in spec
        if kinds[0] in _NUMERIC and not (low and high):
            problems.append(
                f"numeric option {key!r} needs a lower and an upper bound (minimum/maximum): "
                "a finite but absurd value (1e308) must be refused before any work"
            )
    return problems
