"""Exports that would be silently wrong are refused before any work: two exporters picked at
once, two --lora-inputs adapters whose file names collide (before any graph is built), and a
parity tolerance that disables the check."""

import pytest
import torch

from adaptkit import save_adapter
from tests.helpers.models import tiny_llama


@pytest.fixture
def setup(tmp_path):
    from adaptkit import nn as lora

    tiny_llama().save_pretrained(tmp_path / "base")
    model = tiny_llama()
    lora.attach(model, lora.LoraSettings(targets=["q_proj"], rank=2, alpha=2))
    with torch.no_grad():
        for layer in lora.lora_layers(model).values():
            layer.lora_B.normal_()
    save_adapter(lora.extract(model), tmp_path / "a.safetensors")
    for name in ("skill a", "skill_a"):
        (tmp_path / f"{name.replace(' ', '-')}.yaml").write_text(f"adapter: a.safetensors\nname: {name}\n")
    return tmp_path


@pytest.mark.parametrize(
    ("picks", "words"),
    [
        (["--merged", "--onnx"], "--merged and --onnx"),
        (["--onnx", "--merged"], "--merged and --onnx"),
        (["--merged", "--exporter", "onnx"], "--merged and --exporter onnx"),
    ],
)
def test_two_exporters_are_refused_not_the_last_one_taken(setup, run_cli, picks, words):
    code, out, err = run_cli(
        "export", *picks, "--model", setup / "base", "-a", setup / "a.safetensors", "-o", setup / "out"
    )
    assert code == 2 and not out and not (setup / "out").exists()
    assert err == f"error: {words} each pick an exporter; an export has one (give one of them)\n"


def test_lora_inputs_adapter_file_names_must_stay_distinct(setup, run_cli):
    code, _, err = run_cli(
        "export", "--onnx", "--lora-inputs", "--model", setup / "base",
        "-a", setup / "skill-a.yaml", "-a", setup / "skill_a.yaml", "-o", setup / "out",
    )  # fmt: skip
    assert code == 2 and not (setup / "out").exists()
    assert "adapters 'skill a' and 'skill_a' would both be written to 'skill_a.onnx_adapter'" in err


@pytest.mark.parametrize(
    ("atol", "words"),
    [
        ("nan", "must be a finite number"),
        ("inf", "must be a finite number"),
        ("-1", "must be a number > 0 and <= 1"),
        ("0", "must be a number > 0 and <= 1"),
        ("1e308", "must be a number > 0 and <= 1"),  # finite, and would pass anything
        ("tight", "must be a number > 0 and <= 1"),
    ],
)
def test_parity_tolerance_must_be_positive_finite_and_bounded(setup, run_cli, atol, words):
    code, _, err = run_cli(
        "export", "--onnx", "--model", setup / "base", "-a", setup / "a.safetensors", "-o", setup / "out",
        "--atol", atol,
    )  # fmt: skip
    assert code == 2 and f"error: --atol: {words}, got '{atol}'" in err and not (setup / "out").exists()


def _two_names_for_one_tensor(tmp_path, model_type):
    from safetensors.torch import save_file

    from adaptkit import Adapter, LoraPair

    folder = tmp_path / f"m-{model_type}"
    folder.mkdir()
    (folder / "config.json").write_text(f'{{"model_type": "{model_type}"}}')
    save_file({"model.layers.0.q.weight": torch.zeros(8, 6)}, folder / "model.safetensors")
    g = torch.Generator().manual_seed(0)
    pair = LoraPair(torch.randn(2, 6, generator=g), torch.randn(8, 2, generator=g), alpha=2.0)
    adapter = Adapter({"model.layers.0.q": pair, "x.model.layers.0.q": pair})
    return folder, save_adapter(adapter, tmp_path / f"two-{model_type}.safetensors")


def test_two_targets_naming_one_tensor_are_refused_not_half_merged(tmp_path, run_cli):
    # A model type transformers does not know: names are matched as stored or without their
    # first component, so both targets land on one tensor.
    folder, adapter = _two_names_for_one_tensor(tmp_path, "made-up")
    code, _, err = run_cli("export", "--merged", "--model", folder, "-a", adapter, "-o", tmp_path / "out")
    assert code == 2 and not (tmp_path / "out").exists()
    assert "resolves to model.layers.0.q.weight, as model.layers.0.q does: ambiguous targets" in err


def test_integer_target_weights_are_refused(tmp_path, run_cli):
    from safetensors.torch import save_file

    from adaptkit import Adapter, LoraPair

    folder = tmp_path / "int8"
    folder.mkdir()
    (folder / "config.json").write_text('{"model_type": "made-up"}')
    save_file({"layer.q.weight": torch.zeros(8, 6, dtype=torch.int8)}, folder / "model.safetensors")
    adapter = Adapter({"layer.q": LoraPair(torch.ones(2, 6), torch.ones(8, 2), alpha=2.0)})
    path = save_adapter(adapter, tmp_path / "a8.safetensors")
    code, _, err = run_cli("export", "--merged", "--model", folder, "-a", path, "-o", tmp_path / "out")
    assert code == 2 and "layer.q.weight is I8, not a float weight" in err and not (tmp_path / "out").exists()
