"""The layering of docs/architecture.md holds, checked by import-linter (contracts in pyproject.toml).

A claim about structure that no tool checks drifts: these tests run ``lint-imports`` and keep
the contracts themselves honest (every core module sits in a layer, every module but
``adaptkit.api`` is off limits to plugins, every plugin package is held to it, and the layers
the docs draw are the layers the tool checks).
"""

import os
import pkgutil
import re
import subprocess
import sys

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: import-linter brings tomli
    import tomli as tomllib

import adaptkit
from tests.helpers import REPO

CONFIG = tomllib.loads((REPO / "pyproject.toml").read_text())
CONTRACTS = {c["id"]: c for c in CONFIG["tool"]["importlinter"]["contracts"]}
#: Where the plugin packages lie (the builtins, and each example's own project folder).
PLUGIN_ROOTS = [REPO / "plugins", *sorted(p.parent for p in REPO.glob("examples/*/pyproject.toml"))]


def _plugin_packages() -> set[str]:
    names = set()
    for root in PLUGIN_ROOTS:
        names |= {p.parent.name for p in root.glob("adaptkit_*/__init__.py")}
    return names


def test_lint_imports_keeps_every_contract():
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(map(str, [REPO, *PLUGIN_ROOTS])))
    done = subprocess.run(
        [sys.executable, "-c", "from importlinter.cli import lint_imports_command; lint_imports_command()"],
        cwd=REPO,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-2000:]
    assert f"Contracts: {len(CONTRACTS)} kept, 0 broken" in done.stdout, done.stdout[-3000:]


def test_the_public_api_contract_forbids_every_other_core_module():
    children = {f"adaptkit.{m.name}" for m in pkgutil.iter_modules(adaptkit.__path__)}
    forbidden = set(CONTRACTS["public-api"]["forbidden_modules"])
    assert forbidden == children - {"adaptkit.api"}, (
        "pyproject.toml's public-api contract must forbid every module of adaptkit except adaptkit.api"
    )
    assert CONTRACTS["public-api-root"]["forbidden_modules"] == ["adaptkit"]


def test_every_plugin_package_is_held_to_the_public_api():
    packages = _plugin_packages()
    assert {"adaptkit_onnx", "adaptkit_loraplus"} <= packages
    for contract in ("public-api", "public-api-root"):
        assert set(CONTRACTS[contract]["source_modules"]) == packages, contract
    assert set(CONFIG["tool"]["importlinter"]["root_packages"]) == packages | {"adaptkit"}
    builtins = {p.name for p in (REPO / "plugins").glob("adaptkit_*") if (p / "__init__.py").exists()}
    assert set(CONTRACTS["plugins-apart"]["modules"]) == builtins


def test_the_docs_draw_the_layers_the_tool_checks():
    text = (REPO / "docs" / "architecture.md").read_text()
    block = re.search(r"```text\n# layers, top to bottom\n(.*?)```", text, re.S)
    assert block, "docs/architecture.md lost its layer diagram"
    drawn = [re.sub(r"\s+#.*", "", line).strip() for line in block.group(1).splitlines()]
    drawn = [line for line in drawn if line]
    assert drawn == CONTRACTS["core-layers"]["layers"], (
        "docs/architecture.md and pyproject.toml's core-layers contract disagree"
    )


def test_example_tests_import_only_the_public_api_and_the_kits():
    """A third party copies an example's tests too: they reach adaptkit only through
    ``adaptkit.api`` and the contract kits (``adaptkit.testing``), like the example's code."""
    import ast

    bad = []
    for path in sorted(REPO.glob("examples/*/tests/*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = (
                [node.module or ""]
                if isinstance(node, ast.ImportFrom)
                else [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else []
            )
            for name in names:
                if name.split(".")[0] == "adaptkit" and not name.startswith(
                    ("adaptkit.api", "adaptkit.testing")
                ):
                    bad.append(f"{path.relative_to(REPO)}:{node.lineno} imports {name}")
    assert not bad, "\n".join(bad)
