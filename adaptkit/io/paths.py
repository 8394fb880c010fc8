"""Where a path really leads, without ever raising on a hostile one.

``Path.resolve()`` raises ``RuntimeError("Symlink loop from ...")`` on a link that points at
itself (Python ≤ 3.12; ``OSError`` later), so a recipe or model folder holding such a link
turned into a traceback wherever a path was compared. Every comparison of real locations goes
through :func:`real_path` instead: a loop is left unresolved (it leads nowhere, and the reader
that opens it says so in one line).
"""

from __future__ import annotations

import os
from pathlib import Path


def real_path(path: str | os.PathLike[str]) -> Path:
    """``path`` made absolute with every symlink followed; a loop is left as it is."""
    return Path(os.path.realpath(os.fspath(path)))


def is_within(path: str | os.PathLike[str], root: str | os.PathLike[str]) -> bool:
    """Whether ``path`` really lies inside ``root`` (or is ``root``), symlinks followed on both."""
    real, base = real_path(path), real_path(root)
    return real == base or base in real.parents
