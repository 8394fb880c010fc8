"""LoRA variants PEFT users train, read from PEFT's own files and checked against PEFT's
*unmerged* model: embedding LoRA, LoRA biases and trained base biases, trainable tokens, DoRA.
Each must survive PEFT → native → PEFT bit for bit, bake and export exactly, and combine as
docs/format.md says (exactly, or refused with the reason)."""

import pytest
import torch
from safetensors.torch import load_file

from adaptkit import WeightedAdapter, load_spec
from adaptkit import nn as lora
from adaptkit.combine import combine
from adaptkit.nn.baking import bake_adapter
from tests.helpers.models import tiny_llama
from tests.helpers.peft_parity import assert_export_matches_peft, make_published, outputs, peft_outputs


def _ids():
    return {"input_ids": torch.randint(0, 128, (2, 9), generator=torch.Generator().manual_seed(2))}


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("llama") / "base"
    tiny_llama().save_pretrained(folder)
    return folder


def _round_trips_bit_for_bit(adapter_dir, tmp_path, run_cli):
    """PEFT → native → PEFT keeps every tensor and PEFT loads the result to the same outputs."""
    native = tmp_path / "native.safetensors"
    code, _, err = run_cli("convert", adapter_dir, "--to", "adaptkit", "-o", native)
    assert code == 0, err
    code, _, err = run_cli("convert", native, "--to", "peft", "-o", tmp_path / "back")
    assert code == 0, err
    original = load_file(adapter_dir / "adapter_model.safetensors")
    back = load_file(tmp_path / "back" / "adapter_model.safetensors")
    assert set(back) == set(original)
    assert all(torch.equal(back[k], original[k]) for k in original)
    return tmp_path / "back"


def _in_memory_matches(base_fn, adapter_dir, want):
    """Baked into a live model, and attached unmerged, the adapter computes PEFT's outputs."""
    adapter = load_spec(adapter_dir)
    model = base_fn()
    bake_adapter(model, adapter)
    assert float((outputs(model, _ids()) - want).abs().max()) < 1e-5
    model = base_fn()
    lora.load(model, adapter)
    assert float((outputs(model, _ids()) - want).abs().max()) < 1e-5


# --- embedding LoRA --------------------------------------------------------------------------


def test_embedding_lora_is_a_first_class_target(llama_dir, tmp_path, run_cli):
    from peft import PeftModel
    from transformers import LlamaForCausalLM

    adapter_dir = make_published(
        tiny_llama(), tmp_path / "emb", r=4, lora_alpha=8, init_lora_weights=False,
        target_modules=["embed_tokens", "q_proj"],
    )  # fmt: skip
    adapter = load_spec(adapter_dir)
    pair = adapter.targets["model.embed_tokens"]
    assert pair.kind == "embedding" and (pair.out_features, pair.in_features) == (128, 32)
    # PEFT's orientation: its ΔE (num_embeddings × dim) is ours.
    peft = PeftModel.from_pretrained(LlamaForCausalLM.from_pretrained(llama_dir), adapter_dir)
    want_delta = peft.base_model.model.model.embed_tokens.get_delta_weight("default").double()
    assert float((pair.delta(torch.float64) - want_delta).norm() / want_delta.norm()) < 1e-6  # PEFT's is fp32

    assert_export_matches_peft(run_cli, LlamaForCausalLM, llama_dir, adapter_dir, tmp_path / "merged", _ids())
    want, _ = peft_outputs(LlamaForCausalLM, llama_dir, adapter_dir, _ids())
    _in_memory_matches(tiny_llama, adapter_dir, want)
    back = _round_trips_bit_for_bit(adapter_dir, tmp_path, run_cli)
    got, _ = peft_outputs(LlamaForCausalLM, llama_dir, back, _ids())
    assert float((got - want).abs().max()) < 1e-6

    # Every strategy sees s·B@A in the table's layout: linear is exact, svd truncates it.
    other_dir = make_published(
        tiny_llama(), tmp_path / "emb2", seed=2, r=2, lora_alpha=4, init_lora_weights=False,
        target_modules=["embed_tokens"],
    )  # fmt: skip
    other = load_spec(other_dir)
    exact = combine([WeightedAdapter(adapter, 0.5), WeightedAdapter(other, -1.0)], "linear").adapter
    got_delta = exact.targets["model.embed_tokens"].delta(torch.float64)
    ref = 0.5 * pair.delta(torch.float64) - other.targets["model.embed_tokens"].delta(torch.float64)
    assert exact.targets["model.embed_tokens"].kind == "embedding"
    assert float((got_delta - ref).norm() / ref.norm()) < 1e-6
    svd = combine([WeightedAdapter(adapter), WeightedAdapter(other)], "svd", rank=2).adapter
    assert (
        svd.targets["model.embed_tokens"].kind == "embedding" and svd.targets["model.embed_tokens"].rank == 2
    )


