"""Backend options (``--option KEY=VALUE``, ``options:`` in a train recipe), checked before the
model loads.

A backend declares its options as ``options_schema``; the host's one checker
(:func:`adaptkit.plugins.options.checked_options`, shared with exporters) checks the given
options against it and fills defaults, so a backend never parses a raw value itself. Every
number, declared or not, must be finite, and a declared one must lie within its bounds. The
contract kit (:func:`adaptkit.testing.check_backend`) asks every numeric option for both bounds.
"""

from __future__ import annotations

from typing import Any

from adaptkit.plugins.options import checked_options


def backend_options(backend: Any, options: dict[str, Any] | None) -> dict[str, Any]:
    """``options`` checked against ``backend.options_schema``, with defaults filled in.

    A backend without ``options_schema`` gets its options back as given, after the finiteness
    check every option passes. Errors name the option as ``BACKEND option KEY``.

    Raises:
        AdaptkitError: naming the backend and the option (unknown options list the valid ones).
    """
    name = getattr(backend, "name", "backend")
    return checked_options(getattr(backend, "options_schema", None), options, owner=name, where="--option")
