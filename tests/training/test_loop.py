"""Training with the lora backend: it learns, it resumes exactly, the CLI contract holds."""

import json

import pytest
import torch

from adaptkit import load_adapter
from adaptkit.testing import counting_records
from adaptkit.training import evaluate_loss
from tests.helpers.distributed import adaptkit, torchrun
from tests.helpers.files import write_jsonl
from tests.helpers.models import tiny_llama
from tests.helpers.training import train, train_config


def trainable_llama():
    # With transformers' default init (std 0.02) the frozen output head can only produce
    # near-uniform logits (|logit| <~ 0.6 after the final RMSNorm), which caps how far any
    # adapter can lower the loss; a wider init gives the head real range.
    return tiny_llama(initializer_range=0.5)


def test_training_lowers_the_loss_well_below_the_base(tmp_path):
    records = counting_records()
    model = trainable_llama()
    before = evaluate_loss(model, records, 0, 8, torch.device("cpu"))
    result = train(train_config(output=str(tmp_path / "a.safetensors")), model, records)
    after = evaluate_loss(model, records, 0, 8, torch.device("cpu"))
    assert result.initial_loss == pytest.approx(before, rel=1e-5)
    assert result.final_loss == pytest.approx(after, rel=1e-5)
    assert after < 0.1 * before, (before, after)  # measured: 8.47 -> 0.35
    # The saved adapter reproduces the trained model.
    from adaptkit import nn as lora

    fresh = trainable_llama()
    lora.load(fresh, load_adapter(tmp_path / "a.safetensors"))
    assert evaluate_loss(fresh, records, 0, 8, torch.device("cpu")) == pytest.approx(after, rel=1e-5)


def test_resume_continues_exactly(tmp_path):
    records = counting_records(n=20)
    straight = train(train_config(max_steps=6, output=str(tmp_path / "s.safetensors")), tiny_llama(), records)
    out = tmp_path / "r.safetensors"
    train(train_config(max_steps=6, save_every=3, output=str(out)), tiny_llama(), records)
    ckpt = tmp_path / "r.safetensors.checkpoints" / "step-3"
    assert (ckpt / "optimizer.safetensors").exists() and json.loads((ckpt / "state.json").read_text())[
        "step"
    ] == 3
    resumed = train(
        train_config(max_steps=6, resume=str(ckpt), output=str(tmp_path / "r2.safetensors")),
        tiny_llama(),
        records,
    )
    assert resumed.losses == pytest.approx(straight.losses[3:], rel=1e-6)
    for name, pair in straight.adapter.targets.items():
        torch.testing.assert_close(resumed.adapter.targets[name].B, pair.B, rtol=1e-6, atol=1e-7)


def test_grad_accumulation_equals_a_bigger_batch(tmp_path):
    records = counting_records(n=16)
    big = train(train_config(max_steps=3, batch_size=8), tiny_llama(), records)
    accum = train(train_config(max_steps=3, batch_size=4, grad_accum=2), tiny_llama(), records)
    assert accum.losses == pytest.approx(big.losses, rel=1e-5)
    for name, pair in big.adapter.targets.items():
        torch.testing.assert_close(accum.adapter.targets[name].B, pair.B, rtol=1e-4, atol=1e-6)


# --- the CLI, on a model directory ------------------------------------------------------


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    from adaptkit.demo.tiny import byte_tokenizer

    folder = tmp_path_factory.mktemp("model") / "tiny-llama"
    model = tiny_llama(vocab_size=259)
    model.save_pretrained(folder, safe_serialization=True)
    byte_tokenizer().save_pretrained(folder)
    return folder


def test_cli_train_text_jsonl_with_metrics(run_cli, model_dir, tmp_path):
    data = write_jsonl(tmp_path / "d.jsonl", [{"text": f"abcd{i} " * 3} for i in range(12)])
    out, metrics = tmp_path / "a.safetensors", tmp_path / "m.jsonl"
    code, stdout, err = run_cli(
        "train", "--model", model_dir, "--data", data, "-o", out, "--rank", "4", "--max-steps", "5",
        "--batch-size", "4", "--lr", "5e-3", "--metrics", metrics, "--targets", "q_proj,v_proj", "--json",
    )  # fmt: skip
    assert code == 0, err
    summary = json.loads(stdout)
    assert summary["steps"] == 5 and summary["targets"] == 4
    memory, *lines, peak = [json.loads(x) for x in metrics.read_text().splitlines()]
    assert memory["memory_report"]["lora_bytes"] > 0  # the backend's memory report comes first
    assert memory["memory"]["base_dtype"] == "float32" and memory["memory"]["lora_bytes"] > 0
    assert [x["step"] for x in lines] == [1, 2, 3, 4, 5]
    assert peak["peak_memory"]["peak_bytes"] > 0 and peak["peak_memory"]["optimizer_state_bytes"] > 0
    assert all({"loss", "lr", "tokens_per_s", "peak_memory_bytes"} <= set(x) for x in lines)
    adapter = load_adapter(out)
    assert adapter.provenance["train"]["lora"]["rank"] == 4


