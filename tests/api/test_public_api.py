"""The public plugin API is importable, light, and documented."""

import importlib
import pkgutil
import subprocess
import sys

import adaptkit.api
from tests.helpers import REPO

MODULES = ["adaptkit.api"] + [f"adaptkit.api.{m.name}" for m in pkgutil.iter_modules(adaptkit.api.__path__)]


def test_every_public_name_resolves():
    for name in MODULES:
        module = importlib.import_module(name)
        assert module.__all__, name
        missing = [n for n in module.__all__ if not hasattr(module, n)]
        assert not missing, f"{name} lists {missing} but does not define them"


def test_the_api_face_loads_no_torch():
    code = "import sys, adaptkit.api; print('torch' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    assert done.stdout.strip() == "False", (
        "import adaptkit.api must not import torch (plugins load at --help)"
    )


def test_plugins_doc_lists_every_api_module():
    text = (REPO / "docs" / "plugins.md").read_text()
    for name in MODULES:
        assert f"`{name}`" in text, f"docs/plugins.md does not list {name}"