# --- LoRA bias and trained base biases ----------------------------------------------------------


def qwen2(seed=0, tie=False):
    """A tiny Qwen2: its q/k/v projections have biases (Llama's have none)."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(seed)
    config = Qwen2Config(
        vocab_size=128, hidden_size=32, intermediate_size=48, num_hidden_layers=1, num_attention_heads=4,
        num_key_value_heads=2, tie_word_embeddings=tie,
    )  # fmt: skip
    return Qwen2ForCausalLM(config).eval()


@pytest.fixture(scope="module")
def qwen2_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("qwen2") / "base"
    qwen2().save_pretrained(folder)
    return folder


BIASES = {
    "lora_bias": dict(lora_bias=True),
    "bias_all": dict(bias="all"),
    "bias_lora_only": dict(bias="lora_only"),
    "both": dict(bias="lora_only", lora_bias=True),
}


@pytest.mark.parametrize("case", sorted(BIASES))
def test_biases_bake_export_and_round_trip_exactly(case, qwen2_dir, tmp_path, run_cli):
    from transformers import Qwen2ForCausalLM

    kw = dict(r=4, lora_alpha=8, init_lora_weights=False, target_modules=["q_proj", "v_proj"])
    adapter_dir = make_published(qwen2(), tmp_path / case, **kw, **BIASES[case])
    adapter = load_spec(adapter_dir)
    assert (adapter.targets["model.layers.0.self_attn.q_proj"].bias is not None) == (
        "lora_bias" in str(BIASES[case])
    )
    trained = {m for m, e in adapter.saved.items() if e.origin == "bias"}
    want_trained = {"all": {"q_proj", "k_proj", "v_proj"}, "lora_only": {"q_proj", "v_proj"}}.get(
        BIASES[case].get("bias"), set()
    )
    assert {m.rsplit(".", 1)[1] for m in trained} == want_trained

    assert_export_matches_peft(run_cli, Qwen2ForCausalLM, qwen2_dir, adapter_dir, tmp_path / "merged", _ids())
    want, _ = peft_outputs(Qwen2ForCausalLM, qwen2_dir, adapter_dir, _ids())
    _in_memory_matches(qwen2, adapter_dir, want)
    back = _round_trips_bit_for_bit(adapter_dir, tmp_path, run_cli)
    got, _ = peft_outputs(Qwen2ForCausalLM, qwen2_dir, back, _ids())
    assert float((got - want).abs().max()) < 1e-6


def test_lora_biases_combine_exactly_under_linear_strategies(tmp_path):
    from adaptkit.errors import AdaptkitError

    kw = dict(r=4, lora_alpha=8, init_lora_weights=False, target_modules=["q_proj", "v_proj"], lora_bias=True)
    a = load_spec(make_published(qwen2(), tmp_path / "a", seed=1, **kw))
    b = load_spec(make_published(qwen2(), tmp_path / "b", seed=2, **dict(kw, target_modules=["q_proj"])))
    inputs = [WeightedAdapter(a, 0.5, "a"), WeightedAdapter(b, -1.0, "b")]
    # The exact sum: bake one, then the other, each at its weight.
    reference = qwen2()
    bake_adapter(reference, a, weight=0.5)
    bake_adapter(reference, b, weight=-1.0)
    want = outputs(reference, _ids())
    assert float((want - outputs(qwen2(), _ids())).abs().max()) > 1e-3
    for strategy in ("linear", "cat"):
        model = qwen2()
        bake_adapter(model, combine(inputs, strategy).adapter)
        assert float((outputs(model, _ids()) - want).abs().max()) < 1e-5, strategy
    # svd truncates the matrix to its default rank; the bias it sums exactly all the same.
    q = "model.layers.0.self_attn.q_proj"
    exact, svd = (combine(inputs, s).adapter.targets[q] for s in ("linear", "svd"))
    assert torch.allclose(svd.delta_bias(), exact.delta_bias(), atol=1e-6)
    with pytest.raises(AdaptkitError, match="has a LoRA bias here; strategy 'slerp' blends non-linearly"):
        combine(inputs, "slerp")


def test_lora_bias_on_a_layer_without_bias_is_refused_on_export(llama_dir, tmp_path, run_cli):
    adapter_dir = make_published(
        tiny_llama(),
        tmp_path / "a",
        r=4,
        lora_alpha=8,
        init_lora_weights=False,
        target_modules=["q_proj"],
        lora_bias=True,
    )
    code, _, err = run_cli(
        "export", "--merged", "--model", llama_dir, "-a", adapter_dir, "-o", tmp_path / "o"
    )
    assert code == 2 and not (tmp_path / "o").exists()
    assert "q_proj: the adapter has a LoRA bias (lora_bias) but the base layer has no bias" in err


# --- trainable tokens ----------------------------------------------------------------------------


@pytest.mark.parametrize("tie", [False, True], ids=["untied", "tied"])
def test_trainable_tokens_replace_rows_exactly(tie, tmp_path, run_cli):
    import json

    from transformers import Qwen2ForCausalLM

    from adaptkit.errors import AdaptkitError

    base_dir = tmp_path / "base"
    qwen2(tie=tie).save_pretrained(base_dir)
    kw = dict(r=4, lora_alpha=8, init_lora_weights=False, target_modules=["q_proj"])
    adapter_dir = make_published(qwen2(tie=tie), tmp_path / "tt", trainable_token_indices=[3, 5, 120], **kw)
    adapter = load_spec(adapter_dir)
    assert adapter.tokens["model.embed_tokens"].indices == [3, 5, 120]

    # The ids fed include the trained tokens, so both the rows and (when tied) the head's matter.
    ids = {"input_ids": torch.tensor([[3, 9, 5, 120, 7, 3], [120, 1, 2, 5, 5, 4]])}
    report = assert_export_matches_peft(run_cli, Qwen2ForCausalLM, base_dir, adapter_dir, tmp_path / "m", ids)
    assert "untied" not in report  # PEFT's token rows follow the tie
    assert json.loads((tmp_path / "m" / "config.json").read_text())["tie_word_embeddings"] is tie
    want, _ = peft_outputs(Qwen2ForCausalLM, base_dir, adapter_dir, ids)
    for build in (lambda: bake_adapter, lambda: lora.load):
        model = qwen2(tie=tie)
        build()(model, adapter)
        assert float((outputs(model, ids) - want).abs().max()) < 1e-5
    if tie:
        return
    _round_trips_bit_for_bit(adapter_dir, tmp_path, run_cli)

    # combine passes agreeing rows through and refuses rows that disagree.
    again = combine([WeightedAdapter(adapter, 1.0, "a"), WeightedAdapter(adapter, 1.0, "b")], "cat").adapter
    assert torch.equal(again.tokens["model.embed_tokens"].values, adapter.tokens["model.embed_tokens"].values)
    other = load_spec(
        make_published(qwen2(), tmp_path / "tt2", seed=3, trainable_token_indices=[3, 5, 120], **kw)
    )
    with pytest.raises(
        AdaptkitError, match="both train token rows of this table, with different token ids or values"
    ):
        combine([WeightedAdapter(adapter, 1.0, "a"), WeightedAdapter(other, 1.0, "b")], "linear")
    with pytest.raises(AdaptkitError, match=r"saves trainable token rows of model\.embed_tokens whole"):
        combine([WeightedAdapter(adapter, 0.5, "a")], "linear")


# --- DoRA ----------------------------------------------------------------------------------------


def _gpt2_model():
    from tests.helpers.models import tiny_gpt2

    return tiny_gpt2()


DORA = {  # base builder, its class name, LoRA settings
    "llama": (tiny_llama, "LlamaForCausalLM", dict(target_modules=["q_proj", "v_proj", "down_proj"])),
    "llama-embedding": (tiny_llama, "LlamaForCausalLM", dict(target_modules=["embed_tokens", "o_proj"])),
    "gpt2-conv1d": (
        _gpt2_model,
        "GPT2LMHeadModel",
        dict(target_modules=["c_attn", "c_proj"], fan_in_fan_out=True),
    ),
}


@pytest.mark.parametrize("case", sorted(DORA))
def test_dora_bakes_exports_and_round_trips_exactly(case, tmp_path, run_cli):
    import transformers

    build, cls_name, settings = DORA[case]
    cls = getattr(transformers, cls_name)
    build().save_pretrained(tmp_path / "base")
    adapter_dir = make_published(
        build(), tmp_path / "dora", r=4, lora_alpha=8, init_lora_weights=False, use_dora=True, **settings
    )
    adapter = load_spec(adapter_dir)
    assert all(p.magnitude is not None for p in adapter.targets.values())
    code, out, err = run_cli("inspect", adapter_dir, "--json")
    assert code == 0 and all(t["dora"] for t in __import__("json").loads(out)["targets"]), err

    assert_export_matches_peft(run_cli, cls, tmp_path / "base", adapter_dir, tmp_path / "merged", _ids())
    want, _ = peft_outputs(cls, tmp_path / "base", adapter_dir, _ids())
    _in_memory_matches(build, adapter_dir, want)
    model = build()  # attached, baked, unbaked, baked again: bake and unbake are each other's inverse
    lora.load(model, adapter)
    lora.bake(model)
    lora.unbake(model)
    lora.detach(model, bake_first=True)
    assert float((outputs(model, _ids()) - want).abs().max()) < 1e-5
    back = _round_trips_bit_for_bit(adapter_dir, tmp_path, run_cli)
    got, _ = peft_outputs(cls, tmp_path / "base", back, _ids())
    assert float((got - want).abs().max()) < 1e-6


def test_dora_combines_only_alone_on_its_targets(tmp_path):
    from adaptkit.errors import AdaptkitError

    kw = dict(r=4, lora_alpha=8, init_lora_weights=False)
    dora = load_spec(
        make_published(tiny_llama(), tmp_path / "d", use_dora=True, target_modules=["q_proj"], **kw)
    )
    other = load_spec(make_published(tiny_llama(), tmp_path / "o", seed=2, target_modules=["v_proj"], **kw))
    same = load_spec(make_published(tiny_llama(), tmp_path / "s", seed=3, target_modules=["q_proj"], **kw))
    # Other targets beside it: exact, the DoRA targets pass through as they are.
    both = combine([WeightedAdapter(dora, 1.0, "d"), WeightedAdapter(other, 0.5, "o")], "linear").adapter
    q = "model.layers.0.self_attn.q_proj"
    assert torch.equal(both.targets[q].magnitude, dora.targets[q].magnitude)
    reference = tiny_llama()
    bake_adapter(reference, dora)
    bake_adapter(reference, other, weight=0.5)
    model = tiny_llama()
    bake_adapter(model, both)
    assert float((outputs(model, _ids()) - outputs(reference, _ids())).abs().max()) < 1e-5
    refusals = [
        ([WeightedAdapter(dora, 1.0, "d"), WeightedAdapter(same, 1.0, "s")], {}, "'d' and 's' both adapt it"),
        ([WeightedAdapter(dora, 0.5, "d")], {}, "'d' has weight 0.5"),
        ([WeightedAdapter(dora, -1.0, "d")], {}, "'d' has weight -1"),
        ([WeightedAdapter(dora, 1.0, "d")], {"rank": 2}, "--rank would truncate it"),
    ]
    for inputs, extra, why in refusals:
        with pytest.raises(AdaptkitError, match=r"a DoRA update .* has no exact factored sum") as info:
            combine(inputs, "linear", **extra)
        assert why in str(info.value) and q in str(info.value)


def test_dora_onnx_export_matches_peft(llama_dir, tmp_path, run_cli):
    import json

    import numpy as np
    import onnxruntime as ort
    from transformers import LlamaForCausalLM

    adapter_dir = make_published(
        tiny_llama(), tmp_path / "dora", r=4, lora_alpha=8, init_lora_weights=False, use_dora=True,
        target_modules=["q_proj", "v_proj", "down_proj"],
    )  # fmt: skip
    code, out, err = run_cli(
        "export", "--onnx", "--model", llama_dir, "-a", adapter_dir, "-o", tmp_path / "onnx", "--json"
    )
    assert code == 0, err
    assert max(p["max_abs"] for p in json.loads(out)["parity"]) < 1e-4
    want, base = peft_outputs(LlamaForCausalLM, llama_dir, adapter_dir, _ids())
    sess = ort.InferenceSession(str(tmp_path / "onnx" / "model.onnx"), providers=["CPUExecutionProvider"])
    ids = _ids()["input_ids"].numpy()
    got = sess.run(["logits"], {"input_ids": ids, "attention_mask": np.ones_like(ids)})[0]
    assert np.abs(got - want.numpy()).max() < 1e-4
    assert float((want - base).abs().max()) > 1e-2


# --- init_lora_weights ---------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["pissa", "olora"])
def test_converted_pissa_and_olora_adapters_are_plain_lora(mode, llama_dir, tmp_path, run_cli):
    """Saved with `path_initial_model_for_weight_conversion`, the adapter applies to the original
    base and reproduces the fine-tuned model; saved without, it is refused with the reason."""
    import warnings

    from peft import LoraConfig, get_peft_model
    from transformers import LlamaForCausalLM

    from adaptkit.errors import AdaptkitError
    from tests.helpers.peft_parity import train_like

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = get_peft_model(
            tiny_llama(),
            LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=mode),
        )
        model.peft_config["default"].init_lora_weights = True  # PEFT's recipe: save the start as plain LoRA
        model.save_pretrained(tmp_path / "init")
        model.peft_config["default"].init_lora_weights = mode
        train_like(model, scale=0.05)
        model.save_pretrained(tmp_path / "raw")  # without conversion: only valid on the rewritten base
        model.save_pretrained(
            tmp_path / "converted", path_initial_model_for_weight_conversion=str(tmp_path / "init")
        )
    tuned = outputs(model, _ids())  # the fine-tuned model itself, on its residual base

    assert_export_matches_peft(
        run_cli, LlamaForCausalLM, llama_dir, tmp_path / "converted", tmp_path / "merged", _ids()
    )
    got = outputs(LlamaForCausalLM.from_pretrained(tmp_path / "merged"), _ids())
    assert float((got - tuned).abs().max()) < 1e-4
    with pytest.raises(
        AdaptkitError, match=f"init_lora_weights='{mode}' rewrote the base model's weights"
    ) as info:
        load_spec(tmp_path / "raw")
    assert "path_initial_model_for_weight_conversion" in str(info.value)


@pytest.mark.parametrize("mode", ["gaussian", "orthogonal", "eva"])
def test_init_modes_that_leave_the_base_alone_are_plain_lora(mode, llama_dir, tmp_path, run_cli):
    from transformers import LlamaForCausalLM

    adapter_dir = make_published(
        tiny_llama(), tmp_path / mode, r=4, lora_alpha=8, target_modules=["q_proj"], init_lora_weights=mode
    )
    assert_export_matches_peft(run_cli, LlamaForCausalLM, llama_dir, adapter_dir, tmp_path / "merged", _ids())
