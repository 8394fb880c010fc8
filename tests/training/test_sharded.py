"""Sharded training, ``torchrun ... -m adaptkit train --shard`` (FSDP2, gloo on CPU): two
processes equal one with the same global batch, the adapter loads in PEFT, a sharded run
resumes (with gradient accumulation), and every combination that cannot shard is one error line
before any process waits on another."""

import json

import pytest
import torch

from adaptkit import load_adapter
from adaptkit.errors import AdaptkitError
from tests.helpers.cli import assert_refused
from tests.helpers.distributed import torchrun
from tests.helpers.files import write_jsonl
from tests.helpers.models import tiny_llama
from tests.helpers.training import train, train_config

COMMON = [
    "--rank",
    "4",
    "--max-steps",
    "4",
    "--lr",
    "1e-2",
    "--seed",
    "3",
    "--targets",
    "q_proj,v_proj,down_proj",
]


def _metrics(path):
    lines = [json.loads(x) for x in path.read_text().splitlines()]
    return lines[0], [x for x in lines if "step" in x], lines[-1]["peak_memory"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """One process with ``--batch-size 8`` (in this process), two sharded ones with 4 each that
    checkpoint at step 2, and two sharded ones resuming from there with 2 x 2 micro-batches."""
    from adaptkit.cli import main

    tmp = tmp_path_factory.mktemp("shard")
    tiny_llama().save_pretrained(tmp / "model", safe_serialization=True)
    data = write_jsonl(
        tmp / "d.jsonl", [{"input_ids": ([5 + i, 9, 12, 7 + i] * 5)[: 10 + i]} for i in range(16)]
    )
    common = ["train", "--model", tmp / "model", "--data", data, *COMMON]
    one = [*common, "--batch-size", "8", "-o", tmp / "one.safetensors", "--metrics", tmp / "one.jsonl"]
    assert main([str(a) for a in one]) == 0
    # Both sharded runs in one torchrun launch (its start-up costs more than the training).
    sharded = torchrun(
        [*common, "--shard", "--batch-size", "4", "-o", tmp / "two.safetensors",
         "--metrics", tmp / "two.jsonl", "--save-every", "2"],
        [*common, "--shard", "--batch-size", "2", "--grad-accum", "2", "-o", tmp / "resumed.safetensors",
         "--metrics", tmp / "resumed.jsonl", "--resume", tmp / "two.safetensors.checkpoints" / "step-2"],
    )  # fmt: skip
    assert sharded.returncode == 0, sharded.stderr[-3000:]
    return tmp


def test_two_sharded_processes_equal_one_process(runs):
    start_one, steps_one, peak_one = _metrics(runs / "one.jsonl")
    start_two, steps_two, peak_two = _metrics(runs / "two.jsonl")
    assert [s["loss"] for s in steps_two] == pytest.approx([s["loss"] for s in steps_one], rel=1e-5)
    one, two = load_adapter(runs / "one.safetensors"), load_adapter(runs / "two.safetensors")
    assert set(two.targets) == set(one.targets)
    for name, pair in one.targets.items():
        torch.testing.assert_close(two.targets[name].A, pair.A, rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(two.targets[name].B, pair.B, rtol=1e-4, atol=1e-6)
    assert min(float(p.B.abs().max()) for p in one.targets.values()) > 1e-3  # it trained
    # Each process holds half the base and half the factors (rows of 64 and 128 split evenly).
    assert start_two["memory"]["shards"] == 2 and start_one["memory"]["shards"] == 1
    assert start_two["memory"]["base_bytes"] == pytest.approx(start_one["memory"]["base_bytes"] / 2, rel=0.02)
    assert start_two["memory"]["lora_bytes"] == start_one["memory"]["lora_bytes"] / 2
    assert all(len(s["peak_memory_bytes_per_rank"]) == 2 for s in steps_two)
    assert len(peak_two["peak_bytes_per_rank"]) == 2 and min(peak_two["peak_bytes_per_rank"]) > 0
    assert "peak_bytes_per_rank" not in peak_one


def test_the_sharded_adapter_loads_in_peft(runs, run_cli):
    from peft import PeftModel

    from adaptkit import nn as lora

    code, _, err = run_cli("convert", runs / "two.safetensors", "--to", "peft", "-o", runs / "peft")
    assert code == 0, err
    ids = torch.tensor([[5, 9, 12, 7, 5, 9, 12, 7, 6, 9]])
    ours = tiny_llama()
    lora.load(ours, load_adapter(runs / "two.safetensors"))
    peft_model = PeftModel.from_pretrained(tiny_llama(), runs / "peft").eval()
    with torch.no_grad():
        want, got, base = (m(input_ids=ids).logits for m in (ours, peft_model, tiny_llama()))
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    assert float((want - base).abs().max()) > 1e-3  # the adapter changed the output


def test_a_sharded_run_resumes_with_gradient_accumulation(runs):
    _, straight, _ = _metrics(runs / "two.jsonl")
    _, resumed, _ = _metrics(runs / "resumed.jsonl")
    assert [s["step"] for s in resumed] == [3, 4]
    assert [s["loss"] for s in resumed] == pytest.approx([s["loss"] for s in straight[2:]], rel=1e-6)
    two, again = load_adapter(runs / "two.safetensors"), load_adapter(runs / "resumed.safetensors")
    for name, pair in two.targets.items():
        torch.testing.assert_close(again.targets[name].A, pair.A, rtol=1e-5, atol=1e-7)
        torch.testing.assert_close(again.targets[name].B, pair.B, rtol=1e-5, atol=1e-7)


# --- refusals: one line, exit 2, nothing written, before any process group is joined ------------


@pytest.fixture
def folder(tmp_path):
    tiny_llama().save_pretrained(tmp_path / "model", safe_serialization=True)
    write_jsonl(tmp_path / "d.jsonl", [{"input_ids": [5, 6, 7, 8] * 4} for _ in range(8)])
    return tmp_path


def _train(folder, *extra, model="model"):
    return [
        "train", "--model", folder / model, "--data", folder / "d.jsonl", "-o", folder / "a.safetensors",
        "--max-steps", "1", *extra,
    ]  # fmt: skip


def _as_rank_0_of(monkeypatch, world):
    """The environment torchrun gives process 0 of ``world`` (no peer is started: every
    refusal must come before the group is joined)."""
    for key, value in {"WORLD_SIZE": world, "RANK": 0, "LOCAL_RANK": 0, "LOCAL_WORLD_SIZE": world}.items():
        monkeypatch.setenv(key, str(value))


def test_shard_without_torchrun_is_refused(run_cli, folder, monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert_refused(run_cli, folder, _train(folder, "--shard"), ["--shard", "not started by torchrun"])
    assert_refused(run_cli, folder, _train(folder, "--cpu-offload"), ["--cpu-offload", "needs --shard"])


def test_shard_with_one_process_is_refused(run_cli, folder, monkeypatch):
    _as_rank_0_of(monkeypatch, 1)
    assert_refused(run_cli, folder, _train(folder, "--shard"), ["--shard", "world size of 1"])


def test_unshardable_combinations_are_refused(run_cli, folder, monkeypatch):
    from transformers import BioGptConfig, BioGptForCausalLM

    _as_rank_0_of(monkeypatch, 2)
    config = BioGptConfig(vocab_size=128, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                          intermediate_size=64, max_position_embeddings=64)  # fmt: skip
    BioGptForCausalLM(config).save_pretrained(folder / "biogpt", safe_serialization=True)
    biogpt = _train(folder, "--shard", model="biogpt")
    assert_refused(run_cli, folder, biogpt, ["BioGptForCausalLM cannot be sharded", "no transformer block"])
    fp16 = _train(folder, "--shard", "--base-dtype", "fp16")
    assert_refused(run_cli, folder, fp16, ["--base-dtype", "fp16 base", "bf16"])
    eight_bit = _train(folder, "--shard", "--backend", "qlora", "--option", "optimizer=paged_adamw_8bit")
    assert_refused(run_cli, folder, eight_bit, ["optimizer", "cannot update sharded"])


def test_a_backend_must_claim_shard_and_load_the_base_itself(folder, monkeypatch):
    from adaptkit_lora import LoraBackend

    class NoShard(LoraBackend):
        supports = frozenset({"resume", "ddp"})

    _as_rank_0_of(monkeypatch, 2)
    config = train_config(shard=True, max_steps=1, batch_size=2)
    with pytest.raises(AdaptkitError, match="backend 'lora' does not support --shard"):
        train(config, tiny_llama(), [[5, 6, 7, 8]] * 4, backend=NoShard())
    with pytest.raises(AdaptkitError, match="give the model as a folder"):
        train(config, tiny_llama(), [[5, 6, 7, 8]] * 4)
