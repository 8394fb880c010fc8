"""Careful reads of untrusted input files: regular files only, sizes capped before reading."""

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
