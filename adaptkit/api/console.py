"""Output for plugin commands: terminal-safe text for people, strict JSON for scripts.

Anything printed that came from a file (names, config values) goes through
:func:`terminal_safe`, so a control character in it cannot act on the terminal.
"""

from __future__ import annotations

from adaptkit.console import echo_json, say, terminal_safe

__all__ = ["echo_json", "say", "terminal_safe"]
