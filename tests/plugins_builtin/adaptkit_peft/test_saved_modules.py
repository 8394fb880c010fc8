"""Saved modules (PEFT `modules_to_save`, and the base weights PEFT saves for `lm_head` targets):
kept losslessly, round-tripped to PEFT, written into merged and ONNX exports as PEFT's merge does,
refused in combine only when two inputs disagree; and the refusals that remain name the feature."""

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from adaptkit import Adapter, LoraPair, SavedModule, load_adapter, load_spec, save_adapter
from adaptkit.errors import AdaptkitError
from tests.helpers.models import tiny_llama


def _seq_cls(seed=0):
    from transformers import LlamaForSequenceClassification

    return tiny_llama(seed, cls=LlamaForSequenceClassification, num_labels=3, pad_token_id=0)


def _train_like(peft_model, seed=1):
    """Give every trainable tensor (LoRA factors and saved modules) values of its own."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, p in peft_model.named_parameters():
            if p.requires_grad:
                p.add_(torch.randn(p.shape, generator=g) * 0.1)


@pytest.fixture
def classifier(tmp_path):
    """A sequence-classification adapter (task_type SEQ_CLS saves the `score` head whole)."""
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(
        _seq_cls(), LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj"], task_type="SEQ_CLS")
    )
    _train_like(model)
    model.save_pretrained(tmp_path / "cls")
    return tmp_path / "cls"


def test_classification_adapter_keeps_its_head_and_round_trips_to_peft(classifier, tmp_path, run_cli):
    from peft import PeftModel

    adapter = load_spec(classifier)
    assert set(adapter.saved) == {"score"} and adapter.saved["score"].origin == "modules_to_save"
    original = load_file(classifier / "adapter_model.safetensors")
    assert torch.equal(adapter.saved["score"].params["weight"], original["base_model.model.score.weight"])

    # native -> PEFT: every tensor bit-identical, modules_to_save listed.
    code, _, err = run_cli("convert", classifier, "--to", "adaptkit", "-o", tmp_path / "cls.safetensors")
    assert code == 0, err
    native = load_adapter(tmp_path / "cls.safetensors")
    assert torch.equal(native.saved["score"].params["weight"], adapter.saved["score"].params["weight"])
    code, _, err = run_cli("convert", tmp_path / "cls.safetensors", "--to", "peft", "-o", tmp_path / "back")
    assert code == 0, err
    back = load_file(tmp_path / "back" / "adapter_model.safetensors")
    assert set(back) == set(original)
    assert all(torch.equal(back[k], original[k]) for k in original)
    assert json.loads((tmp_path / "back" / "adapter_config.json").read_text())["modules_to_save"] == ["score"]

    # PEFT loads the written folder and classifies exactly as the original adapter.
    ids = torch.randint(1, 128, (2, 9), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        want = PeftModel.from_pretrained(_seq_cls(), classifier).eval()(input_ids=ids).logits
        got = PeftModel.from_pretrained(_seq_cls(), tmp_path / "back").eval()(input_ids=ids).logits
        base = _seq_cls()(input_ids=ids).logits
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    assert float((want - base).abs().max()) > 1e-2  # the head and the update changed the output


def _merged_like_peft(run_cli, cls, tmp_path, adapter):
    """``export --merged`` of ``adapter`` onto ``tmp_path/base`` equals PEFT's ``merge_and_unload``
    tensor by tensor; returns our checkpoint's tensors."""
    from peft import PeftModel

    peft = PeftModel.from_pretrained(cls.from_pretrained(tmp_path / "base"), adapter)
    peft.merge_and_unload().save_pretrained(tmp_path / "peft")
    out = tmp_path / "ours"
    code, _, err = run_cli("export", "--merged", "--model", tmp_path / "base", "-a", adapter, "-o", out)
    assert code == 0, err
    ours, want = load_file(out / "model.safetensors"), load_file(tmp_path / "peft" / "model.safetensors")
    assert set(ours) == set(want)
    for name, tensor in want.items():
        torch.testing.assert_close(ours[name], tensor, rtol=0, atol=1e-6, msg=name)
    return ours


def test_classification_adapter_exports_merged_with_its_head(classifier, tmp_path, run_cli):
    from transformers import LlamaForSequenceClassification

    _seq_cls().save_pretrained(tmp_path / "base")
    ours = _merged_like_peft(run_cli, LlamaForSequenceClassification, tmp_path, classifier)
    base = load_file(tmp_path / "base" / "model.safetensors")
    assert not torch.equal(ours["score.weight"], base["score.weight"])
    report = json.loads((tmp_path / "ours" / "export-report.json").read_text())
    assert report["saved_tensors_written"] == ["score.weight"]


def test_saved_head_missing_from_the_base_checkpoint_is_refused(classifier, tmp_path, run_cli):
    tiny_llama().save_pretrained(tmp_path / "causal")  # a causal LM: no `score` head to replace
    code, _, err = run_cli(
        "export", "--merged", "--model", tmp_path / "causal", "-a", classifier, "-o", tmp_path / "o"
    )
    assert code == 2 and not (tmp_path / "o").exists()
    assert (
        "score.weight: the adapter saves this module in full, but the base checkpoint has no such tensor"
        in err
    )


