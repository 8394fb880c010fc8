"""An example plugin package installed for real with pip, and `adaptkit` run against it.

``pip install --no-deps --no-build-isolation --no-index --target`` builds the wheel from the
example's ``pyproject.toml`` (hatchling is in the test extra) into a temporary site folder,
offline; adaptkit then finds the plugin through its entry point, as after
``pip install ./examples/NAME``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from tests.helpers import REPO


def install_example(name: str, tmp_path_factory) -> Path:
    """``examples/NAME`` pip-installed into a fresh site folder (returned)."""
    target = tmp_path_factory.mktemp("site")
    # Build from a copy, so pip's build folders never land in the checkout.
    build = tmp_path_factory.mktemp("src") / name
    shutil.copytree(REPO / "examples" / name, build)
    res = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
         "--no-index", "--target", str(target), str(build)],
        capture_output=True,
        text=True,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr[-2000:]
    return target


def run_installed(site: Path, name: str, *args, block: str | None = None) -> subprocess.CompletedProcess:
    """``python -m adaptkit ARGS`` with the installed example and this run's adaptkit and
    builtins on the path, but not the example's source folder ``examples/NAME``."""
    path = [str(site), *(p for p in sys.path if p and name not in p)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(path)}
    if block:
        env["ADAPTKIT_BLOCK_PLUGINS"] = block
    return subprocess.run(
        [sys.executable, "-m", "adaptkit", *map(str, args)], env=env, capture_output=True, text=True
    )
