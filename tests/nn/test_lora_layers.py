"""LoRA layers: targeting, frozen base, bake/unbake round trip, extract/load, PEFT parity."""

import pytest
import torch

from adaptkit import load_adapter, save_adapter
from adaptkit import nn as lora
from adaptkit.errors import AdaptkitError
from tests.helpers.models import tiny_gpt2, tiny_llama, tokens


def randomise_b(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in lora.lora_layers(model).values():
            layer.lora_B.copy_(torch.randn(layer.lora_B.shape, generator=g) * 0.5)


def test_target_selection():
    model = tiny_llama()
    assert lora.select_targets(model, ["q_proj", "v_proj"]) == [
        f"model.layers.{i}.self_attn.{p}" for i in range(2) for p in ("q_proj", "v_proj")
    ]
    names = lora.select_targets(model, "all-linear")
    assert len(names) == 2 * 7 and "lm_head" not in names
    assert lora.select_targets(model, r"re:model\.layers\.1\.mlp\..*") == [
        "model.layers.1.mlp.gate_proj",
        "model.layers.1.mlp.up_proj",
        "model.layers.1.mlp.down_proj",
    ]
    assert "model.layers.0.mlp.down_proj" not in lora.select_targets(
        model, "all-linear", exclude=["down_proj"]
    )
    with pytest.raises(
        AdaptkitError, match=r"no linear layer matches targets \['qq'\]; linear layers include"
    ):
        lora.select_targets(model, ["qq"])
    with pytest.raises(AdaptkitError, match=r"'model\.embed_tokens' is a Embedding"):
        lora.select_targets(model, ["embed_tokens"])


def test_attach_freezes_base_and_starts_as_identity():
    model = tiny_llama()
    ids = tokens()
    before = model(ids).logits
    names = lora.attach(model, lora.LoraSettings(targets="all-linear", rank=4, alpha=8))
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(n.endswith(("lora_A", "lora_B")) for n in trainable)
    assert len(trainable) == 2 * len(names)
    torch.testing.assert_close(model(ids).logits, before, rtol=0, atol=0)  # B = 0
    with pytest.raises(AdaptkitError, match="already has LoRA layers"):
        lora.attach(model)


@pytest.mark.parametrize("make", [tiny_llama, tiny_gpt2], ids=["llama", "gpt2-conv1d"])
def test_bake_unbake_round_trip(make):
    model = make()
    base_state = {k: v.clone() for k, v in model.state_dict().items()}
    ids = tokens()
    base_logits = model(ids).logits
    lora.attach(model, lora.LoraSettings(rank=4, alpha=16, rslora=True))
    randomise_b(model)
    with torch.no_grad():
        unbaked = model(ids).logits
        lora.bake(model)
        baked = model(ids).logits
    torch.testing.assert_close(baked, unbaked, atol=1e-4, rtol=1e-4)
    assert float((baked - base_logits).abs().max()) > 1e-2, "the adapter must change the output"
    with pytest.raises(AdaptkitError, match="already baked"):
        lora.bake(model)
    lora.unbake(model)
    lora.detach(model)
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, base_state[key], atol=1e-6, rtol=0)


def test_detach_with_bake_first_bakes_the_update():
    model = tiny_llama()
    ids = tokens()
    lora.attach(model, lora.LoraSettings(targets=["q_proj", "o_proj"], rank=2, alpha=2))
    randomise_b(model)
    with torch.no_grad():
        want = model(ids).logits
    lora.detach(model, bake_first=True)
    assert not lora.lora_layers(model)
    torch.testing.assert_close(model(ids).logits, want, atol=1e-4, rtol=1e-4)


def test_extract_save_load_gives_the_same_logits(tmp_path):
    model = tiny_llama()
    lora.attach(model, lora.LoraSettings(targets=["q_proj", "v_proj", "down_proj"], rank=3, alpha=5))
    randomise_b(model)
    ids = tokens()
    with torch.no_grad():
        want = model(ids).logits
    path = save_adapter(lora.extract(model, base_name="tiny"), tmp_path / "a.safetensors")
    fresh = tiny_llama()
    lora.load(fresh, load_adapter(path))
    with torch.no_grad():
        torch.testing.assert_close(fresh(ids).logits, want, atol=1e-6, rtol=1e-6)
    assert not any(p.requires_grad for p in fresh.parameters())
    again = tiny_llama()
    lora.load(again, load_adapter(path), trainable=True)
    assert {n.rsplit(".", 1)[-1] for n, p in again.named_parameters() if p.requires_grad} == {
        "lora_A",
        "lora_B",
    }


def test_loaded_explicit_scale_adapter_matches_merge():
    from adaptkit import WeightedAdapter
    from adaptkit.combine import combine
    from adaptkit.nn.baking import bake_adapter

    model = tiny_llama()
    lora.attach(model, lora.LoraSettings(targets=["q_proj"], rank=2, alpha=3))
    randomise_b(model)
    a = lora.extract(model)
    combined = combine([WeightedAdapter(a, -0.7, "a")], "cat").adapter  # explicit scale folded in
    ids = tokens()
    fresh, merged = tiny_llama(), tiny_llama()
    lora.load(fresh, combined)
    bake_adapter(merged, combined)
    with torch.no_grad():
        torch.testing.assert_close(fresh(ids).logits, merged(ids).logits, atol=1e-5, rtol=1e-5)


def test_bf16_lora_parameters():
    model = tiny_llama()
    lora.attach(model, lora.LoraSettings(rank=4, dtype="bf16"))
    layer = next(iter(lora.lora_layers(model).values()))
    assert layer.lora_A.dtype == torch.bfloat16
    randomise_b(model)
    out = model(tokens()).logits
    assert out.dtype == torch.float32 and torch.isfinite(out).all()
    adapter = lora.extract(model)
    assert next(iter(adapter.targets.values())).A.dtype == torch.bfloat16


def test_trained_adapter_loads_in_peft_with_the_same_logits(tmp_path):
    from peft import PeftModel

    from adaptkit_peft.format import PeftFormat

    model = tiny_llama()
    lora.attach(model, lora.LoraSettings(targets="all-linear", rank=4, alpha=8, rslora=True))
    randomise_b(model)
    ids = tokens()
    with torch.no_grad():
        want = model(ids).logits
    out = PeftFormat().write(lora.extract(model), tmp_path / "peft")
    peft_model = PeftModel.from_pretrained(tiny_llama(), out).eval()
    with torch.no_grad():
        torch.testing.assert_close(peft_model(ids).logits, want, atol=1e-5, rtol=1e-5)
        assert float((want - tiny_llama()(ids).logits).abs().max()) > 1e-2


def test_load_rejects_missing_targets_and_bad_shapes():
    from adaptkit import Adapter, LoraPair

    bad = Adapter(
        {
            "model.layers.9.self_attn.q_proj": LoraPair(torch.ones(1, 32), torch.ones(32, 1), alpha=1.0),
            "model.layers.0.self_attn.q_proj": LoraPair(torch.ones(1, 16), torch.ones(32, 1), alpha=1.0),
        }
    )
    with pytest.raises(AdaptkitError) as info:
        lora.load(tiny_llama(), bad)
    text = str(info.value)
    assert "targets not in the model: model.layers.9.self_attn.q_proj" in text
    assert "adapter is 32×16 (out×in) but the model's layer is 32×32" in text
