"""Helpers for exporters (the request itself is :class:`adaptkit.api.ExportRequest`).

:func:`combined` is the exact weighted sum of an export's adapters, for exporters that bake one
update in; :func:`load_export_adapters` loads ``--adapter`` SPECs as the export host does (a
recipe combined as ``adaptkit combine`` would, ``tune:`` included), for plugin commands that take
SPECs. Refusing an option the chosen path ignores is :meth:`adaptkit.api.ExportRequest.refuse_unused`.
"""

from __future__ import annotations

from adaptkit.exporting import combined, load_export_adapters

__all__ = ["combined", "load_export_adapters"]
