"""`adaptkit combine` end to end on the example YAMLs, plus its error contract."""

import json
import shutil
from pathlib import Path

import pytest
import torch

from adaptkit import load_adapter, save_adapter
from tests.helpers import REPO
from tests.helpers.adapters import make_adapter


@pytest.fixture
def ex(tmp_path, monkeypatch):
    """A copy of examples/ (so outputs land in tmp) as the working directory."""
    dst = tmp_path / "examples"
    shutil.copytree(
        REPO / "examples",
        dst,
        ignore=shutil.ignore_patterns("combined.safetensors", "third_party_plugin"),
    )
    monkeypatch.chdir(dst)
    return dst


def listing(folder: Path):
    return sorted((p.relative_to(folder), p.stat().st_mtime_ns) for p in folder.rglob("*"))


def test_combine_example_yamls(run_cli, ex):
    code, out, err = run_cli("combine", "a.yaml", "b.yaml", "-o", "out.safetensors")
    assert code == 0, err
    assert "wrote out.safetensors" in out
    merged = load_adapter(ex / "out.safetensors")
    a = load_adapter(ex / "adapters/skill_a.safetensors")
    b = load_adapter(ex / "adapters/skill_b.safetensors")
    for name, pair in merged.targets.items():
        ref = a.targets[name].delta(torch.float64) + 0.5 * b.targets[name].delta(torch.float64)
        assert float((pair.delta(torch.float64) - ref).norm() / ref.norm()) < 1e-6
    code, out, _ = run_cli("inspect", "out.safetensors", "--json")
    info = json.loads(out)
    assert code == 0 and info["totals"]["targets"] == 8
    prov = merged.provenance
    assert [i["name"] for i in prov["inputs"]] == ["skill-a", "skill-b"]
    assert all(len(i["sha256"]) == 64 for i in prov["inputs"])


def test_recipe_and_flag_overrides(run_cli, ex):
    code, out, err = run_cli("combine", "recipe.yaml", "--json")
    assert code == 0, err
    report = json.loads(out)
    assert report["strategy"] == "ties" and report["rank"] == "8"
    assert report["params"]["variant"] == "mergekit" and report["params"]["density"] == 0.5
    assert Path(report["output"]).resolve() == ex / "combined.safetensors"
    assert all(t["rank"] == 8 and 0 <= t["relative_error"] < 1 for t in report["targets"])

    # Flags override; the recipe's params belong to its own strategy and are dropped.
    code, out, err = run_cli(
        "combine", "recipe.yaml", "-s", "linear", "-r", "auto:0.9", "-o", "flags.safetensors", "--json"
    )
    assert code == 0, err
    report = json.loads(out)
    assert (report["strategy"], report["rank"], report["params"]) == ("linear", "auto:0.9", {})
    assert Path(report["output"]).resolve() == ex / "flags.safetensors"
    code, out, err = run_cli("combine", "recipe.yaml", "-p", "density=0.9", "-o", "d.safetensors", "--json")
    assert code == 0 and json.loads(out)["params"]["density"] == 0.9


def test_weights_override_and_table(run_cli, ex):
    code, out, err = run_cli(
        "combine", "adapters/skill_a.safetensors", "adapters/skill_b.safetensors",
        "-w", "1,-1", "-r", "4", "-o", "neg.safetensors",
    )  # fmt: skip
    assert code == 0, err
    assert "energy kept" in out and "rel. error" in out
    merged = load_adapter(ex / "neg.safetensors")
    assert {p.rank for p in merged.targets.values()} == {4}


