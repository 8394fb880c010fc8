"""The third-party backend example (examples/loraplus_backend), installed for real with pip.

``pip install --no-deps --no-build-isolation --target`` builds the wheel from its
``pyproject.toml`` (hatchling is in the test extra) and installs it into a temporary site
folder, offline; adaptkit then finds the backend through its entry point, as it would after
``pip install ./examples/loraplus_backend``.
"""

import json

import pytest
import torch

from adaptkit.testing import counting_records, tiny_causal_lm
from tests.helpers.examples import install_example, run_installed
from tests.helpers.files import write_records


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    return install_example("loraplus_backend", tmp_path_factory)


def _adaptkit(site, *args, block=None):
    return run_installed(site, "loraplus_backend", *args, block=block)


def test_installed_backend_is_listed_with_its_package(site):
    res = _adaptkit(site, "plugins", "--json")
    assert res.returncode == 0, res.stderr
    plugin = {p["name"]: p for p in json.loads(res.stdout)}["loraplus"]
    assert plugin["distribution"] == "adaptkit-loraplus"
    assert plugin["hooks"] == ["register_backends"]
    (backend,) = plugin["registers"]["backend"]
    assert backend["name"] == "loraplus" and backend["available"]


def test_train_with_the_installed_backend_then_load_in_peft(site, tmp_path):
    from peft import PeftModel

    from adaptkit import load_adapter
    from adaptkit import nn as lora

    model_dir = tmp_path / "tiny"
    tiny_causal_lm().save_pretrained(model_dir, safe_serialization=True)
    data = write_records(tmp_path / "data.jsonl", counting_records())
    out = tmp_path / "plus.safetensors"
    res = _adaptkit(
        site, "train", "--backend", "loraplus", "--model", model_dir, "--data", data, "-o", out,
        "--max-steps", "15", "--lr", "1e-3", "--option", "ratio=16", "--json",
    )  # fmt: skip
    assert res.returncode == 0, res.stderr[-2000:]
    summary = json.loads(res.stdout)
    assert summary["backend"] == "loraplus"
    assert summary["eval_loss_after"] < summary["eval_loss_before"]
    assert "lr_B = 16 x lr_A" in res.stderr
    adapter = load_adapter(out)
    assert adapter.producer.component == "backend:loraplus"

    peft_dir = tmp_path / "plus-peft"
    res = _adaptkit(site, "convert", out, "--to", "peft", "-o", peft_dir)
    assert res.returncode == 0, res.stderr
    ids = torch.tensor(counting_records(n=2, length=12, seed=5))
    ours = tiny_causal_lm()
    lora.load(ours, adapter)
    peft_model = PeftModel.from_pretrained(tiny_causal_lm(), peft_dir).eval()
    with torch.no_grad():
        want, got = ours(input_ids=ids).logits, peft_model(input_ids=ids).logits
        base = tiny_causal_lm()(input_ids=ids).logits
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert float((want - base).abs().max()) > 1e-2  # the adapter changed the output


def test_blocking_the_plugin_removes_exactly_its_backend(site, tmp_path):
    res = _adaptkit(
        site, "train", "--backend", "loraplus", "--model", tmp_path, "--data", tmp_path,
        "-o", tmp_path / "x.safetensors", block="loraplus",
    )  # fmt: skip
    assert res.returncode == 2
    assert res.stderr.startswith("error: ") and "unknown backend 'loraplus'" in res.stderr
    assert "lora" in res.stderr and not (tmp_path / "x.safetensors").exists()
