"""PEFT directories: read and write with PEFT's semantics, verified against the real PEFT."""

import copy
import json
import pickle

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model

from adaptkit import load_spec
from adaptkit.errors import AdaptkitError
from adaptkit.nn.baking import bake_adapter
from adaptkit.plugins import get_registry
from adaptkit_peft.format import PeftFormat
from tests.helpers.models import tiny_gpt2, tiny_llama, tokens

FMT = PeftFormat()


def make_peft(base, tmp_path, name, **cfg):
    """Train-free PEFT adapter with random (non-zero) B, saved by PEFT itself."""
    torch.manual_seed(1)
    model = get_peft_model(copy.deepcopy(base), LoraConfig(init_lora_weights=False, **cfg))
    out = tmp_path / name
    model.save_pretrained(out)
    return out, model


def peft_merged_deltas(peft_model, base):
    """ΔW per module as PEFT merges it: merge_and_unload() weights minus the base weights."""
    merged = copy.deepcopy(peft_model).merge_and_unload()
    base_params = dict(base.named_parameters())
    out = {}
    for name, p in merged.named_parameters():
        if name.endswith(".weight") and not torch.equal(p, base_params[name]):
            out[name.removesuffix(".weight")] = (p - base_params[name]).detach().double()
    return out


def assert_deltas_match(adapter, peft_model, base, conv1d=False):
    deltas = peft_merged_deltas(peft_model, base)
    assert set(deltas) == set(adapter.targets)
    for name, ref in deltas.items():
        got = adapter.targets[name].delta(torch.float64)
        if conv1d:
            got = got.T
        err = float((got - ref).norm() / ref.norm())
        assert err < 2e-6, f"{name}: relative error {err:.2e}"


CASES = {
    "plain": dict(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]),
    "rslora_patterns": dict(
        r=4,
        lora_alpha=6,
        use_rslora=True,
        target_modules=["q_proj", "v_proj", "down_proj"],
        rank_pattern={"v_proj": 2, "layers.1.mlp.down_proj": 8},
        alpha_pattern={"down_proj": 3},
    ),
    "several_ranks": dict(
        r=8, lora_alpha=16, target_modules="all-linear", rank_pattern={"o_proj": 2, "gate_proj": 5}
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_peft_made_adapters_load_with_peft_deltas(tmp_path, case):
    base = tiny_llama()
    path, model = make_peft(base, tmp_path, case, **CASES[case])
    assert FMT.detect(path)
    adapter = load_spec(path)
    assert_deltas_match(adapter, model, base)
    if case == "rslora_patterns":
        pair = adapter.targets["model.layers.1.mlp.down_proj"]
        assert (pair.rank, pair.alpha, pair.scaling) == (8, 3.0, "alpha/sqrt(r)")
        assert adapter.targets["model.layers.0.self_attn.v_proj"].rank == 2


def test_gpt2_conv1d_fan_in_fan_out(tmp_path):
    base = tiny_gpt2()
    path, model = make_peft(
        base,
        tmp_path,
        "gpt2",
        r=4,
        lora_alpha=8,
        fan_in_fan_out=True,
        target_modules=["c_attn", "c_proj"],
    )
    adapter = load_spec(path)
    assert adapter.base_model.fan_in_fan_out is True
    # Linear layout: c_attn's Conv1D weight is (32, 96) = in × out, so ΔW is 96 × 32.
    assert adapter.targets["transformer.h.0.attn.c_attn"].delta().shape == (96, 32)
    assert_deltas_match(adapter, model, base, conv1d=True)
    # Merging through adaptkit gives PEFT's merged model.
    ours = copy.deepcopy(base)
    bake_adapter(ours, adapter)
    ids = tokens()
    ref = copy.deepcopy(model).merge_and_unload()(ids).logits
    torch.testing.assert_close(ours(ids).logits, ref, atol=1e-5, rtol=1e-5)


def _write_and_load_in_peft(adapter, base, tmp_path, name):
    out = FMT.write(adapter, tmp_path / name)
    peft_model = PeftModel.from_pretrained(copy.deepcopy(base), out).eval()
    return out, peft_model


@pytest.mark.parametrize("case", ["plain", "rslora_patterns", "several_ranks"])
def test_adaptkit_written_peft_dirs_give_the_same_logits(tmp_path, case):
    from adaptkit import WeightedAdapter
    from adaptkit.combine import combine

    base = tiny_llama()
    src, _ = make_peft(base, tmp_path, "src", **CASES[case])
    adapter = load_spec(src)
    # Also a combined adapter with explicit scale and mixed ranks.
    other = load_spec(make_peft(base, tmp_path, "other", r=3, lora_alpha=5, target_modules=["q_proj"])[0])
    combined = combine([WeightedAdapter(adapter, 0.7, "a"), WeightedAdapter(other, -1.2, "b")], "cat").adapter
    ids = tokens(3)
    for label, ad in (("same", adapter), ("combined", combined)):
        _, peft_model = _write_and_load_in_peft(ad, base, tmp_path, f"out-{label}")
        reference = copy.deepcopy(base)
        bake_adapter(reference, ad)
        with torch.no_grad():
            got = peft_model(ids).logits
            want = reference(ids).logits
            plain = base(ids).logits
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)
        assert float((want - plain).abs().max()) > 1e-3, "the adapter must change the output"


