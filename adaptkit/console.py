"""Text for a person's terminal and JSON for scripts, safe whatever the input said.

Names in messages come from files (tensor names, module paths, config values): a control
character among them (ESC, OSC, CR, ...) would drive the user's terminal — clear the screen,
retitle the window, hide text. Everything printed for a person goes through
:func:`terminal_safe`; JSON output is escaped by ``json.dumps`` itself. This module sits at the
bottom of the layers so a reader deep in ``io`` can print a ``note:`` line the same way a
command does.
"""

from __future__ import annotations

import json
import math
import unicodedata
from typing import Any

import click


def terminal_safe(text: Any) -> str:
    """``text`` with every control character (C0, DEL, C1; Unicode category ``Cc``) and
    bidirectional override shown as an escape (``\\x1b``), so printing it cannot act on the
    terminal."""
    out = []
    for ch in str(text):
        if unicodedata.category(ch) == "Cc" or ch in _BIDI:
            out.append(ch.encode("unicode_escape").decode("ascii"))
        else:
            out.append(ch)
    return "".join(out)


_BIDI = set("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


def say(message: Any) -> None:
    """One line of progress on stderr, terminal-safe."""
    click.echo(terminal_safe(message), err=True)


def echo_json(data: Any) -> None:
    """Print ``data`` as strict JSON: a non-finite float (an overflowing norm, say) becomes the
    string ``"inf"``, ``"-inf"`` or ``"nan"``, which every JSON parser reads."""
    click.echo(json.dumps(_finite(data), indent=2, sort_keys=False, allow_nan=False))


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value
