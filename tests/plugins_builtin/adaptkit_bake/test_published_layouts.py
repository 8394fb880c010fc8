"""`export --merged` on layouts that published adapters meet: old `fan_in_fan_out` configs on
nn.Linear models, and VLM / hybrid checkpoints whose tensor names differ from module paths.

Each case is checked against PEFT: `PeftModel.from_pretrained(...).merge_and_unload()` then
`save_pretrained`, tensor by tensor.
"""

import json

import pytest
import torch
from safetensors.torch import load_file

from tests.helpers.models import tiny_llama


def _peft_adapter(model, folder, targets, **config):
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(1)
    peft = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=targets, **config))
    with torch.no_grad():  # B starts at zero: give every factor values so the merge is visible
        for name, param in peft.named_parameters():
            if "lora_" in name:
                param.normal_(0, 0.1)
    peft.save_pretrained(folder)
    return folder


def _peft_merged(cls, base_dir, adapter_dir, out):
    from peft import PeftModel

    model = PeftModel.from_pretrained(cls.from_pretrained(base_dir), adapter_dir)
    model.merge_and_unload().save_pretrained(out)
    return load_file(out / "model.safetensors")


def _export(run_cli, base_dir, adapter_dir, out):
    code, _, err = run_cli("export", "--merged", "--model", base_dir, "-a", adapter_dir, "-o", out)
    assert code == 0, err
    return load_file(out / "model.safetensors")


def _assert_same_tensors(ours, peft, base, *, changed_at_least):
    assert set(ours) == set(peft), set(ours) ^ set(peft)
    changed = 0
    for name, want in peft.items():
        got = ours[name]
        assert got.dtype == want.dtype and got.shape == want.shape, name
        scale = float(want.float().abs().max()) or 1.0
        assert float((got.float() - want.float()).abs().max()) <= 1e-6 * scale, name
        changed += not torch.equal(got, base[name])
    assert changed >= changed_at_least, changed


def test_fan_in_fan_out_flag_on_square_linear_targets_merges_as_peft(tmp_path, run_cli):
    """Old configs say fan_in_fan_out: true for nn.Linear models; PEFT ignores it there."""
    from transformers import LlamaForCausalLM

    base_dir = tmp_path / "base"
    tiny_llama().save_pretrained(base_dir)
    adapter_dir = _peft_adapter(tiny_llama(), tmp_path / "adapter", ["q_proj", "o_proj"])
    config = json.loads((adapter_dir / "adapter_config.json").read_text())
    config["fan_in_fan_out"] = True  # as a ChatGLM-era config carries it
    (adapter_dir / "adapter_config.json").write_text(json.dumps(config))

    with pytest.warns(UserWarning, match="fan_in_fan_out"):
        peft = _peft_merged(LlamaForCausalLM, base_dir, adapter_dir, tmp_path / "peft")
    base = load_file(base_dir / "model.safetensors")
    ours = _export(run_cli, base_dir, adapter_dir, tmp_path / "ours")
    _assert_same_tensors(ours, peft, base, changed_at_least=4)

    # Trusting the flag would add ΔWᵀ: a square target would still "fit", silently wrong.
    name = "model.layers.0.self_attn.q_proj.weight"
    delta = peft[name] - base[name]
    transposed = base[name] + delta.T
    assert float((transposed - peft[name]).norm() / delta.norm()) > 0.5


#: The text model of each: 2 layers of width 64 (4 heads of 16), a vocabulary of 300.
TEXT = dict(hidden_size=64, intermediate_size=128, num_attention_heads=4, vocab_size=300)


def _qwen2_5_vl():
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    mrope = {"type": "mrope", "mrope_section": [2, 2, 4]}
    return Qwen2_5_VLForConditionalGeneration, Qwen2_5_VLConfig(
        text_config=dict(TEXT, num_hidden_layers=2, num_key_value_heads=2, rope_scaling=mrope),
        vision_config=dict(depth=1, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=64),
        bos_token_id=1, eos_token_id=2, image_token_id=290, video_token_id=291, vision_start_token_id=292,
    )  # fmt: skip


def _paligemma():
    from transformers import PaliGemmaConfig, PaliGemmaForConditionalGeneration

    text = dict(TEXT, model_type="gemma", num_hidden_layers=2, num_key_value_heads=1, head_dim=16)
    vision = dict(
        hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, image_size=28,
        patch_size=14, projection_dim=64,
    )  # fmt: skip
    return PaliGemmaForConditionalGeneration, PaliGemmaConfig(
        text_config=text, vision_config=vision, image_token_index=299, projection_dim=64
    )


def _nemotron_h():
    from transformers import NemotronHConfig, NemotronHForCausalLM

    return NemotronHForCausalLM, NemotronHConfig(
        **TEXT, num_key_value_heads=2, head_dim=16, layers_block_type=["mamba", "attention", "mlp"],
        ssm_state_size=16, mamba_num_heads=4, mamba_head_dim=16, n_groups=1, chunk_size=16,
        use_mamba_kernels=False,
    )  # fmt: skip


def _build(configure):
    """The model class and a seeded random model of one of the configurations above."""
    cls, config = configure()
    torch.manual_seed(0)
    return cls, cls(config)


@pytest.mark.parametrize(
    ("configure", "targets"),
    [
        (_qwen2_5_vl, ["q_proj", "v_proj", "down_proj"]),
        (_paligemma, ["q_proj", "v_proj", "down_proj"]),
        (_nemotron_h, ["q_proj", "v_proj", "in_proj", "down_proj"]),
    ],
    ids=["qwen2.5-vl", "paligemma", "nemotron-h"],
)
def test_vlm_and_hybrid_checkpoints_merge_as_peft(configure, targets, tmp_path, run_cli):
    cls, model = _build(configure)
    base_dir = tmp_path / "base"
    model.save_pretrained(base_dir)
    base = load_file(base_dir / "model.safetensors")
    # Module paths differ from the checkpoint's tensor names: that is the case under test.
    modules = {n for n, _ in model.named_modules()}
    names = [n for n in modules if n.endswith(f".{targets[0]}")]
    assert names and not any(f"{n}.weight" in base for n in names), names[:2]

    _, fresh = _build(configure)
    adapter_dir = _peft_adapter(fresh, tmp_path / "adapter", targets)
    peft = _peft_merged(cls, base_dir, adapter_dir, tmp_path / "peft")
    ours = _export(run_cli, base_dir, adapter_dir, tmp_path / "ours")
    _assert_same_tensors(ours, peft, base, changed_at_least=4)