def test_dense_param_typed_from_cli(run_cli, ex):
    code, out, err = run_cli(
        "combine",
        "a.yaml",
        "b.yaml",
        "-s",
        "dare_ties",
        "-p",
        "density=0.3",
        "-p",
        "normalize=false",
        "--seed",
        "3",
        "-o",
        "d.safetensors",
        "--json",
    )
    assert code == 0, err
    params = json.loads(out)["params"]
    assert params["density"] == 0.3 and params["normalize"] is False


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["a.yaml", "b.yaml", "-s", "nope", "-o", "x.safetensors"],
            "unknown strategy 'nope'; valid: cat,",
        ),
        (
            ["a.yaml", "b.yaml", "-w", "1,2,3", "-o", "x.safetensors"],
            "--weights has 3 values for 2 adapters",
        ),
        (["a.yaml", "b.yaml", "-w", "1,nan", "-o", "x.safetensors"], "--weights contains nan"),
        (
            ["a.yaml", "b.yaml", "-o", "adapters/skill_a.safetensors", "--force"],
            "an input (",
        ),
        (["a.yaml", "b.yaml", "-o", "adapters/skill_b.safetensors"], "an input ("),
        (["a.yaml", "b.yaml", "-o", "a.yaml"], "is an input"),
        (["a.yaml", "b.yaml"], "no output"),
        (
            ["a.yaml", "b.yaml", "-s", "ties", "-p", "density=2", "-o", "x.safetensors"],
            "params.density: 2 is greater",
        ),
        (["a.yaml", "b.yaml", "-s", "slerp", "-p", "t", "-o", "x.safetensors"], "is not KEY=VALUE"),
        (
            ["recipe.yaml", "a.yaml", "-o", "x.safetensors"],
            "either one recipe YAML or adapter SPECs",
        ),
        (["a.yaml", "b.yaml", "--to", "onnx", "-o", "x.safetensors"], "unknown format 'onnx'"),
        (["a.yaml", "b.yaml", "-r", "auto:7", "-o", "x.safetensors"], "must be a number in (0, 1]"),
        (
            ["a.yaml", "b.yaml", "-s", "cat", "-r", "4", "-o", "x.safetensors"],
            "cat keeps every factor",
        ),
    ],
)
def test_bad_input_one_error_nothing_written(run_cli, ex, args, message):
    before = listing(ex)
    code, _out, err = run_cli("combine", *args)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], err
    assert listing(ex) == before


def test_shape_mismatch_names_target_and_file(run_cli, ex):
    other = make_adapter(shapes={"model.layers.0.self_attn.q_proj": (32, 64, 2)})
    save_adapter(other, ex / "other.safetensors")
    before = listing(ex)
    code, _, err = run_cli("combine", "a.yaml", "other.safetensors", "-o", "x.safetensors")
    assert code == 2 and "model.layers.0.self_attn.q_proj: shape clash" in err
    assert "other.safetensors" in err
    assert listing(ex) == before


def test_recipe_output_cannot_escape(run_cli, ex, tmp_path, monkeypatch):
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    monkeypatch.chdir(outside)
    recipe = ex / "escape.yaml"
    recipe.write_text("adapters: [a.yaml, b.yaml]\noutput: ../../escaped.safetensors\n")
    code, _, err = run_cli("combine", recipe)
    assert code == 2 and "outside the recipe's folder" in err
    assert not (tmp_path.parent / "escaped.safetensors").exists()
    code, _, err = run_cli("combine", recipe, "-o", "here.safetensors")
    assert code == 0, err
    assert (outside / "here.safetensors").exists()


def test_existing_output_survives_failure_and_force_replaces(run_cli, ex):
    target = ex / "out.safetensors"
    target.write_bytes(b"previous")
    code, _, _ = run_cli(
        "combine", "a.yaml", "b.yaml", "-s", "ties", "-p", "density=7", "-o", target, "--force"
    )
    assert code == 2 and target.read_bytes() == b"previous"
    code, _, err = run_cli("combine", "a.yaml", "b.yaml", "-o", target, "--force")
    assert code == 0, err
    assert load_adapter(target).targets
    assert not [p for p in ex.iterdir() if p.name.startswith(".out.safetensors")]
