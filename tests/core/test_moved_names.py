"""No compatibility shims before the first release: the old import paths are gone, and no core
module is named ``merge*`` (``merge`` is not a word in core; see docs/architecture.md)."""

import importlib

import pytest

from tests.helpers import REPO


@pytest.mark.parametrize(
    "old", ["adaptkit.merge", "adaptkit.merging", "adaptkit.hookspecs", "adaptkit.contracts"]
)
def test_old_top_level_modules_are_gone(old):
    with pytest.raises(ModuleNotFoundError):
        importlib.import_module(old)


@pytest.mark.parametrize("name", ["attach", "extract", "load", "merge", "LoraLinear", "LoraSettings"])
def test_the_lora_plugin_exports_its_backend_only(name):
    lora_plugin = importlib.import_module("adaptkit_lora")
    assert not hasattr(lora_plugin, name)
    assert lora_plugin.__all__ == ["LoraBackend"]


def test_no_core_module_is_named_merge():
    named = sorted(str(p.relative_to(REPO)) for p in (REPO / "adaptkit").rglob("merg*.py"))
    assert not named, named


def test_nn_bakes_and_never_merges():
    """``bake`` is W + ΔW; ``merge`` is no name in adaptkit.nn (the strategy API keeps it)."""
    from adaptkit import nn as lora
    from adaptkit.nn import inject, layers

    for owner in (lora, inject, layers.LoraLinear):
        assert not [n for n in dir(owner) if "merge" in n.lower()], owner
    assert callable(lora.bake) and callable(lora.unbake) and callable(layers.LoraLinear.bake)
