"""Builtin plugins stand alone: each imports core only (never another plugin), and blocking
one removes exactly what it registers while everything else keeps working."""

import ast
from pathlib import Path

import pytest

from adaptkit.plugins import load_registry
from tests.helpers import REPO
from tests.helpers.adapters import make_adapter

BUILTINS = {p.name for p in (REPO / "plugins").iterdir() if p.is_dir() and p.name.startswith("adaptkit_")}
ENTRY_POINTS = {"native", "strategies", "peft", "lora", "qlora", "bake", "onnx", "gguf"}


def _imported_packages(folder: Path) -> set[str]:
    found = set()
    for file in folder.rglob("*.py"):
        for node in ast.walk(ast.parse(file.read_text())):
            if isinstance(node, ast.Import):
                found |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                found.add(node.module.split(".")[0])
    return found


@pytest.mark.parametrize("plugin", sorted(BUILTINS))
def test_a_builtin_plugin_imports_no_other_plugin(plugin):
    others = (_imported_packages(REPO / "plugins" / plugin) & BUILTINS) - {plugin}
    assert not others, f"{plugin} imports {sorted(others)}"


def test_core_imports_no_plugin():
    assert not (_imported_packages(REPO / "adaptkit") & BUILTINS)


def test_entry_points_are_the_builtins():
    assert {f"adaptkit_{n}" for n in ENTRY_POINTS} == BUILTINS


def _registered(registry):
    return {(kind, name) for kind, table in registry.entries.items() for name in table}


@pytest.mark.parametrize("blocked", sorted(ENTRY_POINTS))
def test_blocking_a_plugin_removes_exactly_what_it_registers(blocked):
    full = load_registry(env={})
    own = {(kind, name) for kind, names in full.registered_by(blocked).items() for name in names}
    assert own, f"{blocked} registers nothing"
    without = load_registry(env={"ADAPTKIT_BLOCK_PLUGINS": blocked})
    assert _registered(without) == _registered(full) - own
    assert all(info.error is None for name, info in without.plugins.items() if name != blocked)


def test_exports_of_several_adapters_work_without_the_strategies_plugin(run_cli, tmp_path, monkeypatch):
    from adaptkit import save_adapter
    from tests.helpers.models import tiny_llama

    tiny_llama().save_pretrained(tmp_path / "model")
    shapes = {"model.layers.0.self_attn.q_proj": (32, 32, 4)}
    save_adapter(make_adapter(0, shapes=shapes), tmp_path / "a.safetensors")
    save_adapter(make_adapter(1, shapes=shapes), tmp_path / "b.safetensors")
    monkeypatch.setenv("ADAPTKIT_BLOCK_PLUGINS", "strategies")
    from adaptkit.plugins import reset_registry

    reset_registry()
    code, _, err = run_cli(
        *("export", "--merged", "--model", tmp_path / "model"),
        *("-a", tmp_path / "a.safetensors", "-a", tmp_path / "b.safetensors", "-o", tmp_path / "out"),
    )
    assert code == 0, err
    code, _, err = run_cli("combine", tmp_path / "a.safetensors", "-o", tmp_path / "c.safetensors")
    assert code == 2 and "unknown strategy 'linear'" in err
