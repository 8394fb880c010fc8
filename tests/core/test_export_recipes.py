"""A recipe SPEC exports what `adaptkit combine RECIPE` writes: one path from a recipe to an
adapter (adaptkit.combine.job), its `tune:` block included."""

import json

import pytest
from safetensors.torch import load_file

from adaptkit import save_adapter
from tests.helpers.adapters import token_records, trained_like_adapter
from tests.helpers.models import tiny_llama


@pytest.fixture
def workspace(tmp_path):
    tiny_llama().save_pretrained(tmp_path / "base")
    save_adapter(trained_like_adapter(1, ("q_proj", "v_proj"), 4), tmp_path / "a.safetensors")
    save_adapter(trained_like_adapter(2, ("q_proj", "o_proj"), 2), tmp_path / "b.safetensors")
    for name, seed in (("one", 0), ("two", 1)):
        lines = "".join(json.dumps({"input_ids": r}) + "\n" for r in token_records(seed))
        (tmp_path / f"{name}.jsonl").write_text(lines)
    (tmp_path / "recipe.yaml").write_text(
        "adapters: [a.safetensors, b.safetensors]\nstrategy: linear\noutput: tuned.safetensors\n"
        "tune:\n  sets: [one.jsonl, two.jsonl]\n  model: base\n  steps: 5\n"
    )
    return tmp_path


def _weights(folder):
    return load_file(folder / "model.safetensors")


def _max_gap(x, y):
    return max(float((x[k].double() - y[k].double()).abs().max()) for k in x)


def test_tuned_recipe_exports_what_combine_writes_not_the_static_sum(workspace, run_cli):
    tmp = workspace
    code, _, err = run_cli("combine", tmp / "recipe.yaml")  # writes tuned.safetensors
    assert code == 0, err
    runs = {
        "recipe": ["-a", tmp / "recipe.yaml"],
        "combined": ["-a", tmp / "tuned.safetensors"],
        "static": ["-a", tmp / "a.safetensors", "-a", tmp / "b.safetensors"],
    }
    for name, specs in runs.items():
        code, _, err = run_cli("export", "--merged", "--model", tmp / "base", *specs, "-o", tmp / name)
        assert code == 0, (name, err)
    recipe, combined, static = (_weights(tmp / n) for n in runs)
    assert set(recipe) == set(combined) == set(static)
    assert _max_gap(recipe, combined) < 1e-6  # the same tuned weights, folded the same way
    assert _max_gap(recipe, static) > 1e-4  # tuning moved them: not the untuned combination
    report = json.loads((tmp / "recipe" / "export-report.json").read_text())
    assert [a["name"] for a in report["adapters"]] == ["recipe"]


def test_the_tuning_model_and_sets_are_inputs_an_export_never_writes_into(workspace, run_cli, monkeypatch):
    import shutil

    import adaptkit.combine.tune

    def load_base(*_a, **_k):
        raise AssertionError("tuning loaded its model before the output was checked")

    monkeypatch.setattr(adaptkit.combine.tune, "load_base", load_base)
    tmp = workspace
    shutil.copytree(tmp / "base", tmp / "other-base")
    code, _, err = run_cli(
        "export", "--merged", "--model", tmp / "other-base", "-a", tmp / "recipe.yaml",
        "-o", tmp / "base" / "inside", "--force",
    )  # fmt: skip
    assert code == 2 and "inside" in err and not (tmp / "base" / "inside").exists(), err


def test_the_export_model_is_vetted_before_a_recipe_tunes(workspace, run_cli, monkeypatch):
    """A bad --model is refused before the recipe's tuning loads anything (the tuning model is
    the recipe's own, and fine)."""
    import adaptkit.combine.tune

    def load_base(*_a, **_k):
        raise AssertionError("the recipe tuned before the export's model was checked")

    monkeypatch.setattr(adaptkit.combine.tune, "load_base", load_base)
    tmp = workspace
    (tmp / "badmodel").mkdir()
    (tmp / "badmodel" / "config.json").write_text('{"model_type": "llama"}')  # no weights
    code, _, err = run_cli(
        "export", "--merged", "--model", tmp / "badmodel", "-a", tmp / "recipe.yaml", "-o", tmp / "out"
    )
    assert code == 2 and err.startswith(f"error: {tmp / 'badmodel'}") and not (tmp / "out").exists(), err
