"""Small helpers shared by commands: terminal-safe text and JSON (:mod:`adaptkit.console`), and
aligned tables.

Names in messages and tables come from files (tensor names, module paths, config values): a
control character among them (ESC, OSC, CR, ...) would drive the user's terminal — clear the
screen, retitle the window, hide text. Everything printed for a person goes through
:func:`terminal_safe`; JSON output is escaped by ``json.dumps`` itself.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import click

from adaptkit.console import echo_json, say, terminal_safe

__all__ = ["echo_json", "echo_table", "say", "terminal_safe"]


def echo_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """Print rows as a left-aligned table (numbers right-aligned)."""
    cells = [[terminal_safe(h) for h in headers]] + [[terminal_safe(_fmt(v)) for v in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    numeric = [all(isinstance(row[i], (int, float)) for row in rows) for i in range(len(headers))]
    for n, row in enumerate(cells):
        line = "  ".join(
            c.rjust(w) if numeric[i] and n else c.ljust(w)
            for i, (c, w) in enumerate(zip(row, widths, strict=True))
        )
        click.echo(line.rstrip())


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.6g}"
    return "-" if v is None else str(v)
