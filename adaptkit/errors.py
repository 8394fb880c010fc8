"""The one error hierarchy of adaptkit.

Every problem caused by user input (a file, a flag, a recipe) is an :class:`AdaptkitError`.
The CLI turns it into a single ``error: ...`` line on stderr and exit code 2; anything else
escaping is a bug in adaptkit and keeps its traceback.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence

#: Longest ``error:`` line; longer messages keep their start and end.
MAX_LINE_CHARS = 2000
#: Problems listed in a one-line summary (``problems`` keeps them all).
SHOWN_PROBLEMS = 20


class AdaptkitError(Exception):
    """Base class of every user-facing error.

    Args:
        message: What was wrong, with the offending value shown via ``!r`` where useful.
        path: The file or directory the problem is in, if any.
        key: The key, tensor or target inside that file, if any.
        hint: What to do next.
    """

    exit_code = 2

    def __init__(
        self,
        message: str,
        *,
        path: str | os.PathLike[str] | None = None,
        key: str | None = None,
        hint: str | None = None,
    ) -> None:
        self.message = message
        self.path = None if path is None else os.fspath(path)
        self.key = key
        self.hint = hint
        #: Every individual problem (``location: message``); one entry unless built with
        #: :meth:`from_problems`. ``adaptkit validate`` prints these one per line.
        self.problems: list[str] = [": ".join(p for p in (key, message) if p)]
        super().__init__(self.one_line())

    @classmethod
    def from_problems(
        cls, problems: Sequence[str], *, path: str | os.PathLike[str] | None = None
    ) -> AdaptkitError:
        """One error carrying several problems, summarised on one line, in sorted order (the
        same input always gives the same message)."""
        problems = sorted(dict.fromkeys(problems))
        n = len(problems)
        shown = "; ".join(problems[:SHOWN_PROBLEMS]) + (
            f"; and {n - SHOWN_PROBLEMS} more" if n > SHOWN_PROBLEMS else ""
        )
        summary = problems[0] if n == 1 else f"{n} problems: {shown}"
        err = cls(summary, path=path)
        err.problems = list(problems)
        return err

    def one_line(self) -> str:
        """Render as ``path: key: message (hint)`` on a single line."""
        parts = [p for p in (self.path, self.key) if p]
        text = ": ".join([*parts, self.message])
        if self.hint:
            text += f" ({self.hint})"
        text = " ".join(text.split("\n"))
        if len(text) > MAX_LINE_CHARS:  # a hostile name or header must not flood the terminal
            cut = len(text) - MAX_LINE_CHARS
            text = f"{text[: MAX_LINE_CHARS - 200]} [... {cut:,} characters cut ...] {text[-200:]}"
        return text


class InvalidAdapterError(AdaptkitError):
    """An adapter (in memory or on disk) breaks the data-model rules."""


class FormatError(AdaptkitError):
    """A file is not in the format it claims, or no format recognises it."""


class SchemaError(AdaptkitError):
    """A document failed JSON-Schema validation; ``problems`` lists every failure."""


class YamlError(AdaptkitError):
    """A YAML file is unsafe, malformed or too large."""


class PluginError(AdaptkitError):
    """A plugin failed to load, clashed with another, or registered something invalid."""


class UnknownNameError(AdaptkitError):
    """A name (format, strategy, backend, exporter, parameter) is not registered."""

    def __init__(self, kind: str, name: str, valid: Iterable[str], **kwargs) -> None:
        choices = ", ".join(sorted(valid)) or "none registered"
        super().__init__(f"unknown {kind} {name!r}; valid: {choices}", **kwargs)
        self.kind = kind
        self.name = name


class MissingDependencyError(AdaptkitError):
    """A plugin needs a package that is not installed."""


class OutputError(AdaptkitError):
    """An output path is unusable: exists without --force, equals an input, or escapes."""
