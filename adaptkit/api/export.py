"""Helpers for exporters (the request itself is :class:`adaptkit.api.ExportRequest`).

:func:`combined` is the exact weighted sum of an export's adapters (for exporters that bake one
update in); :func:`may_replace` says whether the output folder may be replaced;
:func:`refuse_unused_options` turns an option the chosen path would ignore into an error.
"""

from __future__ import annotations

from adaptkit.exporting import combined, load_export_adapters, may_replace, refuse_unused_options

__all__ = ["combined", "load_export_adapters", "may_replace", "refuse_unused_options"]
