"""What ``python -m adaptkit`` must do before anything else is imported.

``python -m`` puts the working directory first on ``sys.path``. Run from inside a downloaded
model folder (``cd model && python -m adaptkit export ...``), a ``yaml.py``, ``pluggy.py`` or
``torch*.so`` shipped in that folder would be imported in place of the real library: code from
input. The ``adaptkit`` command has no such entry; this makes the module form match it.

This module is the first thing ``adaptkit/__init__.py`` runs and imports only modules the
interpreter has already loaded at start-up (``os``, ``sys``; no ``from __future__``, which is a
real import). What it cannot cover: the few standard-library modules ``runpy`` imports before
any package code runs (``python -m`` resolves the package with the working directory already on
the path). The ``adaptkit`` command never puts the working directory on the path at all; it is
the way to run adaptkit from inside a folder you do not trust.
"""

import os
import sys


def launched_as_main() -> bool:
    """Whether this interpreter is starting adaptkit as ``python -m adaptkit`` and is still
    importing the package (``sys.argv[0]`` is ``-m`` only then)."""
    argv = list(getattr(sys, "orig_argv", ()))
    if sys.argv[:1] != ["-m"]:
        return False
    for i, arg in enumerate(argv):
        if arg == "-m":
            return argv[i + 1 : i + 2] == ["adaptkit"]
        if arg == "-madaptkit":
            return True
    return False


def drop_working_directory() -> None:
    """Remove the working-directory entry ``python -m`` put first on ``sys.path``, unless
    adaptkit itself was found there (a source checkout run from its root)."""
    if not launched_as_main() or not sys.path or sys.path[0] not in ("", os.getcwd()):
        return
    ours = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    if os.path.realpath(sys.path[0] or os.curdir) != os.path.realpath(ours):
        del sys.path[0]
