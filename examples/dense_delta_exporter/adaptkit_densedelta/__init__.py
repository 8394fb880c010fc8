"""adaptkit-densedelta: an exporter of dense updates, as a third-party adaptkit plugin.

Registered through the ``adaptkit`` entry-point group (see ``pyproject.toml``); adaptkit then
offers ``adaptkit export --dense-delta`` with this exporter's own flag ``--delta-dtype``.
Importing this module stays instant: torch is imported only when an export runs.
"""

from adaptkit.api import hookimpl
from adaptkit_densedelta.exporter import DenseDeltaExporter

__all__ = ["DenseDeltaExporter"]
__version__ = "0.1.0"


@hookimpl
def register_exporters(register):
    register(DenseDeltaExporter())
