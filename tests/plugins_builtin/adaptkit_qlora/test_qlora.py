"""The qlora backend on CPU: NF4 + double quantization, learning, memory report, merge-back."""

import copy
import json

import pytest
import torch

from adaptkit.errors import AdaptkitError, MissingDependencyError
from adaptkit.testing import counting_records
from adaptkit.training import evaluate_loss
from tests.helpers.models import tiny_llama
from tests.helpers.training import train, train_config

NF4_DQ_BITS = 4 + 8 / 64 + 32 / (64 * 256)  # = 4.127


def qlora_llama():
    # bitsandbytes' CPU kernels want in_features divisible by the blocksize (64).
    return tiny_llama(hidden_size=64, intermediate_size=128, initializer_range=0.5)


def test_qlora_learns_and_keeps_the_base_4bit(tmp_path):
    from adaptkit import nn as lora

    records = counting_records()
    model = qlora_llama()
    before = evaluate_loss(model, records, 0, 8, torch.device("cpu"))
    metrics = tmp_path / "m.jsonl"
    result = train(
        train_config("qlora", output=str(tmp_path / "q.safetensors"), metrics=str(metrics)), model, records
    )
    assert result.final_loss < 0.25 * before, (before, result.final_loss)
    quantized = [m for m in model.modules() if type(m).__name__ == "Linear4bit"]
    assert len(quantized) == 14
    assert all(type(m.weight).__name__ == "Params4bit" and m.weight.dtype == torch.uint8 for m in quantized)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(n.endswith(("lora_A", "lora_B")) for n in trainable)
    assert all(p.grad is None for n, p in model.named_parameters() if not p.requires_grad)
    first = json.loads(metrics.read_text().splitlines()[0])
    assert first["memory_report"]["quantized_layers"] == 14
    with pytest.raises(AdaptkitError, match="re-quantize"):
        lora.bake(model)


def test_bits_per_param_matches_nf4_double_quant():
    from adaptkit_qlora.quantize import memory_report, quantize_linear

    model = tiny_llama(hidden_size=256, intermediate_size=512, num_attention_heads=4, num_key_value_heads=4)
    for name, mod in list(model.named_modules()):
        if isinstance(mod, torch.nn.Linear) and name != "lm_head":
            parent, _, child = name.rpartition(".")
            setattr(
                model.get_submodule(parent),
                child,
                quantize_linear(mod, blocksize=64, compute_dtype=torch.float32),
            )
    report = memory_report(model, [])
    assert report["bits_per_quantized_param"] == pytest.approx(NF4_DQ_BITS, rel=0.01)
    assert report["compression_vs_bf16"] == pytest.approx(16 / NF4_DQ_BITS, rel=0.01)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("qlora")
    base = qlora_llama()
    base.save_pretrained(tmp / "base", safe_serialization=True)
    model = copy.deepcopy(base)
    train(train_config("qlora", max_steps=15, output=str(tmp / "q.safetensors")), model, counting_records())
    return tmp, base, model


def test_merge_back_into_both_bases(trained, run_cli):
    from transformers import AutoModelForCausalLM

    tmp, base, qmodel = trained
    ids = torch.tensor(counting_records(n=4, seed=9))
    with torch.no_grad():
        want = qmodel(input_ids=ids).logits
        plain = base(input_ids=ids).logits
    code, _, err = run_cli("convert", tmp / "q.safetensors", "-o", tmp / "peft", "--to", "peft")
    assert code == 0, err
    results = {}
    for merge_base in ("dequantized", "original"):
        out = tmp / f"merged-{merge_base}"
        code, _, err = run_cli(
            "export",
            "--merged",
            "--model",
            tmp / "base",
            "-a",
            tmp / "peft",
            "-o",
            out,
            "--merge-base",
            merge_base,
        )
        assert code == 0, err
        report = json.loads((out / "export-report.json").read_text())
        assert report["merge_base"] == merge_base and report["quantization_gap"]["max"] > 0
        merged = AutoModelForCausalLM.from_pretrained(out, local_files_only=True).eval()
        with torch.no_grad():
            results[merge_base] = float((merged(input_ids=ids).logits - want).abs().max())
    scale = float(want.abs().max())
    # The dequantized base is what the adapter was trained against: float rounding only.
    assert results["dequantized"] < 1e-4 * scale, results
    # The original 16-bit base differs by the NF4 error (documented, not hidden).
    assert results["original"] > 10 * results["dequantized"]
    assert float((want - plain).abs().max()) > 1e-2 * scale  # the adapter matters