@pytest.fixture
def lm_head_adapter(tmp_path):
    """`lm_head` in target_modules: PEFT saves `lm_head.base_layer.weight` beside the factors."""
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(tiny_llama(), LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "lm_head"]))
    _train_like(model)
    with pytest.warns(UserWarning, match="save_embedding_layers"):
        model.save_pretrained(tmp_path / "head")
    keys = load_file(tmp_path / "head" / "adapter_model.safetensors")
    assert "base_model.model.lm_head.base_layer.weight" in keys
    return tmp_path / "head"


def test_lm_head_target_converts_and_exports_like_peft(lm_head_adapter, tmp_path, run_cli):
    from transformers import LlamaForCausalLM

    adapter = load_spec(lm_head_adapter)
    assert adapter.saved["lm_head"].origin == "base_layer" and "lm_head" in adapter.targets
    code, _, err = run_cli("convert", lm_head_adapter, "--to", "peft", "-o", tmp_path / "back")
    assert code == 0, err
    original = load_file(lm_head_adapter / "adapter_model.safetensors")
    back = load_file(tmp_path / "back" / "adapter_model.safetensors")
    assert set(back) == set(original) and all(torch.equal(back[k], original[k]) for k in original)

    tiny_llama().save_pretrained(tmp_path / "base")
    _merged_like_peft(run_cli, LlamaForCausalLM, tmp_path, lm_head_adapter)


def test_onnx_export_applies_saved_modules(lm_head_adapter, tmp_path, run_cli):
    tiny_llama().save_pretrained(tmp_path / "base")
    code, _, err = run_cli(
        "export", "--onnx", "--model", tmp_path / "base", "-a", lm_head_adapter, "-o", tmp_path / "onnx"
    )
    assert code == 0, err
    report = json.loads((tmp_path / "onnx" / "export-report.json").read_text())
    assert max(p["max_abs"] for p in report["parity"]) < 1e-4
    code, _, err = run_cli(
        "export",
        "--onnx",
        "--lora-inputs",
        "--model",
        tmp_path / "base",
        "-a",
        lm_head_adapter,
        "-o",
        tmp_path / "x",
    )
    assert code == 2 and "saves modules in full" in err and "--onnx (merged) or --merged" in err


def _with_head(value):
    g = torch.Generator().manual_seed(0)
    pair = LoraPair(torch.randn(2, 16, generator=g), torch.randn(8, 2, generator=g), alpha=2.0)
    return Adapter(targets={"m.q": pair}, saved={"head": SavedModule({"weight": torch.full((3, 8), value)})})


def test_combine_keeps_agreeing_saved_modules_and_refuses_disagreeing_ones(tmp_path, run_cli):
    for name, value in (("a", 1.0), ("b", 1.0), ("c", 2.0)):
        save_adapter(_with_head(value), tmp_path / f"{name}.safetensors")
    code, _, err = run_cli(
        "combine", tmp_path / "a.safetensors", tmp_path / "b.safetensors", "-o", tmp_path / "ab.safetensors"
    )
    assert code == 0, err
    ab = load_adapter(tmp_path / "ab.safetensors")
    assert torch.equal(ab.saved["head"].params["weight"], torch.full((3, 8), 1.0))
    code, _, err = run_cli(
        "combine", tmp_path / "a.safetensors", tmp_path / "c.safetensors", "-o", tmp_path / "ac.safetensors"
    )
    assert code == 2 and not (tmp_path / "ac.safetensors").exists()
    assert "head: adapters 'a' and 'c' both save this module whole, with different tensors" in err
    # At weight 0 an adapter has no effect at all, its saved modules included.
    code, _, err = run_cli(
        "combine",
        tmp_path / "a.safetensors",
        tmp_path / "c.safetensors",
        "--weights",
        "1,0",
        "-o",
        tmp_path / "a0.safetensors",
    )
    assert code == 0, err
    assert torch.equal(
        load_adapter(tmp_path / "a0.safetensors").saved["head"].params["weight"], torch.full((3, 8), 1.0)
    )


def _peft_dir(tmp_path, extra_tensors, **config):
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(tiny_llama(), LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj"], **config))
    model.save_pretrained(tmp_path / "p")
    weights = tmp_path / "p" / "adapter_model.safetensors"
    save_file({**load_file(weights), **extra_tensors}, weights)
    return tmp_path / "p"


@pytest.mark.parametrize(
    ("key", "message"),
    [
        (
            "base_model.model.classifier.bias",
            "base_model.model.classifier.bias: a full tensor of 'classifier' (a saved classification head), "
            "but adapter_config.json does not list it in modules_to_save",
        ),
        ("base_model.model.model.embed_tokens.weight", "(saved input embeddings)"),
        ("base_model.model.model.norm.weight", "(a whole saved module)"),
        ("model.layers.0.q_proj.lora_A.weight", "matches no LoRA key pattern (PEFT keys start with"),
    ],
)
def test_unlisted_full_tensors_are_refused_naming_the_feature(tmp_path, key, message):
    path = _peft_dir(tmp_path, {key: torch.zeros(4)})
    with pytest.raises(AdaptkitError) as info:
        load_spec(path)
    assert message in str(info.value)


def test_problems_are_listed_in_sorted_order(tmp_path):
    extra = {f"base_model.model.extra{i}.weight": torch.zeros(2) for i in (3, 1, 2)}
    path = _peft_dir(tmp_path, extra)
    with pytest.raises(AdaptkitError) as info:
        load_spec(path)
    problems = info.value.problems
    assert len(problems) == 3 and problems == sorted(problems)
    assert str(info.value).index("extra1") < str(info.value).index("extra2") < str(info.value).index("extra3")
