"""Recipes that try to write outside their folder, with a canary that must stay untouched."""

import os

import pytest

from adaptkit import save_adapter
from tests.helpers.adapters import make_adapter


@pytest.fixture
def setup(tmp_path, monkeypatch):
    home = tmp_path / "recipes"
    home.mkdir()
    save_adapter(make_adapter(), home / "a.safetensors")
    outside = tmp_path / "outside"
    outside.mkdir()
    canary = outside / "canary.safetensors"
    canary.write_bytes(b"do not touch")
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    return home, outside, canary


@pytest.mark.parametrize(
    "output",
    [
        "../outside/canary.safetensors",  # relative escape
        "{outside}/canary.safetensors",  # absolute path elsewhere
        "link/canary.safetensors",  # through a symlink pointing outside
        "~/canary.safetensors",  # home expansion is never done
        "file:///tmp/canary.safetensors",  # URLs are not paths
    ],
)
def test_recipe_output_cannot_escape(run_cli, setup, output):
    home, outside, canary = setup
    os.symlink(outside, home / "link")
    recipe = home / "r.yaml"
    recipe.write_text(f"adapters: [a.safetensors]\noutput: '{output.format(outside=outside)}'\n")
    code, _, err = run_cli("combine", recipe, "--force")
    assert code == 2 and err.startswith("error: ")
    assert canary.read_bytes() == b"do not touch"
    assert sorted(p.name for p in outside.iterdir()) == ["canary.safetensors"]


def test_explicit_flags_lift_the_containment(run_cli, setup):
    home, outside, canary = setup
    recipe = home / "r.yaml"
    recipe.write_text("adapters: [a.safetensors]\noutput: ../outside/new.safetensors\n")
    code, _, err = run_cli("combine", recipe, "--allow-outside")
    assert code == 0, err
    assert (outside / "new.safetensors").exists() and canary.read_bytes() == b"do not touch"


def test_error_about_a_non_adapter_never_echoes_its_content(run_cli, tmp_path):
    secret = tmp_path / "secret.safetensors"
    secret.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00TOPSECRET-API-KEY" + b"\x00" * 8)
    code, _, err = run_cli("inspect", secret)
    assert code == 2 and "TOPSECRET" not in err
    yaml = tmp_path / "x.yaml"
    yaml.write_text("adapter: [TOPSECRET\n")
    code, _, err = run_cli("validate", yaml)
    assert code == 2 and "TOPSECRET" not in err


@pytest.mark.parametrize(
    ("pattern", "refused"),
    [
        ("((a+))+", False),  # minutes under Python's re; the bounded engine decides at once
        (".*" * 14 + "X", False),
        ("(.*){1,32000}[bc]", True),  # still too slow: refused by the time limit, named
    ],
)
def test_hostile_rank_patterns_cost_bounded_time(tmp_path, pattern, refused):
    import json
    import time

    from peft import LoraConfig, get_peft_model

    from adaptkit import load_spec
    from adaptkit.errors import AdaptkitError
    from tests.helpers.models import tiny_llama

    model = get_peft_model(tiny_llama(), LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj"]))
    model.save_pretrained(tmp_path / "p")
    config = json.loads((tmp_path / "p" / "adapter_config.json").read_text())
    config["rank_pattern"] = {pattern: 4}
    (tmp_path / "p" / "adapter_config.json").write_text(json.dumps(config))
    started = time.perf_counter()
    if refused:
        with pytest.raises(AdaptkitError, match=r"takes longer than 0\.25 s to match") as info:
            load_spec(tmp_path / "p")
        assert "adapter_config.json" in str(info.value) and "rank_pattern" in str(info.value)
    else:
        assert load_spec(tmp_path / "p").targets
    assert time.perf_counter() - started < 5
