"""Keep each command's stderr to adaptkit's own lines.

Libraries adaptkit uses log and warn on their own: bitsandbytes says "Failed to load CPU
gemm_4bit_forward from kernels-community ..." when transformers' ``kernels`` package is
installed, transformers and torch warn about deprecations. Those lines land in the middle of
a command's progress and make its one ``error:`` line hard to find. While a command runs,
:func:`third_party_output` routes every log record that is not adaptkit's and every Python
warning to one place: dropped by default, shown (tagged with its source) with ``--verbose``.

One choke point covers every library, whatever it configured: ``logging.Logger.callHandlers``
(libraries such as transformers attach their own stderr handler and stop propagation, so a
root handler alone would miss them) and ``warnings.showwarning``. Both are restored when the
command ends; the Python API (``run_training`` and co.) never touches logging.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import warnings
from collections.abc import Iterator
from typing import Any

#: Loggers whose records are adaptkit's own (core and builtin plugins).
OWN_LOGGERS = ("adaptkit",)


def _own(name: str) -> bool:
    return any(name == root or name.startswith((root + ".", root + "_")) for root in OWN_LOGGERS)


class _Elsewhere:
    """Where third-party records and warnings go: nowhere, or stderr with ``--verbose``."""

    def __init__(self, verbose: bool) -> None:
        self.verbose = verbose

    def write(self, source: str, text: str) -> None:
        if not self.verbose:
            return
        from adaptkit.cli.output import terminal_safe

        for line in text.rstrip("\n").splitlines() or [""]:
            sys.stderr.write(terminal_safe(f"[{source}] {line}") + "\n")
        sys.stderr.flush()

    def record(self, record: logging.LogRecord) -> None:
        try:
            text = record.getMessage()
        except Exception:  # a library's bad format string is its own problem, not the user's
            text = str(record.msg)
        self.write(record.name, f"{record.levelname}: {text}")

    def warning(self, message: Any, category: type, filename: str, lineno: int, *_: Any) -> None:
        self.write(category.__name__, f"{message} ({filename}:{lineno})")


@contextlib.contextmanager
def third_party_output(verbose: bool) -> Iterator[None]:
    """Route other libraries' log records and every Python warning away from stderr while a
    command runs (to stderr, tagged, when ``verbose``)."""
    sink = _Elsewhere(verbose)
    call_handlers = logging.Logger.callHandlers
    show_warning = warnings.showwarning

    def route(logger: logging.Logger, record: logging.LogRecord) -> None:
        if _own(record.name):
            call_handlers(logger, record)
        else:
            sink.record(record)

    logging.Logger.callHandlers = route  # type: ignore[method-assign]
    warnings.showwarning = sink.warning
    try:
        yield
    finally:
        logging.Logger.callHandlers = call_handlers  # type: ignore[method-assign]
        warnings.showwarning = show_warning
