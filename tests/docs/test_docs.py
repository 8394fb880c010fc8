"""Docs that cannot rot: generated references are current, every hook/strategy/key is
documented, and the Python snippets in the docs run."""

import json
import re
import shutil
import subprocess
import sys

import pytest

from adaptkit.plugins import hookspecs, load_registry
from tests.helpers import REPO

DOCS = REPO / "docs"


def test_cli_reference_is_current():
    from adaptkit.cli.reference import render

    assert (DOCS / "cli.md").read_text() == render(), (
        "docs/cli.md is stale: run `python -m adaptkit.cli.reference > docs/cli.md`"
    )


def _schema_keys(schema, prefix=""):
    keys = []
    for name, sub in (schema.get("properties") or {}).items():
        keys.append(prefix + name)
        keys += _schema_keys(sub, prefix + name + ".")
    return keys


def test_format_doc_covers_the_manifest_schema():
    schema = json.loads((REPO / "schemas/adapter-manifest.schema.json").read_text())
    text = (DOCS / "format.md").read_text()
    keys = _schema_keys(schema) + [f"targets.*.{k}" for k in schema["$defs"]["target"]["properties"]]
    keys = [k for k in keys if not k.startswith(("base_model.", "producer."))]
    for key in keys:
        assert f"`{key}`" in text, f"docs/format.md does not document manifest key {key}"
    for sub in ("base_model", "producer"):
        for k in schema["properties"][sub]["properties"]:
            assert k in text, f"docs/format.md does not mention {sub}.{k}"


def test_every_strategy_and_param_is_documented():
    text = (DOCS / "strategies.md").read_text()
    for reg in load_registry().all("strategy"):
        m = re.search(rf"^## `{re.escape(reg.name)}`\n(.*?)(?=^## |\Z)", text, re.S | re.M)
        assert m, f"docs/strategies.md has no section for {reg.name}"
        for param in reg.obj.params_schema.get("properties", {}):
            assert f"`{param}" in m.group(1), f"{reg.name}: param {param} undocumented"


def test_every_hook_is_documented_with_its_signature():
    text = (DOCS / "plugins.md").read_text()
    for name, fn in vars(hookspecs).items():
        if name.startswith("register_") and callable(fn):
            args = ", ".join(fn.__code__.co_varnames[: fn.__code__.co_argcount])
            assert f"`{name}({args})`" in text, f"docs/plugins.md lacks `{name}({args})`"


def test_plugin_kinds_list_what_the_contracts_require():
    from adaptkit.plugins.contracts import KINDS

    text = (DOCS / "plugins.md").read_text()
    for kind, (hook, _protocol, required) in KINDS.items():
        m = re.search(rf"^- `{hook}\(register\)` — (.*?)(?=^- |^$)", text, re.S | re.M)
        assert m, f"docs/plugins.md has no entry for {hook}"
        entry = m.group(1).split("Optional:")[0]
        for attr in required:
            assert re.search(rf"`{attr}[`(]", entry), f"docs/plugins.md: {kind} must list required `{attr}`"


def _python_blocks(path):
    return re.findall(r"```python\n(.*?)```", path.read_text(), re.S)


@pytest.mark.parametrize("doc", ["README.md", "docs/plugins.md"])
def test_python_snippets_run(doc, tmp_path):
    shutil.copytree(
        REPO / "examples",
        tmp_path / "examples",
        ignore=shutil.ignore_patterns("combined.safetensors"),
    )
    blocks = _python_blocks(REPO / doc)
    assert blocks, f"{doc} has no python snippet"
    script = tmp_path / "snippet.py"
    body = "\n\n".join(blocks)
    if doc == "docs/plugins.md":
        # The plugin-author snippets define a strategy and its test; run the test too.
        body += "\n\nimport pathlib\ntest_average_contract()\ntest_halfrate_contract(pathlib.Path('kit'))\n"
    script.write_text(body)
    res = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-3000:]


def test_example_yamls_validate(run_cli):
    files = sorted((REPO / "examples").glob("*.yaml"))
    assert len(files) >= 3
    code, _out, err = run_cli("validate", *files)
    assert code == 0, err


