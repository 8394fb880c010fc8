"""LoRA on mixture-of-experts parameters (PEFT's `target_parameters`), on a tiny random model of
each expert layout transformers ships: `(E, out, in)` stored unfused per expert (Qwen3-MoE,
Mixtral), `(E, in, out)` with `is_transposed` (gpt-oss), `(E, in, out)` without it (Llama 4, where
PEFT adds ΔW[e] as `(E, out, in)`). Read, baked and exported as PEFT computes them unmerged,
round-tripped bit for bit, and combined exactly expert by expert."""

import pytest
import torch
from safetensors.torch import load_file

from adaptkit import WeightedAdapter, load_spec
from adaptkit.combine import combine
from adaptkit.nn.baking import bake_adapter
from tests.helpers.peft_parity import assert_export_matches_peft, make_published, outputs, peft_outputs

BASE = dict(vocab_size=128, hidden_size=32, intermediate_size=48, num_hidden_layers=1, num_attention_heads=4)


def _qwen3_moe():
    import transformers as tf

    cfg = tf.Qwen3MoeConfig(**BASE, num_key_value_heads=2, moe_intermediate_size=16, num_experts=4,
                            num_experts_per_tok=2, head_dim=8)  # fmt: skip
    return tf.Qwen3MoeForCausalLM, cfg, "mlp.experts"


def _mixtral():
    import transformers as tf

    return (
        tf.MixtralForCausalLM,
        tf.MixtralConfig(**BASE, num_key_value_heads=2, num_local_experts=4),
        "mlp.experts",
    )


def _gpt_oss():
    import transformers as tf

    cfg = tf.GptOssConfig(
        **BASE, num_key_value_heads=2, num_local_experts=4, num_experts_per_tok=2, head_dim=8
    )
    return tf.GptOssForCausalLM, cfg, "mlp.experts"


def _llama4():
    import transformers as tf

    cfg = tf.Llama4TextConfig(**BASE, num_key_value_heads=2, intermediate_size_mlp=48, num_local_experts=4,
                              num_experts_per_tok=1, head_dim=8, interleave_moe_layer_step=1)  # fmt: skip
    return tf.Llama4ForCausalLM, cfg, "feed_forward.experts"


LAYOUTS = {"qwen3-moe": _qwen3_moe, "mixtral": _mixtral, "gpt-oss": _gpt_oss, "llama4": _llama4}


def _build(layout, seed=0):
    cls, config, experts = LAYOUTS[layout]()
    torch.manual_seed(seed)
    return cls, cls(config).eval(), experts


def _ids():
    return {"input_ids": torch.randint(0, 128, (2, 9), generator=torch.Generator().manual_seed(2))}


def _adapter(layout, folder, seed=1, params=("gate_up_proj", "down_proj")):
    _, model, experts = _build(layout)
    return make_published(
        model, folder, seed=seed, r=2, lora_alpha=4, init_lora_weights=False, lora_dropout=0.0,
        target_modules=["q_proj"], target_parameters=[f"{experts}.{p}" for p in params],
    )  # fmt: skip


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_expert_lora_reads_bakes_and_exports_like_peft(layout, tmp_path, run_cli):
    cls, base, experts = _build(layout)
    base.save_pretrained(tmp_path / "base")
    adapter_dir = _adapter(layout, tmp_path / "adapter")
    adapter = load_spec(adapter_dir)
    gate_up = adapter.targets[f"model.layers.0.{experts}.gate_up_proj"]
    assert gate_up.kind == "experts" and gate_up.experts == 4 and gate_up.rank == 2

    report = assert_export_matches_peft(
        run_cli, cls, tmp_path / "base", adapter_dir, tmp_path / "merged", _ids()
    )
    assert report["targets_baked"] == 3  # q_proj and the two experts parameters
    merged, stored = (
        load_file(tmp_path / "merged" / "model.safetensors"),
        load_file(tmp_path / "base" / "model.safetensors"),
    )
    experts_changed = [k for k in stored if ".experts." in k and not torch.equal(merged[k], stored[k])]
    assert experts_changed and all("bias" not in k for k in experts_changed)
    want, _ = peft_outputs(cls, tmp_path / "base", adapter_dir, _ids())
    _, model, _ = _build(layout)
    bake_adapter(model, adapter)
    assert float((outputs(model, _ids()) - want).abs().max()) < 1e-5

    native = tmp_path / "native.safetensors"
    assert run_cli("convert", adapter_dir, "--to", "adaptkit", "-o", native)[0] == 0
    code, _, err = run_cli("convert", native, "--to", "peft", "-o", tmp_path / "back")
    assert code == 0, err
    original = load_file(adapter_dir / "adapter_model.safetensors")
    back = load_file(tmp_path / "back" / "adapter_model.safetensors")
    assert set(back) == set(original) and all(torch.equal(back[k], original[k]) for k in original)
    got, _ = peft_outputs(cls, tmp_path / "base", tmp_path / "back", _ids())
    assert float((got - want).abs().max()) < 1e-6


def test_expert_loras_combine_exactly_per_expert(tmp_path):
    a = load_spec(_adapter("qwen3-moe", tmp_path / "a", seed=1))
    b = load_spec(_adapter("qwen3-moe", tmp_path / "b", seed=2, params=("down_proj",)))
    reference = _build("qwen3-moe")[1]
    bake_adapter(reference, a, weight=0.5)
    bake_adapter(reference, b, weight=-1.0)
    want = outputs(reference, _ids())
    for strategy in ("linear", "cat"):
        merged = combine([WeightedAdapter(a, 0.5, "a"), WeightedAdapter(b, -1.0, "b")], strategy).adapter
        down = merged.targets["model.layers.0.mlp.experts.down_proj"]
        assert down.kind == "experts" and down.experts == 4
        model = _build("qwen3-moe")[1]
        bake_adapter(model, merged)
        assert float((outputs(model, _ids()) - want).abs().max()) < 1e-5, strategy
