"""Exports that would be silently wrong are refused before any work: two --lora-inputs adapters
whose file names collide (before any graph is built), and a parity tolerance that disables the
check."""

import pytest
import torch

from adaptkit import save_adapter
from tests.models import tiny_llama


@pytest.fixture
def setup(tmp_path):
    import adaptkit_lora as lora

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


def test_lora_inputs_adapter_file_names_must_stay_distinct(setup, run_cli):
    code, _, err = run_cli(
        "export", "--onnx", "--lora-inputs", "--model", setup / "base",
        "-a", setup / "skill-a.yaml", "-a", setup / "skill_a.yaml", "-o", setup / "out",
    )  # fmt: skip
    assert code == 2 and not (setup / "out").exists()
    assert "adapters 'skill a' and 'skill_a' would both be written to 'skill_a.onnx_adapter'" in err


@pytest.mark.parametrize("atol", ["nan", "inf", "-1", "0"])
def test_parity_tolerance_must_be_positive_and_finite(setup, run_cli, atol):
    code, _, err = run_cli(
        "export", "--onnx", "--model", setup / "base", "-a", setup / "a.safetensors", "-o", setup / "out",
        "--atol", atol,
    )  # fmt: skip
    assert code == 2 and "--atol must be a positive finite number" in err and not (setup / "out").exists()
