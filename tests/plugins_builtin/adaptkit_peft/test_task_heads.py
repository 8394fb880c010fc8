"""Task adapters as published: `task_type` SEQ_CLS / TOKEN_CLS / QUESTION_ANS with
`modules_to_save: null`. PEFT's task models save their heads anyway (`classifier`, `score`,
`qa_outputs`, matched by plain suffix, so DistilBERT's `pre_classifier` too); adaptkit reads,
inspects, combines, converts and exports them as PEFT computes them unmerged."""

import json

import pytest
import torch

from adaptkit import load_spec
from tests.helpers.peft_parity import assert_export_matches_peft, make_published, peft_outputs

#: A tiny DistilBERT: 1 layer, width 32, 2 heads, a vocabulary of 100.
DISTILBERT = dict(vocab_size=100, dim=32, hidden_dim=64, n_layers=1, n_heads=2, max_position_embeddings=32)

TASKS = {
    "SEQ_CLS": ("DistilBertForSequenceClassification", {"pre_classifier", "classifier"}),
    "TOKEN_CLS": ("DistilBertForTokenClassification", {"classifier"}),
    "QUESTION_ANS": ("DistilBertForQuestionAnswering", {"qa_outputs"}),
}


def _distilbert(cls_name, seed=0):
    import transformers

    cls = getattr(transformers, cls_name)
    torch.manual_seed(seed)
    return cls, cls(transformers.DistilBertConfig(**DISTILBERT, num_labels=2)).eval()


def _inputs():
    ids = torch.randint(1, 100, (2, 7), generator=torch.Generator().manual_seed(3))
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


@pytest.mark.parametrize("task", sorted(TASKS))
def test_task_adapter_with_null_modules_to_save_works_everywhere(task, tmp_path, run_cli):
    cls_name, heads = TASKS[task]
    cls, base = _distilbert(cls_name)
    base.save_pretrained(tmp_path / "base")
    adapter_dir = make_published(
        base,
        tmp_path / "adapter",
        task_type=task,
        r=4,
        lora_alpha=8,
        target_modules=["q_lin", "v_lin"],
        init_lora_weights=False,
        config_edits={"modules_to_save": None},  # as published
    )

    adapter = load_spec(adapter_dir)
    assert set(adapter.saved) == heads
    assert all(entry.origin == "modules_to_save" for entry in adapter.saved.values())
    code, out, err = run_cli("inspect", adapter_dir, "--json")
    assert code == 0, err
    assert {m["name"] for m in json.loads(out)["saved_modules"]} == heads

    report = assert_export_matches_peft(
        run_cli, cls, tmp_path / "base", adapter_dir, tmp_path / "merged", _inputs()
    )
    assert {name.rsplit(".", 1)[0] for name in report["saved_tensors_written"]} == heads

    # combine (one input: the identity) and PEFT both ways keep the heads; PEFT loads the result.
    one = tmp_path / "one.safetensors"
    code, _, err = run_cli("combine", adapter_dir, "-o", one)
    assert code == 0, err
    code, _, err = run_cli("convert", one, "--to", "peft", "-o", tmp_path / "back")
    assert code == 0, err
    written = json.loads((tmp_path / "back" / "adapter_config.json").read_text())
    assert sorted(written["modules_to_save"]) == sorted(heads)
    want, _ = peft_outputs(cls, tmp_path / "base", adapter_dir, _inputs())
    got, _ = peft_outputs(cls, tmp_path / "base", tmp_path / "back", _inputs())
    assert float((got - want).abs().max()) < 1e-5
