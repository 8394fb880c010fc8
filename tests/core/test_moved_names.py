"""Names that moved keep working, with a DeprecationWarning that says where they went."""

import importlib
import sys

import pytest


@pytest.mark.parametrize(
    ("module", "name", "new"),
    [
        ("adaptkit_lora", "attach", "adaptkit.nn.inject"),
        ("adaptkit_lora", "merge", "adaptkit.nn.inject"),
        ("adaptkit_lora", "LoraLinear", "adaptkit.nn.layers"),
    ],
)
def test_adaptkit_lora_api_moved_to_adaptkit_nn(module, name, new):
    mod = importlib.import_module(module)
    with pytest.warns(DeprecationWarning, match="import it from adaptkit.nn"):
        obj = getattr(mod, name)
    assert obj is getattr(importlib.import_module(new), name)


@pytest.mark.parametrize(
    ("old", "name", "new", "new_name"),
    [
        ("adaptkit.merge", "merge_adapter", "adaptkit.nn.baking", "bake_adapter"),
        ("adaptkit.merging", "MergeInput", "adaptkit.combine.strategy", "MergeInput"),
        ("adaptkit.hookspecs", "hookimpl", "adaptkit.plugins.hookspecs", "hookimpl"),
        ("adaptkit.contracts", "Backend", "adaptkit.plugins.contracts", "Backend"),
    ],
)
def test_moved_modules_warn_and_reexport(old, name, new, new_name):
    sys.modules.pop(old, None)
    with pytest.warns(DeprecationWarning, match="moved to"):
        mod = importlib.import_module(old)
    assert getattr(mod, name) is getattr(importlib.import_module(new), new_name)


def test_the_core_api_imports_without_warnings(recwarn):
    for name in ("adaptkit.nn", "adaptkit.combine", "adaptkit.plugins", "adaptkit.io.native"):
        importlib.import_module(name)
    from adaptkit import nn as lora

    assert lora.bake is lora.merge and callable(lora.attach)
    assert not [w for w in recwarn if issubclass(w.category, DeprecationWarning)]
