"""Careful reads of untrusted input files: regular files only, sizes capped before reading;
and where a path really leads, without ever raising on a hostile one.

``Path.resolve()`` raises ``RuntimeError("Symlink loop from ...")`` on a link that points at
itself (Python ≤ 3.12; ``OSError`` later), so a recipe or model folder holding such a link
turned into a traceback wherever a path was compared. Every comparison of real locations goes
through :func:`real_path` instead: a loop is left unresolved (it leads nowhere, and the reader
that opens it says so in one line).
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from adaptkit.errors import FormatError


def open_regular_file(path: str | os.PathLike[str], *, what: str = "file") -> int:
    """Open ``path`` read-only and return the descriptor, refusing anything but a regular file.

    The check is done on the *opened* descriptor (``fstat``), so a FIFO or device cannot be
    swapped in between check and read. Opening a FIFO could block, hence ``O_NONBLOCK``.
    """
    p = Path(path)
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(p, flags)
    except FileNotFoundError:
        raise FormatError(f"{what} not found", path=p) from None
    except IsADirectoryError:
        raise FormatError(f"expected a {what}, found a directory", path=p) from None
    except OSError as exc:
        raise FormatError(f"cannot open {what}: {exc.strerror}", path=p) from None
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        kind = "a directory" if stat.S_ISDIR(st.st_mode) else "not a regular file"
        raise FormatError(f"expected a regular {what}, found {kind}", path=p)
    return fd


def read_regular_file(path: str | os.PathLike[str], *, max_bytes: int, what: str = "file") -> bytes:
    """Read a whole regular file of at most ``max_bytes`` bytes."""
    fd = open_regular_file(path, what=what)
    try:
        size = os.fstat(fd).st_size
        if size > max_bytes:
            raise FormatError(f"{what} is {size} bytes, larger than the {max_bytes}-byte cap", path=path)
        with os.fdopen(fd, "rb", closefd=False) as fh:
            return fh.read(max_bytes + 1)[:max_bytes]
    finally:
        os.close(fd)


def real_path(path: str | os.PathLike[str]) -> Path:
    """``path`` made absolute with every symlink followed; a loop is left as it is."""
    return Path(os.path.realpath(os.fspath(path)))


def is_within(path: str | os.PathLike[str], root: str | os.PathLike[str]) -> bool:
    """Whether ``path`` really lies inside ``root`` (or is ``root``), symlinks followed on both."""
    real, base = real_path(path), real_path(root)
    return real == base or base in real.parents
