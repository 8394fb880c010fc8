"""`export --merged` on a tied-embedding base (Qwen2.5-0.5B style: `tie_word_embeddings: true`,
no `lm_head.weight` stored) with adapters that change the head or the embeddings but not both
alike. The export writes what the adapter computes unmerged: the head as its own tensor, the
config untied. PEFT's own merge adds a head update to the shared tensor, which is wrong."""

import json

import pytest
import torch
from safetensors.torch import load_file

from adaptkit import load_spec
from adaptkit import nn as lora
from adaptkit.nn.baking import bake_adapter
from tests.helpers.peft_parity import assert_export_matches_peft, make_published, outputs, peft_outputs

#: Saved modules and LoRA targets that change one side of the tie.
CASES = {
    "saved-embed-and-head": dict(target_modules=["q_proj"], modules_to_save=["embed_tokens", "lm_head"]),
    "saved-head": dict(target_modules=["q_proj"], modules_to_save=["lm_head"]),
    "saved-embed": dict(target_modules=["q_proj"], modules_to_save=["embed_tokens"]),
    "lora-on-head": dict(target_modules=["q_proj", "lm_head"]),
    "lora-on-embed": dict(target_modules=["q_proj", "embed_tokens"]),
}


def tied_qwen2(seed=0):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(seed)
    config = Qwen2Config(
        vocab_size=96, hidden_size=32, intermediate_size=48, num_hidden_layers=1, num_attention_heads=4,
        num_key_value_heads=2, tie_word_embeddings=True,
    )  # fmt: skip
    return Qwen2ForCausalLM(config).eval()


def _ids():
    return {"input_ids": torch.randint(0, 96, (2, 9), generator=torch.Generator().manual_seed(2))}


@pytest.fixture(scope="module")
def tied_base(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tied") / "base"
    tied_qwen2().save_pretrained(folder)
    assert "lm_head.weight" not in load_file(folder / "model.safetensors")
    return folder


@pytest.mark.parametrize("case", sorted(CASES))
def test_tied_head_is_untied_and_exact(case, tied_base, tmp_path, run_cli):
    from transformers import Qwen2ForCausalLM

    adapter = make_published(
        tied_qwen2(), tmp_path / "adapter", r=4, lora_alpha=8, init_lora_weights=False, **CASES[case]
    )
    out = tmp_path / "merged"
    report = assert_export_matches_peft(run_cli, Qwen2ForCausalLM, tied_base, adapter, out, _ids())
    assert report["untied"]["tensors"] == ["lm_head.weight"]
    assert json.loads((out / "config.json").read_text())["tie_word_embeddings"] is False
    merged = load_file(out / "model.safetensors")
    base = load_file(tied_base / "model.safetensors")
    changed_embed = not torch.equal(merged["model.embed_tokens.weight"], base["model.embed_tokens.weight"])
    assert changed_embed == ("embed" in case)  # the side the adapter leaves alone stays the base's
    assert torch.equal(merged["lm_head.weight"], base["model.embed_tokens.weight"]) == (
        case in ("saved-embed", "lora-on-embed")
    )

    # In memory too: baked into a live tied model, or attached unmerged and then baked.
    want, _ = peft_outputs(Qwen2ForCausalLM, tied_base, adapter, _ids())
    model = tied_qwen2()
    bake_adapter(model, load_spec(adapter))
    assert float((outputs(model, _ids()) - want).abs().max()) < 1e-5
    model = tied_qwen2()
    lora.load(model, load_spec(adapter))
    assert float((outputs(model, _ids()) - want).abs().max()) < 1e-5
    lora.detach(model, bake_first=True)
    assert float((outputs(model, _ids()) - want).abs().max()) < 1e-5

    code, out, err = run_cli("inspect", adapter, "--model", tied_base, "--json")
    assert code == 0, err


def test_a_tied_head_stored_beside_its_embeddings_is_untied_in_the_config(tmp_path, run_cli):
    """Some tied checkpoints store `lm_head.weight` anyway; loading ties it again unless the
    config says otherwise, which would tie the adapter's head away."""
    from safetensors.torch import save_file
    from transformers import Qwen2ForCausalLM

    base = tmp_path / "base"
    tied_qwen2().save_pretrained(base)
    tensors = load_file(base / "model.safetensors")
    save_file(
        {**tensors, "lm_head.weight": tensors["model.embed_tokens.weight"].clone()},
        base / "model.safetensors",
        metadata={"format": "pt"},
    )
    adapter = make_published(
        tied_qwen2(), tmp_path / "adapter", r=4, lora_alpha=8, init_lora_weights=False, **CASES["saved-head"]
    )
    report = assert_export_matches_peft(run_cli, Qwen2ForCausalLM, base, adapter, tmp_path / "merged", _ids())
    assert report["untied"]["tensors"] == ["lm_head.weight"]
    assert json.loads((tmp_path / "merged" / "config.json").read_text())["tie_word_embeddings"] is False


def test_peft_merge_of_a_lora_on_a_tied_head_changes_the_embeddings(tied_base, tmp_path):
    """Why the export does not follow PEFT here: `merge_and_unload` adds ΔW to the shared tensor."""
    import warnings

    from peft import PeftModel
    from transformers import Qwen2ForCausalLM

    adapter = make_published(
        tied_qwen2(),
        tmp_path / "adapter",
        r=4,
        lora_alpha=8,
        init_lora_weights=False,
        **CASES["lora-on-head"],
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        peft = PeftModel.from_pretrained(Qwen2ForCausalLM.from_pretrained(tied_base), adapter)
    unmerged = outputs(peft, _ids())
    merged = outputs(peft.merge_and_unload(), _ids())
    assert float((merged - unmerged).abs().max()) > 1e-2