def test_bad_input(tmp_path, monkeypatch):
    with pytest.raises(AdaptkitError, match="qlora option blocksize: unknown value 100; valid: 64, 128"):
        train(
            train_config("qlora", max_steps=1, options={"blocksize": 100}),
            qlora_llama(),
            counting_records(n=4),
        )

    class NoLinear(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.config = type("C", (), {"vocab_size": 10})()
            self.emb = torch.nn.Embedding(10, 4)

        def get_input_embeddings(self):
            return self.emb

    with pytest.raises(AdaptkitError, match="no linear layer matches"):
        train(train_config("qlora", max_steps=1), NoLinear(), [[1, 2, 3]])

    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "bitsandbytes" else real(name, *a)
    )
    with pytest.raises(MissingDependencyError, match="pip install bitsandbytes"):
        train(train_config("qlora", max_steps=1), qlora_llama(), counting_records(n=4))


def test_under_shard_torch_adamw_makes_the_bitsandbytes_update():
    """bitsandbytes' optimizer kernels cannot update sharded (DTensor) factors, so ``qlora
    --shard`` trains with torch's AdamW: on the same gradients it moves the factors as the
    32-bit bitsandbytes AdamW of a one-process CPU run does, to float rounding."""
    from adaptkit_qlora.backend import QloraBackend

    backend, said = QloraBackend(), []
    torch.manual_seed(0)
    start = torch.randn(64, 32)
    alone, sharded = torch.nn.Parameter(start.clone()), torch.nn.Parameter(start.clone())
    one = backend.optimizer([alone], train_config("qlora", lr=1e-2), said.append)
    two = backend.optimizer([sharded], train_config("qlora", lr=1e-2, shard=True), said.append)
    assert type(two) is torch.optim.AdamW and type(one) is not torch.optim.AdamW
    assert "torch's AdamW" in said[-1]
    for step in range(5):
        grad = torch.randn(64, 32) * 10.0**-step  # shrinking gradients: the moments matter
        alone.grad, sharded.grad = grad.clone(), grad.clone()
        one.step(), two.step()
    torch.testing.assert_close(sharded, alone, rtol=1e-6, atol=1e-7)
    assert float((alone.detach() - start).abs().max()) > 1e-2  # both moved


def test_shardable_nf4_packs_the_bits_the_one_process_loader_packs():
    """Stored in the compute dtype for FSDP, the packed weight holds the same bytes and the
    layer the same statistics as bitsandbytes' default uint8 storage."""
    from bitsandbytes.nn import Params4bit

    from adaptkit_qlora.quantize import shardable_linear4bit

    torch.manual_seed(0)
    weight = torch.randn(96, 64, dtype=torch.bfloat16)
    reference = Params4bit(
        weight, requires_grad=False, quant_type="nf4", blocksize=64, compress_statistics=True
    )
    reference = reference.to("cpu")
    layer, pack = shardable_linear4bit(
        torch.nn.Linear(64, 96, bias=False), blocksize=64, compute_dtype=torch.float32
    )
    packed = pack(weight, torch.device("cpu"))
    assert packed.dtype == torch.float32 and packed.shape == layer.weight.shape == (96 * 64 // 8, 1)
    assert torch.equal(packed.view(torch.uint8).flatten(), reference.data.view(torch.uint8).flatten())
    ours, theirs = layer.quant_state, reference.quant_state
    assert torch.equal(ours.absmax, theirs.absmax) and torch.equal(ours.state2.absmax, theirs.state2.absmax)
    assert float(ours.offset) == float(theirs.offset)