def test_cli_train_recipe_and_input_ids(run_cli, model_dir, tmp_path):
    write_jsonl(tmp_path / "ids.jsonl", [{"input_ids": [5, 6, 7, 8] * 4} for _ in range(8)])
    (tmp_path / "train.yaml").write_text(
        f"model: {model_dir}\ndata: ids.jsonl\noutput: t.safetensors\nrank: 2\nmax_steps: 2\nbatch_size: 4\n"
    )
    code, _, err = run_cli("train", tmp_path / "train.yaml", "--alpha", "4")
    assert code == 0, err
    adapter = load_adapter(tmp_path / "t.safetensors")
    assert {p.rank for p in adapter.targets.values()} == {2} and {
        p.alpha for p in adapter.targets.values()
    } == {4.0}


@pytest.mark.parametrize(
    ("rows", "extra", "message"),
    [
        ([], [], "no training records"),
        (
            [{"input_ids": list(range(3, 50))}],
            ["--seq-len", "16"],
            "line 1: record has 47 tokens, more than --seq-len 16",
        ),
        ([{"input_ids": [1, 999]}], [], "token id 999 outside the vocabulary"),
        ([{"txt": "x"}], [], "exactly one of 'text', 'input_ids' or 'prompt' + 'completion'"),
    ],
)
def test_cli_train_bad_data(run_cli, model_dir, tmp_path, rows, extra, message):
    data = write_jsonl(tmp_path / "d.jsonl", rows)
    code, _, err = run_cli(
        "train", "--model", model_dir, "--data", data, "-o", tmp_path / "x.safetensors", *extra
    )
    assert code == 2 and message in err, err
    assert not (tmp_path / "x.safetensors").exists()


def test_cli_train_text_without_tokenizer(run_cli, tmp_path):
    folder = tmp_path / "notok"
    tiny_llama().save_pretrained(folder, safe_serialization=True)
    data = write_jsonl(tmp_path / "d.jsonl", [{"text": "hello"}])
    code, _, err = run_cli("train", "--model", folder, "--data", data, "-o", tmp_path / "x.safetensors")
    assert code == 2 and "no tokenizer" in err


def test_cli_train_refuses_pickle_only_model_and_existing_output(run_cli, model_dir, tmp_path):
    folder = tmp_path / "pickled"
    folder.mkdir()
    (folder / "config.json").write_text((model_dir / "config.json").read_text())
    (folder / "pytorch_model.bin").write_bytes(b"\x80\x04.")
    data = write_jsonl(tmp_path / "d.jsonl", [{"input_ids": [5, 6, 7]}])
    code, _, err = run_cli("train", "--model", folder, "--data", data, "-o", tmp_path / "x.safetensors")
    assert code == 2 and "no *.safetensors weights" in err and "pickle" in err
    (tmp_path / "exists.safetensors").write_bytes(b"old")
    code, _, err = run_cli(
        "train", "--model", model_dir, "--data", data, "-o", tmp_path / "exists.safetensors"
    )
    assert code == 2 and "output exists" in err and (tmp_path / "exists.safetensors").read_bytes() == b"old"


def test_torchrun_two_processes_equal_one_process(model_dir, tmp_path):
    """DDP (gloo) over 2 CPU processes == 1 process with the same global batch."""
    data = write_jsonl(
        tmp_path / "d.jsonl",
        [{"input_ids": ([5 + i, 9, 12, 7 + i] * 5)[: 10 + i]} for i in range(16)],
    )
    common = [
        "--model", str(model_dir), "--data", str(data), "--rank", "4", "--max-steps", "3", "--lr", "1e-2",
        "--targets", "q_proj,v_proj,down_proj", "--seed", "3",
    ]  # fmt: skip
    one_out, two_out = tmp_path / "one.safetensors", tmp_path / "two.safetensors"
    single = adaptkit("train", *common, "--batch-size", "4", "-o", one_out)
    assert single.returncode == 0, single.stderr[-2000:]
    multi = torchrun(["train", *common, "--batch-size", "2", "-o", two_out])
    assert multi.returncode == 0, multi.stderr[-3000:]
    one, two = load_adapter(one_out), load_adapter(two_out)
    for name, pair in one.targets.items():
        torch.testing.assert_close(two.targets[name].B, pair.B, rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(two.targets[name].A, pair.A, rtol=1e-4, atol=1e-6)
    assert float(next(iter(one.targets.values())).B.abs().max()) > 0  # it trained


def test_prompt_completion_records_mask_the_prompt(model_dir, tmp_path):
    from adaptkit.demo.tiny import byte_tokenizer
    from adaptkit.training import collate, target_tokens
    from adaptkit.training.data import load_records

    data = write_jsonl(tmp_path / "pc.jsonl", [{"prompt": "abc=", "completion": "ABC"}])
    (rec,) = load_records(data, byte_tokenizer(), seq_len=32, vocab_size=259)
    assert rec.loss_from == 4 and len(rec) == 4 + 3 + 1  # prompt, completion, </s>
    _ids, mask = collate([rec], 0)
    assert mask.tolist() == [[1, 1, 1, 1, 2, 2, 2, 2]]
    assert target_tokens([rec]) == 4
    for lr in (1e-5, 1e-4):
        sched = learning_rate_probe(lr)
        assert sched[0] < sched[5] == pytest.approx(lr) and sched[-1] < 0.01 * lr


def learning_rate_probe(lr):
    from adaptkit.training.loop import learning_rate

    c = train_config(lr=lr, warmup_steps=5, lr_schedule="cosine")
    return [learning_rate(c, s, 100) for s in range(100)]