def test_written_config_reproduces_every_scale(tmp_path):
    from adaptkit import Adapter, LoraPair

    g = torch.Generator().manual_seed(0)

    def p(r, **kw):
        return LoraPair(A=torch.randn(r, 32, generator=g), B=torch.randn(32, r, generator=g), **kw)

    adapter = Adapter(
        {
            "model.layers.0.self_attn.q_proj": p(4, alpha=8.0),
            "model.layers.0.self_attn.v_proj": p(4, alpha=3.0, scaling="alpha/sqrt(r)"),
            "model.layers.1.self_attn.q_proj": p(2, scaling="explicit", explicit_scale=-0.37),
            "model.layers.11.self_attn.q_proj": p(4, alpha=8.0),
        }
    )
    out = FMT.write(adapter, tmp_path / "mixed")
    cfg = json.loads((out / "adapter_config.json").read_text())
    assert cfg["r"] == 4 and cfg["lora_alpha"] == 8.0 and cfg["use_rslora"] is False
    back = FMT.read(out)
    for name, pair in adapter.targets.items():
        assert back.targets[name].scale == pytest.approx(pair.scale, rel=1e-12), name
        assert torch.equal(back.targets[name].A, pair.A)


def test_round_trip_peft_adaptkit_peft(tmp_path):
    base = tiny_llama()
    src, model = make_peft(base, tmp_path, "src", **CASES["rslora_patterns"])
    first = load_spec(src)
    native = tmp_path / "a.safetensors"
    get_registry().get("format", "adaptkit").write(first, native)
    again = FMT.write(load_spec(native), tmp_path / "back")
    second = load_spec(again)
    for name, pair in first.targets.items():
        torch.testing.assert_close(
            second.targets[name].delta(torch.float64), pair.delta(torch.float64), rtol=1e-12, atol=0
        )
    reloaded = PeftModel.from_pretrained(copy.deepcopy(base), again).eval()
    ids = tokens(4)
    with torch.no_grad():
        torch.testing.assert_close(reloaded(ids).logits, model(ids).logits, atol=1e-5, rtol=1e-5)


# --- refusals ------------------------------------------------------------------------


def test_pickle_bin_is_refused_without_being_executed(tmp_path):
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    folder = tmp_path / "pickled"
    folder.mkdir()
    (folder / "adapter_model.bin").write_bytes(pickle.dumps(Payload()))
    (folder / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 4, "lora_alpha": 8}))
    with pytest.raises(AdaptkitError, match="pickle, which can run code") as info:
        load_spec(folder)
    assert "adapter_model.bin" in str(info.value)
    assert not marker.exists()
    # And the payload really would fire if someone unpickled it.
    pickle.loads((folder / "adapter_model.bin").read_bytes()).close()
    assert marker.exists()


def _valid_dir(tmp_path, name="d", **cfg):
    base = tiny_llama()
    path, _ = make_peft(base, tmp_path, name, r=4, lora_alpha=8, target_modules=["q_proj"], **cfg)
    return path


def _edit_config(path, **changes):
    cfg = json.loads((path / "adapter_config.json").read_text())
    cfg.update(changes)
    (path / "adapter_config.json").write_text(json.dumps(cfg))


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        (
            {"alora_invocation_tokens": [5, 6]},
            "alora_invocation_tokens=[5, 6] is not supported: activated LoRA",
        ),
        ({"use_bdlora": True}, "use_bdlora=True is not supported: block-diagonal LoRA"),
        ({"use_qalora": True}, "use_qalora=True is not supported: QA-LoRA pools its inputs"),
        ({"layer_replication": [[0, 1]]}, "layer_replication=[[0, 1]] is not supported"),
        ({"peft_type": "IA3"}, "unsupported peft_type 'IA3'"),
        ({"r": 0}, "r: 0 is less than the minimum of 1"),
        ({"r": "8"}, "r: '8' is not of type 'integer'"),
        ({"r": 8}, "disagrees with rank 8"),
        ({"init_lora_weights": "pissa"}, "rewrote the base model's weights"),
        ({"rank_pattern": {"(": 2}}, "pattern '(' is not a valid regex"),
    ],
)
def test_config_refusals_name_feature_and_file(tmp_path, changes, message):
    path = _valid_dir(tmp_path)
    _edit_config(path, **changes)
    with pytest.raises(AdaptkitError) as info:
        load_spec(path)
    text = str(info.value)
    assert message in text and "adapter" in text, text


def test_non_finite_config_numbers_refused(tmp_path):
    path = _valid_dir(tmp_path)
    text = (path / "adapter_config.json").read_text().replace('"lora_alpha": 8', '"lora_alpha": NaN')
    (path / "adapter_config.json").write_text(text)
    with pytest.raises(AdaptkitError, match="non-finite number NaN"):
        load_spec(path)


def test_wrong_prefix_and_missing_pair(tmp_path):
    from safetensors.torch import load_file, save_file

    path = _valid_dir(tmp_path)
    tensors = load_file(path / "adapter_model.safetensors")
    renamed = {k.replace("base_model.model.", "model."): v for k, v in tensors.items()}
    save_file(renamed, path / "adapter_model.safetensors")
    with pytest.raises(AdaptkitError, match=r"matches no LoRA key pattern.*PEFT keys start with"):
        load_spec(path)
    half = {k: v for k, v in tensors.items() if "lora_B" not in k or "layers.1" not in k}
    save_file(half, path / "adapter_model.safetensors")
    with pytest.raises(AdaptkitError, match=r"layers\.1\.self_attn\.q_proj\.lora_B\.weight: missing"):
        load_spec(path)


def test_missing_config_and_missing_weights(tmp_path):
    path = _valid_dir(tmp_path)
    (path / "adapter_config.json").unlink()
    with pytest.raises(AdaptkitError, match=r"missing adapter_config\.json"):
        load_spec(path)
    path = _valid_dir(tmp_path, "e")
    (path / "adapter_model.safetensors").unlink()
    with pytest.raises(AdaptkitError, match=r"missing adapter_model\.safetensors"):
        load_spec(path)