def test_export_serving_snippets_run(tmp_path, run_cli):
    """The docs/export.md snippets, against real --lora-inputs exports: the generation graph in
    ONNX Runtime GenAI (adapters switched per generator) and the logits-only graph."""
    from tests.helpers.gguf_base import write_base_gguf
    from tests.helpers.models import tiny_llama

    # Two heads of 16: the generation graph's attention kernel takes that head size; a byte-sized
    # vocabulary: the GGUF base's.
    base = tiny_llama(num_attention_heads=2, num_key_value_heads=1, vocab_size=259)
    base.save_pretrained(tmp_path / "base")
    # The llama-cpp-python snippet's files (the base in float32 here: the snippet is what is checked).
    write_base_gguf(tmp_path / "base", tmp_path / "base-q4_k_m.gguf")
    code, _, err = run_cli(
        "export", "--gguf", "--model", tmp_path / "base", "-o", tmp_path / "gguf",
        "-a", REPO / "tests/data/skill_a.yaml",
    )  # fmt: skip
    assert code == 0, err
    for folder, graph in (("multi", "generation"), ("logits-multi", "logits")):
        code, _, err = run_cli(
            "export", "--onnx", "--lora-inputs", "--graph", graph, "--model", tmp_path / "base",
            "-o", tmp_path / folder, "-a", REPO / "tests/data/skill_a.yaml",
            "-a", REPO / "tests/data/skill_b.yaml",
        )  # fmt: skip
        assert code == 0, err
    script = tmp_path / "serve.py"
    script.write_text("\n\n".join(_python_blocks(DOCS / "export.md")))
    res = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-3000:]
    lines = res.stdout.strip().splitlines()
    assert [ln.split()[0] for ln in lines] == ["base", "skill_a", "skill_b", "skill_a", "skill_b"]
    tokens = [ln.split(" ", 1)[1] for ln in lines[:3]]
    assert len(set(tokens)) > 1  # the adapters change what is generated
    assert all(float(ln.split()[1]) > 1e-3 for ln in lines[3:])


def test_every_module_opens_with_a_docstring():
    import ast

    missing = [
        str(p.relative_to(REPO))
        for root in ("adaptkit", "plugins")
        for p in sorted((REPO / root).rglob("*.py"))
        if not ast.get_docstring(ast.parse(p.read_text()))
    ]
    assert not missing, f"modules without an opening docstring: {missing}"


def test_architecture_doc_places_every_module():
    text = (DOCS / "architecture.md").read_text()
    named = set(re.findall(r"`((?:adaptkit|plugins)/[\w/]+(?:\.py)?)`", text))
    assert named, "architecture.md names no files"
    assert not [n for n in named if not (REPO / n).exists()]
    unplaced = [
        str(p.relative_to(REPO / "adaptkit"))
        for p in sorted((REPO / "adaptkit").rglob("*.py"))
        if p.name not in ("__init__.py", "__main__.py", "__about__.py")
        and p.parent.name not in ("cli", "demo", "testing", "training")  # placed as folders
        and p.name not in text
    ]
    assert not unplaced, f"architecture.md does not place {unplaced}"


def test_cited_test_files_exist():
    """A doc that names a test file (``tests/...`` or a bare ``test_*.py``) names one that is there."""
    tests = REPO / "tests"
    names = {p.name for p in tests.rglob("test_*.py")}
    missing = []
    for doc in [REPO / "README.md", tests / "README.md", *sorted(DOCS.glob("*.md"))]:
        for path in re.findall(r"`(tests/[\w./-]+)`", doc.read_text()):
            if not (REPO / path).exists():
                missing.append(f"{doc.name}: {path}")
        for name in re.findall(r"`(test_\w+\.py)`", doc.read_text()):
            if name not in names:
                missing.append(f"{doc.name}: {name}")
    assert not missing, f"docs cite test files that do not exist: {missing}"


def test_tests_mirror_the_code():
    """tests/ has a folder for each subpackage of adaptkit, its builtin-plugin folders are named
    after packages in plugins/, and tests/README.md places every folder."""
    tests = REPO / "tests"
    readme = (tests / "README.md").read_text()
    placed = set(re.findall(r"^\| `([\w/]+)/` \|", readme, re.M))
    folders = {p.name for p in tests.iterdir() if p.is_dir() and p.name != "__pycache__"}
    builtin = {
        p.name for p in (tests / "plugins_builtin").iterdir() if p.is_dir() and p.name != "__pycache__"
    }
    packages = {p.parent.name for p in (REPO / "adaptkit").glob("*/__init__.py")}
    plugins = {p.parent.name for p in (REPO / "plugins").glob("*/__init__.py")}
    assert packages <= folders, f"no tests/ folder for adaptkit/{sorted(packages - folders)}"
    assert builtin <= plugins, f"tests/plugins_builtin/ folders with no plugin: {sorted(builtin - plugins)}"
    want = (folders - {"helpers", "data", "plugins_builtin"}) | {f"plugins_builtin/{b}" for b in builtin}
    assert placed == want, f"tests/README.md places {sorted(placed - want)}, misses {sorted(want - placed)}"
