"""One guard for every path adaptkit writes, checked before any work is done.

The rules, for adapters, PEFT folders, exports, plots, metrics logs and checkpoints alike:

* An output that *is*, *contains* or *lies inside* an input (a manifest, recipe, data file,
  model folder or adapter) is refused, even with ``--force``: replacing it would destroy the
  very thing being read. Paths are compared after resolving symlinks, and existing ones also
  by inode.
* Only a regular file (for file outputs) or a real folder (for folder outputs) is ever
  replaced. A symlink, device, FIFO or socket at the output path is refused, even with
  ``--force``.
* An existing output is replaced only with ``--force``; without it, creation is exclusive
  down to the final rename (:mod:`adaptkit.io.atomic`), so two concurrent runs cannot both
  succeed.
* Two outputs of one command never share a path, nor lies one inside the other (``-o X
  --plot X``, a metrics log inside the checkpoint folder), even with ``--force``: the second
  write would replace, or be deleted with, the first. Paths are compared after resolving
  symlinks, and existing ones also by inode (:func:`check_outputs_apart`).
* Without ``--force``, the output's name must be one the command produces: a file output
  carries one of its kind's suffixes (``.safetensors``, ``.png``, ...), and no output is a
  dotfile or carries a suffix that something else would execute or import (``.pth``,
  ``.py``, ``.sh``, ...). A downloaded recipe thus cannot aim its bytes at a ``.pth`` file
  that the next Python start runs.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from adaptkit.errors import OutputError

#: Suffixes some program executes, imports or sources; never an adaptkit output without --force.
CODE_SUFFIXES = frozenset(
    {
        *(".pth", ".py", ".pyc", ".pyo", ".pyw", ".pyi", ".pyd", ".so", ".dylib", ".dll", ".exe"),
        *(".com", ".sh", ".bash", ".zsh", ".fish", ".csh", ".bat", ".cmd", ".ps1", ".vbs", ".js"),
        *(".mjs", ".cjs", ".rb", ".pl", ".php", ".lua", ".jar", ".egg-link", ".desktop", ".service"),
    }
)


@dataclass(frozen=True)
class OutputKind:
    """What a command writes at one path.

    Attributes:
        what: Words for messages ("adapter file", "export folder", "plot").
        folder: True if the output is a folder, False for a file, None if either (a
            third-party format that does not say).
        suffixes: For files, the suffixes a name of this kind carries (lower case);
            empty means any name that is not a dotfile or code.
    """

    what: str
    folder: bool | None = False
    suffixes: tuple[str, ...] = ()


ADAPTER_FILE = OutputKind("adapter file", suffixes=(".safetensors",))
ADAPTER_FOLDER = OutputKind("adapter folder", folder=True)
EXPORT_FOLDER = OutputKind("export folder", folder=True)
CHECKPOINT_FOLDER = OutputKind("checkpoint folder", folder=True)
PLOT = OutputKind("plot", suffixes=(".png",))
METRICS = OutputKind("metrics log", suffixes=(".jsonl", ".json", ".log", ".txt"))


def kind_of_writer(writer: object) -> OutputKind:
    """The :class:`OutputKind` a format plugin writes: its ``output_kind`` attribute, or a
    file of any (non-code, non-hidden) name for a plugin that does not declare one."""
    kind = getattr(writer, "output_kind", None)
    return kind if isinstance(kind, OutputKind) else OutputKind("output", folder=None)


def _relation(out: Path, inp: Path) -> str | None:
    """How ``out`` overlaps ``inp``: ``"is"``, ``"contains"``, ``"lies inside"`` or None."""
    from adaptkit.io.fileio import real_path

    o, i = real_path(out), real_path(inp)
    if o == i:
        return "is"
    try:
        if os.path.exists(out) and os.path.exists(inp) and os.path.samefile(out, inp):
            return "is"
    except OSError:
        pass
    if o in i.parents:
        return "contains"
    if i in o.parents:
        return "lies inside"
    return None


def _describe(mode: int) -> str:
    for test, words in (
        (stat.S_ISLNK, "a symbolic link"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISDIR, "a folder"),
        (stat.S_ISREG, "a regular file"),
    ):
        if test(mode):
            return words
    return "not a regular file"


def check_outputs_apart(outputs: Mapping[str, str | os.PathLike[str] | None]) -> None:
    """Refuse two outputs of one command that are the same path or lie one inside the other.

    Unlike an input, an output usually does not exist yet, so the comparison is of resolved
    paths (symlinks in the existing part followed), and by inode where both exist. ``--force``
    does not lift this: it allows replacing an earlier run's output, never one output of this
    run with another.

    Args:
        outputs: ``flag -> path`` for every output the command writes (None: not written).

    Raises:
        OutputError: naming both flags and the path.
    """
    given = [(flag, Path(path)) for flag, path in outputs.items() if path is not None]
    for i, (first_flag, first) in enumerate(given):
        for flag, path in given[i + 1 :]:
            relation = _relation(path, first)
            if relation is None:
                continue
            words = "is the same path as" if relation == "is" else f"{relation} the output of"
            raise OutputError(
                f"the {flag} output {words} {first_flag} ({first}); one output of a command would "
                "replace the other, refused even with --force",
                path=path,
                key=flag,
                hint=f"give {flag} and {first_flag} separate paths",
            )


def check_output(
    path: str | os.PathLike[str],
    kind: OutputKind,
    *,
    inputs: Iterable[str | os.PathLike[str] | None] = (),
    force: bool = False,
    empty_folder_ok: bool = False,
    flag: str = "-o",
    siblings: Mapping[str, str | os.PathLike[str] | None] | None = None,
) -> Path:
    """Apply the rules above to ``path``; return it as a :class:`Path`.

    Args:
        path: Where the command will write.
        kind: What it writes there.
        inputs: Every file or folder the command reads (None entries are skipped).
        force: ``--force`` was given: an existing output of the right type may be replaced
            and the name rules are lifted.
        empty_folder_ok: An existing empty folder counts as free (``export -o``).
        flag: The option that named the path, for messages.
        siblings: The command's other outputs, ``flag -> path``: ``path`` must be apart from
            each (:func:`check_outputs_apart`).

    Raises:
        OutputError: naming the path and the rule it breaks.
    """
    out = Path(path)
    if out.name in ("", ".", "..") or str(path) == "":
        raise OutputError(f"{flag} must name a {kind.what}, not a folder reference", path=out, key=flag)
    if siblings:
        check_outputs_apart({**{f: p for f, p in siblings.items() if f != flag}, flag: out})
    for inp in inputs:
        if inp is None or not os.path.lexists(inp):
            continue
        relation = _relation(out, Path(inp))
        if relation is not None:
            raise OutputError(
                f"the {kind.what} {relation} an input ({inp}); refused even with --force",
                path=out,
                key=flag,
            )
    try:
        st = os.lstat(out)
    except FileNotFoundError:
        st = None
    except OSError as exc:
        raise OutputError(f"cannot check the output ({exc.strerror})", path=out, key=flag) from None
    if st is not None:
        wanted = {True: (stat.S_ISDIR,), False: (stat.S_ISREG,), None: (stat.S_ISDIR, stat.S_ISREG)}
        if not any(test(st.st_mode) for test in wanted[kind.folder]):
            expected = {True: "folder", False: "regular file", None: "regular file or folder"}[kind.folder]
            raise OutputError(
                f"{_describe(st.st_mode)} is in the way; only a {expected} is ever replaced, "
                "even with --force",
                path=out,
                key=flag,
            )
        empty = bool(kind.folder) and empty_folder_ok and not any(out.iterdir())
        if not force and not empty:
            words = "output folder exists and is not empty" if empty_folder_ok else "output exists"
            raise OutputError(words, path=out, key=flag, hint="pass --force to replace it")
    if not force:
        _check_name(out, kind, flag)
    return out


def _check_name(out: Path, kind: OutputKind, flag: str) -> None:
    name = out.name
    suffix = out.suffix.lower()
    if name.startswith("."):
        problem = "is a hidden (dot) file name"
    elif suffix in CODE_SUFFIXES:
        problem = f"ends in {suffix!r}, a kind of file other programs run"
    elif kind.folder is False and kind.suffixes and suffix not in kind.suffixes:
        problem = f"does not end in {' or '.join(kind.suffixes)}"
    else:
        return
    raise OutputError(
        f"{name!r} {problem}; not a {kind.what} name",
        path=out,
        key=flag,
        hint="pass --force if you really mean this name",
    )
