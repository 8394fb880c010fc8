"""Atomic output: a destination is either its old complete self or the new complete file.

Writers produce a temp file *in the destination's folder* (so the final ``os.replace`` is a
same-filesystem rename, which POSIX makes atomic), fsync it, rename it over the destination
and fsync the folder. Any failure, ``KeyboardInterrupt`` included (and SIGTERM/SIGHUP, which the
CLI turns into an exception), removes the temp file. Temp names carry the writer's process id
(``.OUT.<pid>.<random>.tmp``): a temp left by a process that no longer exists (SIGKILL, power
loss) is removed by the next write to the same destination.

Without ``replace``/``overwrite`` creation is exclusive at the final step (a hard link for
files, ``mkdir`` then rename for folders), so of two concurrent writers exactly one succeeds.
With it, only a regular file or a real folder is ever replaced: a symlink, device, FIFO or
socket that appeared at the destination is refused (:mod:`adaptkit.io.output_guard` checks the
same before any work).
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


def sweep_stale_temps(dest: Path) -> list[Path]:
    """Remove temps beside ``dest`` left by writers whose process is gone; returns them.

    Only names this module makes are touched (``.<name>.<pid>.<random>.tmp`` / ``.old``), and
    only when ``<pid>`` is not a running process, so a concurrent writer's temp is never hit.
    """
    import re
    import shutil

    folder = dest.parent if str(dest.parent) else Path(".")
    pattern = re.compile(re.escape(f".{dest.name}.") + r"(\d+)\.[^/]*\.(?:tmp|old)")
    removed = []
    try:
        entries = list(folder.iterdir())
    except OSError:
        return removed
    for entry in entries:
        m = pattern.fullmatch(entry.name)
        if m is None or _alive(int(m.group(1))):
            continue
        if entry.name.endswith(".old") and not dest.exists():
            continue  # the only copy of a previous output whose swap was cut short: keep it
        try:
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
            removed.append(entry)
        except OSError:
            pass
    return removed


@contextlib.contextmanager
def _signals_blocked() -> Iterator[None]:
    """Hold SIGINT/SIGTERM/SIGHUP back for a few system calls; they arrive right after."""
    import signal

    wanted = {getattr(signal, n) for n in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, n)}
    if not hasattr(signal, "pthread_sigmask"):
        yield
        return
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, wanted)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True  # someone else's process (or an absurd number): leave it alone
    return True


def _prefix(dest: Path) -> str:
    return f".{dest.name}.{os.getpid()}."


def _target_mode(dest: Path) -> int:
    try:
        return dest.stat().st_mode & 0o7777
    except OSError:
        return 0o666 & ~_umask()


def _exists_error(dest: Path) -> Exception:
    from adaptkit.errors import OutputError

    return OutputError("output exists", path=dest, hint="pass --force to replace it")


def _check_replaceable(dest: Path, *, folder: bool) -> None:
    """Refuse to replace anything but a regular file (or, for ``folder``, a real folder)."""
    import stat

    try:
        mode = os.lstat(dest).st_mode
    except FileNotFoundError:
        return
    if stat.S_ISREG(mode) or (folder and stat.S_ISDIR(mode)):
        return
    from adaptkit.errors import OutputError

    raise OutputError("only a regular file or folder is ever replaced; something else is here", path=dest)


def _link_exclusive(tmp: Path, dest: Path) -> None:
    """Make ``tmp`` appear at ``dest`` only if nothing is there (atomic), then drop ``tmp``."""
    try:
        os.link(tmp, dest)
    except FileExistsError:
        raise _exists_error(dest) from None
    except OSError:
        # A filesystem without hard links: reserve the name exclusively, then rename over it.
        try:
            fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            raise _exists_error(dest) from None
        os.close(fd)
        try:
            os.replace(tmp, dest)
        except BaseException:
            with contextlib.suppress(OSError):
                dest.unlink()  # our empty reservation, not anyone's output
            raise
        return
    tmp.unlink()


@contextlib.contextmanager
def atomic_path(destination: str | os.PathLike[str], *, replace: bool = False) -> Iterator[Path]:
    """Yield a temp path beside ``destination``; on success it becomes ``destination``.

    The caller writes the complete file to the yielded path. Nothing is visible at
    ``destination`` until the block exits without an exception. An existing regular file is
    replaced only if ``replace``; otherwise the final step fails if anything is there.
    """
    dest = Path(destination)
    folder = dest.parent if str(dest.parent) else Path(".")
    sweep_stale_temps(dest)
    tmp: Path | None = None
    try:
        # Signals wait until the temp exists *and* the cleanup below covers it.
        with _signals_blocked():
            fd, tmp_name = tempfile.mkstemp(prefix=_prefix(dest), suffix=".tmp", dir=folder)
            tmp = Path(tmp_name)
            # mkstemp creates 0600; give the output the mode a plain open() would (or the old one's).
            try:
                os.fchmod(fd, _target_mode(dest))
            finally:
                os.close(fd)
        yield tmp
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        if replace:
            _check_replaceable(dest, folder=False)
            os.replace(tmp, dest)
        else:
            _link_exclusive(tmp, dest)
    except BaseException as exc:
        if tmp is not None:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
        if isinstance(exc, OSError):
            raise _output_error(exc, dest) from exc
        raise
    _fsync_dir(folder)


def atomic_write_bytes(destination: str | os.PathLike[str], data: bytes, *, replace: bool = False) -> None:
    """Write ``data`` to ``destination`` atomically (see module docstring)."""
    with atomic_path(destination, replace=replace) as tmp, open(tmp, "wb") as fh:
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
    if os.path.lexists(dest) and not overwrite:
        raise _exists_error(dest)
    sweep_stale_temps(dest)
    tmp: Path | None = None
    try:
        with _signals_blocked():  # as in atomic_path: no moment where a temp escapes cleanup
            tmp = Path(tempfile.mkdtemp(prefix=_prefix(dest), suffix=".tmp", dir=parent))
            os.chmod(tmp, 0o777 & ~_umask())
        yield tmp
        for sub in tmp.rglob("*"):
            if sub.is_file():
                with open(sub, "rb") as fh:
                    os.fsync(fh.fileno())
        old = None
        swapped = False
        try:
            with _signals_blocked():  # the two renames happen together or not at all
                if not overwrite:
                    # Reserve the name exclusively; renaming a folder over an empty one is atomic.
                    try:
                        os.mkdir(dest)
                    except FileExistsError:
                        raise _exists_error(dest) from None
                    try:
                        os.rename(tmp, dest)
                    except BaseException:
                        os.rmdir(dest)
                        raise
                else:
                    _check_replaceable(dest, folder=True)
                    if os.path.lexists(dest):
                        old = Path(tempfile.mkdtemp(prefix=_prefix(dest), suffix=".old", dir=parent))
                        os.rmdir(old)
                        os.replace(dest, old)
                    try:
                        os.replace(tmp, dest)
                    except BaseException:
                        if old is not None:
                            os.replace(old, dest)
                        raise
                swapped = True
        finally:
            # A signal held back during the swap arrives as the block ends: the new output is
            # complete by then, so the previous one is removed either way.
            if swapped and old is not None:
                shutil.rmtree(old, ignore_errors=True)
    except BaseException as exc:
        if tmp is not None:
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


#: Scratch folders (a model-sized baked checkpoint, a builder's cache) are named
#: ``.adaptkit-scratch.<pid>.<random>``, like temps, and swept by the same rule.
SCRATCH_PREFIX = ".adaptkit-scratch."


@contextlib.contextmanager
def scratch_directory(parent: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a fresh scratch folder in ``parent`` (the output's filesystem), removed on exit.

    Its name carries our process id, so when a SIGKILL leaves it behind the next
    :func:`sweep_stale_scratch` in ``parent`` removes it, and never while we still run.
    """
    import shutil

    folder = Path(parent) if str(parent) else Path(".")
    sweep_stale_scratch(folder)
    tmp: Path | None = None
    try:
        with _signals_blocked():  # as for temps: created and covered by the cleanup together
            tmp = Path(tempfile.mkdtemp(prefix=f"{SCRATCH_PREFIX}{os.getpid()}.", dir=folder))
        yield tmp
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


def sweep_stale_scratch(parent: str | os.PathLike[str]) -> list[Path]:
    """Remove scratch folders in ``parent`` whose owning process is gone; returns them.

    Only real folders named ``.adaptkit-scratch.<pid>.*`` are touched; a running owner's folder
    is never removed.
    """
    import re
    import shutil

    named = re.compile(re.escape(SCRATCH_PREFIX) + r"(\d+)\.[^/]+")
    removed: list[Path] = []
    try:
        entries = list(Path(parent).iterdir())
    except OSError:
        return removed
    for entry in entries:
        m = named.fullmatch(entry.name)
        if m is None or entry.is_symlink() or not entry.is_dir():
            continue
        owner = int(m.group(1))
        if _alive(owner):
            continue
        shutil.rmtree(entry, ignore_errors=True)
        if not os.path.lexists(entry):
            removed.append(entry)
    return removed
