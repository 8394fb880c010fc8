"""Atomic output: a destination is either its old complete self or the new complete file.

Writers produce a temp file *in the destination's folder* (so the final ``os.replace`` is a
same-filesystem rename, which POSIX makes atomic), fsync it, rename it over the destination
and fsync the folder. Any failure, ``KeyboardInterrupt`` included, removes the temp file.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path


def _fsync_dir(folder: Path) -> None:
    # Directory fsync makes the rename durable; not every platform supports it.
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _target_mode(dest: Path) -> int:
    try:
        return dest.stat().st_mode & 0o7777
    except OSError:
        return 0o666 & ~_umask()


@contextlib.contextmanager
def atomic_path(destination: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temp path beside ``destination``; on success it replaces ``destination``.

    The caller writes the complete file to the yielded path. Nothing is visible at
    ``destination`` until the block exits without an exception.
    """
    dest = Path(destination)
    folder = dest.parent if str(dest.parent) else Path(".")
    try:
        fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=folder)
    except OSError as exc:
        raise _output_error(exc, dest) from exc
    tmp = Path(tmp_name)
    # mkstemp creates 0600; give the output the mode a plain open() would (or keep the old one).
    try:
        os.fchmod(fd, _target_mode(dest))
    finally:
        os.close(fd)
    try:
        yield tmp
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, dest)
    except BaseException as exc:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        if isinstance(exc, OSError):
            raise _output_error(exc, dest) from exc
        raise
    _fsync_dir(folder)


def atomic_write_bytes(destination: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``destination`` atomically (see module docstring)."""
    with atomic_path(destination) as tmp, open(tmp, "wb") as fh:
        fh.write(data)


@contextlib.contextmanager
def atomic_directory(destination: str | os.PathLike[str], *, overwrite: bool = False) -> Iterator[Path]:
    """Yield an empty temp folder beside ``destination``; on success it becomes ``destination``.

    An existing ``destination`` is replaced only if ``overwrite`` — it is first renamed aside,
    the new folder renamed in, and the old one deleted, so at every instant the path holds
    either the complete old or the complete new folder (the swap itself is two renames). On
    failure the temp folder is removed and ``destination`` is untouched.
    """
    import shutil

    dest = Path(destination)
    parent = dest.parent if str(dest.parent) else Path(".")
    if dest.exists() and not overwrite:
        from adaptkit.errors import OutputError

        raise OutputError("output exists", path=dest, hint="pass --force to replace it")
    try:
        tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".tmp", dir=parent))
    except OSError as exc:
        raise _output_error(exc, dest) from exc
    os.chmod(tmp, 0o777 & ~_umask())
    try:
        yield tmp
        for sub in tmp.rglob("*"):
            if sub.is_file():
                with open(sub, "rb") as fh:
                    os.fsync(fh.fileno())
        old = None
        if dest.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".old", dir=parent))
            os.rmdir(old)
            os.replace(dest, old)
        try:
            os.replace(tmp, dest)
        except BaseException:
            if old is not None:
                os.replace(old, dest)
            raise
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(exc, OSError):
            raise _output_error(exc, dest) from exc
        raise
    _fsync_dir(parent)


def _output_error(exc: OSError, dest: Path) -> Exception:
    from adaptkit.errors import OutputError

    reason = exc.strerror or str(exc)
    return OutputError(f"cannot write the output ({reason}); nothing was changed", path=dest)


def _umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask
