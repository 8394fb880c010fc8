"""adaptkit-loraplus: the LoRA+ training backend, as a third-party adaptkit plugin.

Registered through the ``adaptkit`` entry-point group (see ``pyproject.toml``); adaptkit then
offers ``adaptkit train --backend loraplus``. Importing this module stays instant: torch is
imported only when the backend trains.
"""

from adaptkit.api import hookimpl
from adaptkit_loraplus.backend import LoraPlusBackend

__all__ = ["LoraPlusBackend"]
__version__ = "0.1.0"


@hookimpl
def register_backends(register):
    register(LoraPlusBackend())
