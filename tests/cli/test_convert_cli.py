"""`adaptkit convert` and PEFT directories through inspect/validate/combine."""

import json

import torch

from adaptkit import load_adapter, load_spec
from tests.helpers.models import tiny_llama


def _peft_dir(tmp_path):
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    model = get_peft_model(
        tiny_llama(),
        LoraConfig(
            r=4,
            lora_alpha=8,
            use_rslora=True,
            target_modules=["q_proj", "v_proj"],
            init_lora_weights=False,
        ),
    )
    model.save_pretrained(tmp_path / "peft")
    return tmp_path / "peft"


def test_convert_both_ways(run_cli, tmp_path):
    src = _peft_dir(tmp_path)
    code, out, err = run_cli("convert", src, "-o", tmp_path / "a.safetensors", "--to", "adaptkit", "--json")
    assert code == 0, err
    info = json.loads(out)
    assert (info["from"], info["to"], info["targets"]) == ("peft", "adaptkit", 4)
    native = load_adapter(tmp_path / "a.safetensors")
    assert {p.scaling for p in native.targets.values()} == {"alpha/sqrt(r)"}
    code, out, err = run_cli("convert", tmp_path / "a.safetensors", "-o", tmp_path / "back", "--to", "peft")
    assert code == 0, err
    back = load_spec(tmp_path / "back")
    for name, pair in native.targets.items():
        assert torch.equal(back.targets[name].delta(torch.float64), pair.delta(torch.float64))


def test_convert_errors(run_cli, tmp_path):
    src = _peft_dir(tmp_path)
    code, _, err = run_cli("convert", src, "-o", src, "--to", "peft", "--force")
    assert code == 2 and "is an input" in err
    (tmp_path / "exists.safetensors").write_bytes(b"x")
    code, _, err = run_cli("convert", src, "-o", tmp_path / "exists.safetensors", "--to", "adaptkit")
    assert code == 2 and "output exists" in err
    assert (tmp_path / "exists.safetensors").read_bytes() == b"x"
    code, _, err = run_cli("convert", src, "-o", tmp_path / "x", "--to", "gguf")
    assert code == 2 and "unknown format 'gguf'; valid: adaptkit, peft" in err


def test_inspect_validate_and_combine_accept_peft_dirs(run_cli, tmp_path):
    src = _peft_dir(tmp_path)
    code, out, _ = run_cli("inspect", src, "--json")
    info = json.loads(out)
    assert code == 0 and info["format"] == "peft" and info["totals"]["targets"] == 4
    assert info["targets"][0]["scale"] == 8 / 2  # alpha / sqrt(4)
    code, out, _ = run_cli("validate", src)
    assert code == 0 and "adapter (peft)" in out
    code, _, err = run_cli("combine", src, src, "-w", "1,1", "-o", tmp_path / "twice", "--to", "peft")
    assert code == 0, err
    twice, once = load_spec(tmp_path / "twice"), load_spec(src)
    for name, pair in once.targets.items():
        ref = 2 * pair.delta(torch.float64)
        assert float((twice.targets[name].delta(torch.float64) - ref).norm() / ref.norm()) < 1e-6
    code, _, err = run_cli("combine", src, src, "-o", src / "inside.safetensors")
    assert code == 2 and "lies inside an input" in err
